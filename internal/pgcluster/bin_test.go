package pgcluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCompareVersions(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{
		{"16", "15", 1},
		{"9.6", "10", -1},
		{"15", "15", 0},
		{"9.6", "9", 1},
	} {
		a, err := parseVersion(c.a)
		if err != nil {
			t.Fatal(err)
		}
		b, err := parseVersion(c.b)
		if err != nil {
			t.Fatal(err)
		}
		if got := compareVersions(a, b); got != c.want {
			t.Errorf("compareVersions(%s, %s) = %d, want %d", c.a, c.b, got, c.want)
		}
	}
	if _, err := parseVersion("main"); err == nil {
		t.Error(`parseVersion("main") succeeded`)
	}
}

// PGSIDECAR_PG_BIN is taken as given: a wrong directory is reported, not silently replaced by
// another installation.
func TestBinDirFromEnv(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(binEnv, dir)
	err := Available()
	if err == nil || !strings.Contains(err.Error(), "missing initdb, pg_ctl, postgres") || !strings.Contains(err.Error(), binEnv) {
		t.Fatalf("Available() = %v, want the missing binaries and %s named", err, binEnv)
	}
	for _, name := range serverBinaries {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	got, err := findBinDir()
	if err != nil || got != dir {
		t.Fatalf("findBinDir() = %q, %v; want %q", got, err, dir)
	}
}
