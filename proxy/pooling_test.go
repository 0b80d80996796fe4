package proxy

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/internal/retry"
)

func TestSimpleQueryThroughProxy(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, nil)
	conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	var n int
	var user string
	if err := conn.QueryRow(testCtx(t), "select 41 + 1, current_user").Scan(&n, &user); err != nil {
		t.Fatal(err)
	}
	if n != 42 || user != "postgres" {
		t.Fatalf("got %d %q, want 42 postgres", n, user)
	}
}

// TestManyClientsFewServers runs 200 clients over a pool of 10 in transaction mode; each
// inserts rows tagged with its own id inside explicit transactions and checks that it sees
// exactly its own rows, while a watcher checks the upstream never has more than 10 backends
// from the proxy.
func TestManyClientsFewServers(t *testing.T) {
	c := cluster(t)
	const clients, poolSize, txPerClient = 200, 10, 5
	app := "pooltest_many"
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.PoolSize = poolSize
		cfg.DatabaseURL = c.DSN("postgres") + "&application_name=" + app
	})
	ctx := testCtx(t)
	admin := direct(t, c)
	if _, err := admin.Exec(ctx, `drop table if exists many_clients; create table many_clients (client int, n int)`); err != nil {
		t.Fatal(err)
	}

	var maxBackends atomic.Int64
	// The watcher has its own connection: cancelling its context mid-query closes it.
	watcher := direct(t, c)
	watchCtx, stopWatch := context.WithCancel(ctx)
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for watchCtx.Err() == nil {
			var n int64
			if err := watcher.QueryRow(watchCtx, `select count(*) from pg_stat_activity where application_name = $1`, app).Scan(&n); err == nil {
				if n > maxBackends.Load() {
					maxBackends.Store(n)
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()

	dog := time.AfterFunc(15*time.Second, func() {
		t.Logf("stuck after 15s:\n%s", p.srv.debugState())
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "proxy.(*session)") && !strings.Contains(g, "clientToServer") {
				t.Logf("%s", g)
			}
		}
		if out, err := exec.Command("ss", "-tn").CombinedOutput(); err == nil {
			t.Logf("sockets:\n%s", out)
		}
		dc, err := pgx.Connect(context.Background(), c.DSN("postgres"))
		if err != nil {
			t.Log(err)
			return
		}
		defer dc.Close(context.Background())
		rows, err := dc.Query(context.Background(), `select pid, state, wait_event_type, wait_event, query || ' port ' || client_port from pg_stat_activity where application_name = $1`, app)
		if err != nil {
			t.Log(err)
			return
		}
		for rows.Next() {
			var pid int
			var state, wt, we, q *string
			_ = rows.Scan(&pid, &state, &wt, &we, &q)
			s := func(p *string) string {
				if p == nil {
					return "-"
				}
				return *p
			}
			t.Logf("backend %d state=%s wait=%s/%s query=%q", pid, s(state), s(wt), s(we), s(q))
		}
	})
	defer dog.Stop()
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- runClient(ctx, p.dsn("postgres", "postgres"), i, txPerClient)
		}()
	}
	wg.Wait()
	stopWatch()
	<-watchDone
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if m := maxBackends.Load(); m > poolSize || m == 0 {
		t.Errorf("upstream backends seen: max %d, want 1..%d", m, poolSize)
	}
	var rows int
	if err := admin.QueryRow(ctx, `select count(*) from many_clients`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != clients*txPerClient*2 {
		t.Errorf("rows = %d, want %d", rows, clients*txPerClient*2)
	}
}

func runClient(ctx context.Context, dsn string, id, txs int) error {
	// Alternate protocols across clients: both must pool correctly.
	cc, err := pgx.ParseConfig(dsn)
	if err != nil {
		return err
	}
	if id%2 == 0 {
		cc.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	} else {
		cc.DefaultQueryExecMode = pgx.QueryExecModeExec
	}
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return fmt.Errorf("client %d connect: %w", id, err)
	}
	defer conn.Close(context.Background())
	for tx := range txs {
		err := pgx.BeginFunc(ctx, conn, func(tx2 pgx.Tx) error {
			if _, err := tx2.Exec(ctx, `insert into many_clients values ($1, $2), ($1, $2 + 1000)`, id, tx); err != nil {
				return err
			}
			var n, sum int
			if err := tx2.QueryRow(ctx, `select count(*), coalesce(sum(n), 0) from many_clients where client = $1`, id).Scan(&n, &sum); err != nil {
				return err
			}
			// Rows of earlier transactions plus this one's two: 2*(tx+1) rows.
			wantSum := 0
			for k := 0; k <= tx; k++ {
				wantSum += 2*k + 1000
			}
			if n != 2*(tx+1) || sum != wantSum {
				return fmt.Errorf("client %d tx %d sees %d rows sum %d, want %d rows sum %d", id, tx, n, sum, 2*(tx+1), wantSum)
			}
			var txid1, txid2 int64
			if err := tx2.QueryRow(ctx, `select txid_current()`).Scan(&txid1); err != nil {
				return err
			}
			if err := tx2.QueryRow(ctx, `select txid_current()`).Scan(&txid2); err != nil {
				return err
			}
			if txid1 != txid2 {
				return fmt.Errorf("client %d: transaction moved servers: txid %d then %d", id, txid1, txid2)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("client %d tx %d: %w", id, tx, err)
		}
	}
	return nil
}

// TestDisconnectMidTransaction leaves transactions open (and a statement half-sent) by dropping
// clients, then checks the servers they used carry nothing over to the next clients.
func TestDisconnectMidTransaction(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 2 })
	ctx := testCtx(t)
	admin := direct(t, c)
	if _, err := admin.Exec(ctx, `drop table if exists midtx; create table midtx (v int)`); err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
		if _, err := conn.Exec(ctx, `begin; insert into midtx values (1); set local statement_timeout = '1ms'`); err != nil {
			t.Fatal(err)
		}
		if i%2 == 1 {
			// Leave the transaction aborted rather than open.
			_, _ = conn.Exec(ctx, `select 1/0`)
		}
		// Drop the TCP connection without Terminate.
		_ = conn.PgConn().Conn().Close()
	}
	// The next clients get the same two servers.
	for range 4 {
		conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
		var status string
		if err := conn.QueryRow(ctx, `select count(*)::text from midtx`).Scan(&status); err != nil {
			t.Fatal(err)
		}
		if status != "0" {
			t.Fatalf("rows from abandoned transactions visible: %s", status)
		}
		var inTx bool
		if err := conn.QueryRow(ctx, `select now() = statement_timestamp()`).Scan(&inTx); err != nil {
			t.Fatal(err)
		}
		if !inTx {
			t.Fatal("server handed over inside a transaction")
		}
		var timeout string
		if err := conn.QueryRow(ctx, `show statement_timeout`).Scan(&timeout); err != nil {
			t.Fatal(err)
		}
		if timeout != "0" {
			t.Fatalf("statement_timeout leaked: %s", timeout)
		}
	}
	// The proxy rolls back what the dropped clients left as they go; give it a moment.
	var open int
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if err := admin.QueryRow(ctx, `select count(*) from pg_stat_activity where state like 'idle in transaction%'`).Scan(&open); err != nil {
			t.Fatal(err)
		}
		if open == 0 || time.Now().After(deadline) {
			break
		}
	}
	if open != 0 {
		t.Fatalf("%d upstream backends idle in transaction", open)
	}
}

// TestQueryWaitTimeout holds the only server connection and checks that the next client gets a
// clear error after query_wait_timeout, then that service resumes.
func TestQueryWaitTimeout(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.PoolSize = 1
		cfg.QueryWaitTimeout = 300 * time.Millisecond
	})
	ctx := testCtx(t)
	holder := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	if _, err := holder.Exec(ctx, "begin"); err != nil {
		t.Fatal(err)
	}
	waiter := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	start := time.Now()
	_, err := waiter.Exec(ctx, "select 1")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != retry.CodeConnectionFailure {
		t.Fatalf("got %v, want SQLSTATE %s", err, retry.CodeConnectionFailure)
	}
	if el := time.Since(start); el < 300*time.Millisecond || el > 5*time.Second {
		t.Errorf("error after %v, want about 300ms", el)
	}
	if _, err := holder.Exec(ctx, "commit"); err != nil {
		t.Fatal(err)
	}
	again := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	var one int
	if err := again.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("after the holder committed: %v %d", err, one)
	}
}

// TestSessionModeReset checks that session mode gives a client one server for its whole
// session and that server_reset_query wipes what it left before the next client gets it.
func TestSessionModeReset(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.PoolMode = config.PoolModeSession
		cfg.PoolSize = 1
	})
	ctx := testCtx(t)
	first := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	var pid1, pid2 int
	if err := first.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid1); err != nil {
		t.Fatal(err)
	}
	if _, err := first.Exec(ctx, "set search_path = pg_catalog; create temp table scratch (v int); prepare q as select 1"); err != nil {
		t.Fatal(err)
	}
	if err := first.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid2); err != nil {
		t.Fatal(err)
	}
	if pid1 != pid2 {
		t.Fatalf("session moved servers: %d then %d", pid1, pid2)
	}
	if err := first.Close(ctx); err != nil {
		t.Fatal(err)
	}

	second := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	var pid3 int
	var path string
	var temps, prepared int
	err := second.QueryRow(ctx, `select pg_backend_pid(), current_setting('search_path'),
		(select count(*) from pg_class where relpersistence = 't'), (select count(*) from pg_prepared_statements)`).Scan(&pid3, &path, &temps, &prepared)
	if err != nil {
		t.Fatal(err)
	}
	if pid3 != pid1 {
		t.Fatalf("pool of one gave a different server: %d, want %d", pid3, pid1)
	}
	if path != `"$user", public` || temps != 0 || prepared != 0 {
		t.Fatalf("state leaked to the next client: search_path=%q temp tables=%d prepared=%d", path, temps, prepared)
	}
}

// TestRouteMapping maps a client-side database and user onto other upstream names.
func TestRouteMapping(t *testing.T) {
	c := cluster(t)
	ctx := testCtx(t)
	admin := direct(t, c)
	if _, err := admin.Exec(ctx, `drop role if exists route_owner; create role route_owner login`); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.Routes = []config.Route{{Database: "appdb", User: "*", UpstreamDatabase: "postgres", UpstreamUser: "route_owner", PoolSize: 2}}
	})
	conn, err := pgx.Connect(ctx, p.dsn("appdb", "someone"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var db, user string
	if err := conn.QueryRow(ctx, "select current_database(), current_user").Scan(&db, &user); err != nil {
		t.Fatal(err)
	}
	if db != "postgres" || user != "route_owner" {
		t.Fatalf("routed to %s/%s, want postgres/route_owner", db, user)
	}
	// database_url's own pool, made at start, and the route's.
	stats := p.pools.Stats()
	if len(stats) != 2 || stats[1].Size != 2 || stats[1].Database != "postgres" || stats[1].User != "route_owner" ||
		stats[0].User != "postgres" || stats[0].Acquires != 0 {
		t.Fatalf("pool stats %+v, want the unused default pool and one of size 2 for postgres/route_owner", stats)
	}
}
