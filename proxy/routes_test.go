package proxy

import (
	"fmt"
	"testing"

	"github.com/pgsidecar/pgsidecar/config"
)

func TestRouteCache(t *testing.T) {
	cfg := config.Defaults("local")
	cfg.DatabaseURL = "postgres://app:secret@db.example.com:5432/app?sslmode=disable"
	var c routeCache
	for range 2 {
		got, err := c.resolve(&cfg, "app", "app")
		if err != nil {
			t.Fatal(err)
		}
		want, err := cfg.Resolve("app", "app")
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("cached route %v, want %v", got, want)
		}
	}
	if len(c.routes) != 1 {
		t.Errorf("%d routes cached, want 1", len(c.routes))
	}
	for i := range maxCachedRoutes + 10 {
		if _, err := c.resolve(&cfg, fmt.Sprintf("db%d", i), "app"); err != nil {
			t.Fatal(err)
		}
	}
	if len(c.routes) != maxCachedRoutes {
		t.Errorf("%d routes cached, want the cap %d", len(c.routes), maxCachedRoutes)
	}
	// Failures are not cached.
	bad := config.Defaults("local")
	var c2 routeCache
	if _, err := c2.resolve(&bad, "app", "app"); err == nil {
		t.Fatal("resolve without database_url succeeded")
	}
	if len(c2.routes) != 0 {
		t.Errorf("a failed resolve was cached")
	}
}
