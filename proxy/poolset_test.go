package proxy

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/pgsidecar/pgsidecar/pool"
)

// seriesCount counts every series reg exports.
func seriesCount(t *testing.T, reg prometheus.Gatherer) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		n += len(mf.GetMetric())
	}
	return n
}

// TestPoolsForUnknownDatabasesAreNotKept: clients choose (database, user), so a pool is kept
// only once its upstream accepted a login for it. Logins to missing databases leave no pool,
// goroutine or metric series behind; max_pools bounds the pools of pairs that work; and a
// configured route whose database is missing, kept with min_pool_size, backs off its dials.
func TestPoolsForUnknownDatabasesAreNotKept(t *testing.T) {
	c := cluster(t)
	ctx := testCtx(t)
	admin := direct(t, c)
	for _, db := range []string{"maxpools_a", "maxpools_b"} {
		if _, err := admin.Exec(ctx, "drop database if exists "+db); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.Exec(ctx, "create database "+db); err != nil {
			t.Fatal(err)
		}
	}
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.MaxPools = 2
		cfg.MinPoolSize = 1
		cfg.Routes = []config.Route{{Database: "gone", User: "postgres", UpstreamDatabase: "no_such_database"}}
	})
	gathered := p.reg

	// The configured pools exist from the start: database_url's own and the route's.
	if n := p.pools.Len(); n != 2 {
		t.Fatalf("%d pools at start, want 2 (the configured ones)", n)
	}
	conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	var one int
	if err := conn.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("select 1 = %d, %v", one, err)
	}
	conn.Close(ctx)

	settle := func() int {
		// Sessions end on their own goroutines after the client saw its error.
		time.Sleep(200 * time.Millisecond)
		return runtime.NumGoroutine()
	}
	pools, series, goroutines := p.pools.Len(), seriesCount(t, gathered), settle()
	for i := range 100 {
		_, err := pgconn.Connect(ctx, p.dsn(fmt.Sprintf("no_such_db_%d", i), "postgres"))
		if pe, ok := errors.AsType[*pgconn.PgError](err); !ok || pe.Code != retry.CodeInvalidCatalogName {
			t.Fatalf("login to a missing database: %v, want 3D000", err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := settle()
		if n <= goroutines+2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after 100 refused logins, %d before", n, goroutines)
		}
	}
	if n := p.pools.Len(); n != pools {
		t.Errorf("%d pools after 100 logins to missing databases, want %d", n, pools)
	}
	if n := seriesCount(t, gathered); n != series {
		t.Errorf("%d metric series after 100 logins to missing databases, want %d", n, series)
	}

	// Pools of client-chosen pairs that work count toward max_pools and are kept.
	for _, db := range []string{"maxpools_a", "template1"} {
		conn, err := pgx.Connect(ctx, p.dsn(db, "postgres"))
		if err != nil {
			t.Fatalf("connect to %s: %v", db, err)
		}
		conn.Close(ctx)
	}
	_, err := pgconn.Connect(ctx, p.dsn("maxpools_b", "postgres"))
	if pe, ok := errors.AsType[*pgconn.PgError](err); !ok || pe.Code != retry.CodeTooManyConnections || !strings.Contains(pe.Message, "max_pools=2") {
		t.Fatalf("login needing a third pool: %v, want 53300 naming max_pools", err)
	}
	if n := p.pools.Len(); n != 4 {
		t.Errorf("%d pools, want 4 (2 configured, 2 kept)", n)
	}

	// The configured route to a missing database is kept, and its min_pool_size refill backs
	// off: the upstream answered that it will not accept this login.
	var gone pool.Stat
	for _, st := range p.pools.Stats() {
		if st.Database == "no_such_database" {
			gone = st
		}
	}
	if gone.Key == "" {
		t.Fatal("the configured route's pool is gone")
	}
	time.Sleep(5 * time.Second)
	gp, _ := p.pools.Lookup(gone.Key)
	if n := gp.Stat().Dials; n == 0 || n > 3 {
		t.Errorf("%d dials to a missing database over about 5s, want 1 to 3", n)
	}
}
