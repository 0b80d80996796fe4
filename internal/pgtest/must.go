package pgtest

import (
	"context"
	"os"
	"time"
)

// TB is the part of testing.TB that [Must] needs. It is an interface so that
// importing this package does not drag "testing" into a non-test build by
// accident.
type TB interface {
	Helper()
	Skip(args ...any)
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Cleanup(f func())
	Logf(format string, args ...any)
}

// RequireEnv names the environment variable that, set to 1, makes missing
// PostgreSQL binaries fail tests instead of skipping them. `make test` sets
// it, so that the whole suite cannot pass without having run against
// PostgreSQL.
const RequireEnv = "PGSIDECAR_REQUIRE_PG"

// Required reports whether tests that need PostgreSQL must fail, rather than
// skip, when it cannot be found: under CI=true or PGSIDECAR_REQUIRE_PG=1.
func Required() bool {
	return os.Getenv("CI") == "true" || os.Getenv(RequireEnv) == "1"
}

// Must starts a cluster for a test and closes it in t.Cleanup, which also
// runs after a panic. When the PostgreSQL binaries are missing it skips the
// test, unless [Required], where it fails: a silent skip would hide a broken
// install. Startup is bounded to 60 seconds. Callers check testing.Short()
// themselves.
func Must(t TB, opts Options) *Cluster {
	t.Helper()
	if err := Available(); err != nil {
		if Required() {
			t.Fatalf("%v (CI=true or %s=1: not skipping)", err, RequireEnv)
		}
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Fatalf("pgtest: close cluster: %v", err)
		}
	})
	return c
}
