package proxy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

// TestPrimaryTurnsReadOnly fences the primary in place (it stays up and reachable but turns
// read-only server-wide, so that a fresh connection fails target_session_attrs=read-write, as
// when a failover fences the old primary) while clients write in autocommit
// through a route with target_session_attrs=read-write over two hosts. The writes that reach
// the demoted server are refused with 25006 before running; the proxy retires every connection
// to it and sends them to the new primary: the clients see no error, every row is written
// exactly once, and no pooled connection to the demoted server is left.
func TestPrimaryTurnsReadOnly(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: needs PostgreSQL")
	}
	a := pgtest.Must(t, pgtest.Options{})
	b := pgtest.Must(t, pgtest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, c := range []*pgtest.Cluster{a, b} {
		if err := c.Exec(ctx, "create table ro_t (client int, n int, primary key (client, n))"); err != nil {
			t.Fatal(err)
		}
	}
	p := startProxy(t, a, func(cfg *config.Config) {
		cfg.DatabaseURL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/postgres?sslmode=disable&target_session_attrs=read-write&application_name=ro_test", a.Port(), b.Port())
		cfg.PoolSize = 3
		cfg.RetryDelay = 20 * time.Millisecond
	})

	const clients, perClient = 6, 60
	var wg sync.WaitGroup
	var mu sync.Mutex
	var clientErrs []error
	written := make(chan struct{}, clients*perClient)
	for id := range clients {
		conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range perClient {
				if _, err := conn.Exec(ctx, "insert into ro_t values ($1, $2)", id, n); err != nil {
					mu.Lock()
					clientErrs = append(clientErrs, fmt.Errorf("client %d row %d: %w", id, n, err))
					mu.Unlock()
					return
				}
				written <- struct{}{}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	// A third of the way in, the primary turns read-only without restarting: its existing
	// sessions refuse writes from their next transaction on.
	for range clients * perClient / 3 {
		<-written
	}
	if err := a.Exec(ctx, "alter system set default_transaction_read_only = on"); err != nil {
		t.Fatal(err)
	}
	if err := a.Exec(ctx, "select pg_reload_conf()"); err != nil {
		t.Fatal(err)
	}
	demoted := time.Now()
	wg.Wait()
	for _, err := range clientErrs {
		t.Error(err)
	}

	count := func(c *pgtest.Cluster) int {
		conn, err := pgx.Connect(ctx, c.DSN("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		var n int
		if err := conn.QueryRow(ctx, "select count(*) from ro_t").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// The primary key rules out a row written twice on one server; the sum rules out a row
	// written on both, or on neither.
	onA, onB := count(a), count(b)
	t.Logf("rows: %d on the demoted server, %d on the new primary; retries for read-only: %v",
		onA, onB, retriesTotal(t, p, "read_only"))
	if onA+onB != clients*perClient {
		t.Errorf("%d + %d rows, want %d: a write was lost or duplicated", onA, onB, clients*perClient)
	}
	if onB == 0 {
		t.Error("no row reached the new primary")
	}
	if retriesTotal(t, p, "read_only") == 0 {
		t.Error(`pgsidecar_retries_total{reason="read_only"} is 0; want the refused writes counted`)
	}
	// Every pooled connection to the demoted server is gone.
	watch, err := pgx.Connect(ctx, a.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close(context.Background())
	waitFor(t, ctx, 10*time.Second, "the proxy's connections to the demoted server to close", func() error {
		var n int
		if err := watch.QueryRow(ctx, "select count(*) from pg_stat_activity where application_name = 'ro_test'").Scan(&n); err != nil {
			return err
		}
		if n != 0 {
			return fmt.Errorf("%d still open", n)
		}
		return nil
	})
	t.Logf("demoted server left by the proxy within %v", time.Since(demoted))
}

// retriesTotal reads pgsidecar_retries_total{reason} from the proxy's registry.
func retriesTotal(t testing.TB, p *testProxy, reason string) float64 {
	t.Helper()
	return reasonCounter(t, p, "pgsidecar_retries_total", reason)
}

// TestReadOnlyErrorOnPrimaryDoesNotRetire: on a route that wants a primary, a read-only error
// the client brought on itself (a read-only transaction, default_transaction_read_only set for
// its session, or the code raised by a statement) on a healthy primary goes to the client as it
// is: nothing is retried and no connection is retired, so a client doing it in a loop cannot
// churn the pool.
func TestReadOnlyErrorOnPrimaryDoesNotRetire(t *testing.T) {
	c := cluster(t)
	ctx := testCtx(t)
	admin := direct(t, c)
	if _, err := admin.Exec(ctx, "drop table if exists ro_own; create table ro_own (v int)"); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.DatabaseURL = c.DSN("postgres") + "&target_session_attrs=read-write"
		cfg.PoolSize = 3
	})
	// Three idle servers, whose backends must all survive.
	pids := func() map[uint32]bool {
		conns := make([]*pgx.Conn, 3)
		got := make(map[uint32]bool)
		for i := range conns {
			conns[i] = p.connect(t, pgx.QueryExecModeSimpleProtocol)
			if _, err := conns[i].Exec(ctx, "begin"); err != nil {
				t.Fatal(err)
			}
			var pid uint32
			if err := conns[i].QueryRow(ctx, "select pg_backend_pid()").Scan(&pid); err != nil {
				t.Fatal(err)
			}
			got[pid] = true
		}
		for _, conn := range conns {
			if _, err := conn.Exec(ctx, "commit"); err != nil {
				t.Fatal(err)
			}
			conn.Close(ctx)
		}
		return got
	}
	before := pids()
	if len(before) != 3 {
		t.Fatalf("%d servers, want 3", len(before))
	}

	conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	for _, tc := range []struct{ name, setup, stmt, after string }{
		{"read-only transaction", "begin read only", "insert into ro_own values (1)", "rollback"},
		{"session default_transaction_read_only", "set default_transaction_read_only = on", "insert into ro_own values (2)", "reset default_transaction_read_only"},
		{"raised by the statement", "", "do $$ begin insert into ro_own values (3); raise exception 'mine' using errcode = '25006'; end $$", ""},
		{"read-only transaction, extended protocol", "begin read only", "insert into ro_own values (4)", "rollback"},
	} {
		for range 5 {
			if tc.setup != "" {
				if _, err := conn.Exec(ctx, tc.setup); err != nil {
					t.Fatalf("%s: %s: %v", tc.name, tc.setup, err)
				}
			}
			var err error
			if strings.Contains(tc.name, "extended") {
				_, err = conn.Exec(ctx, tc.stmt, pgx.QueryExecModeExec)
			} else {
				_, err = conn.Exec(ctx, tc.stmt)
			}
			if pe, ok := errors.AsType[*pgconn.PgError](err); !ok || pe.Code != "25006" {
				t.Fatalf("%s: %v, want the server's 25006", tc.name, err)
			}
			if tc.after != "" {
				if _, err := conn.Exec(ctx, tc.after); err != nil {
					t.Fatalf("%s: %s: %v", tc.name, tc.after, err)
				}
			}
		}
	}
	// The connection still writes.
	if _, err := conn.Exec(ctx, "insert into ro_own values (5)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	st := p.pools.Stats()[0]
	if st.Retired != 0 || st.Closes != 0 {
		t.Errorf("pool retired %d and closed %d connections, want 0", st.Retired, st.Closes)
	}
	if r := retriesTotal(t, p, "read_only"); r != 0 {
		t.Errorf(`pgsidecar_retries_total{reason="read_only"} = %v, want 0`, r)
	}
	var rows []int
	r, err := admin.Query(ctx, "select v from ro_own order by v")
	if err != nil {
		t.Fatal(err)
	}
	rows, err = pgx.CollectRows(r, pgx.RowTo[int])
	if err != nil || !slices.Equal(rows, []int{5}) {
		t.Errorf("rows %v (%v), want [5]", rows, err)
	}
	if after := pids(); !maps.Equal(after, before) {
		t.Errorf("servers %v after the read-only errors, want the same %v", after, before)
	}
}
