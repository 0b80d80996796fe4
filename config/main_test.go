package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMain keeps the libpq environment of the machine running the tests
// (PGHOST, PGPASSWORD, a ~/.pgpass file, ...) out of pgconn.ParseConfig,
// which Validate and the Resolve tests call. Load itself reads only the
// environ slice it is given.
func TestMain(m *testing.M) {
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "PG") {
			os.Unsetenv(k)
		}
	}
	dir, err := os.MkdirTemp("", "config-test")
	if err != nil {
		panic(err)
	}
	os.Setenv("PGPASSFILE", filepath.Join(dir, "nonexistent"))
	os.Setenv("PGSERVICEFILE", filepath.Join(dir, "nonexistent"))
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
