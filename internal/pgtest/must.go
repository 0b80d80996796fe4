package pgtest

import (
	"context"
	"os"
	"time"
)

// TB is the part of testing.TB that [Must] needs. It is an interface so
// that this package does not import "testing" (cmd/pgsidecar links it).
type TB interface {
	Helper()
	Skip(args ...any)
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Cleanup(f func())
	Logf(format string, args ...any)
}

// Must starts a cluster for a test and closes it in t.Cleanup, which also
// runs after a panic. When the PostgreSQL binaries are missing it skips the
// test, except under CI=true, where it fails: a silent skip would hide a
// broken install. Startup is bounded to 60 seconds. Callers check
// testing.Short() themselves.
func Must(t TB, opts Options) *Cluster {
	t.Helper()
	if err := Available(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%v (CI=true: not skipping)", err)
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
