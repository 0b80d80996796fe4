package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/retry"
)

// ownCluster starts a cluster for a test that kills or restarts it.
func ownCluster(t *testing.T) *pgtest.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs PostgreSQL")
	}
	return pgtest.Must(t, pgtest.Options{Settings: map[string]string{"max_connections": "100"}})
}

// autocommitLoad runs clients that each increment their own counter row in autocommit
// statements until stop is closed, counting the increments acknowledged to them and the errors
// they saw.
type autocommitLoad struct {
	acked  []atomic.Int64
	errors atomic.Int64
	first  atomic.Value
	wg     sync.WaitGroup
}

func startAutocommitLoad(t *testing.T, ctx context.Context, p *testProxy, clients int, mode pgx.QueryExecMode, stop <-chan struct{}) *autocommitLoad {
	t.Helper()
	l := &autocommitLoad{acked: make([]atomic.Int64, clients)}
	for i := range clients {
		conn := p.connect(t, mode)
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := conn.Exec(ctx, "update counters set n = n + 1 where id = $1", i); err != nil {
					if l.errors.Add(1) == 1 {
						l.first.Store(fmt.Sprintf("client %d: %v", i, err))
					}
					if conn.IsClosed() {
						return
					}
					continue
				}
				l.acked[i].Add(1)
			}
		}()
	}
	return l
}

// check compares the acknowledged increments with the counter table: every acknowledged
// statement applied exactly once.
func (l *autocommitLoad) check(t *testing.T, ctx context.Context, c *pgtest.Cluster) {
	t.Helper()
	l.wg.Wait()
	if n := l.errors.Load(); n > 0 {
		t.Errorf("clients saw %d errors; first: %v", n, l.first.Load())
	}
	conn := direct(t, c)
	var total int64
	for i := range l.acked {
		var n int64
		if err := conn.QueryRow(ctx, "select n from counters where id = $1", i).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != l.acked[i].Load() {
			t.Errorf("client %d: counter %d, acknowledged %d", i, n, l.acked[i].Load())
		}
		total += n
	}
	t.Logf("%d statements applied", total)
}

func setupCounters(t *testing.T, ctx context.Context, c *pgtest.Cluster, clients int) {
	t.Helper()
	if err := c.Exec(ctx, fmt.Sprintf("drop table if exists counters; create table counters (id int primary key, n bigint not null); insert into counters select g, 0 from generate_series(0, %d) g", clients-1)); err != nil {
		t.Fatal(err)
	}
}

// TestTerminateBackendsUnderLoad kills every server connection of the pool while clients run
// autocommit statements: the clients see no error and every statement is applied exactly once,
// while an explicit transaction in progress gets its error and is rolled back.
func TestTerminateBackendsUnderLoad(t *testing.T) {
	c := ownCluster(t)
	const clients = 12
	ctx := testCtx(t)
	setupCounters(t, ctx, c, clients)
	app := "terminate_load"
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.PoolSize = 4
		cfg.DatabaseURL = c.DSN("postgres") + "&application_name=" + app
		cfg.Retries = 3
	})
	if err := c.Exec(ctx, "drop table if exists tx_victim; create table tx_victim (v int)"); err != nil {
		t.Fatal(err)
	}
	victim := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	if _, err := victim.Exec(ctx, "begin; insert into tx_victim values (1)"); err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	load := startAutocommitLoad(t, ctx, p, clients, pgx.QueryExecModeSimpleProtocol, stop)
	admin := direct(t, c)
	for range 5 {
		time.Sleep(150 * time.Millisecond)
		if _, err := admin.Exec(ctx, "select pg_terminate_backend(pid) from pg_stat_activity where application_name = $1", app); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	close(stop)
	load.check(t, ctx, c)

	_, err := victim.Exec(ctx, "commit")
	if err == nil {
		t.Fatal("the transaction whose server was terminated committed")
	}
	var rows int
	if err := admin.QueryRow(ctx, "select count(*) from tx_victim").Scan(&rows); err != nil || rows != 0 {
		t.Fatalf("tx_victim has %d rows (%v), want 0: a half-done transaction was kept", rows, err)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		t.Logf("the open transaction got %s: %s", pgErr.Code, pgErr.Message)
	}
}

// TestRestartUnderLoad restarts PostgreSQL (fast shutdown) while clients run autocommit
// statements: the clients see no error and every statement is applied exactly once.
func TestRestartUnderLoad(t *testing.T) {
	c := ownCluster(t)
	const clients = 20
	ctx := testCtx(t)
	setupCounters(t, ctx, c, clients)
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.PoolSize = 5
		cfg.Retries = 3
		cfg.QueryWaitTimeout = 30 * time.Second
	})
	stop := make(chan struct{})
	load := startAutocommitLoad(t, ctx, p, clients, pgx.QueryExecModeSimpleProtocol, stop)
	time.Sleep(300 * time.Millisecond)
	if err := c.Restart(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	load.check(t, ctx, c)
}

// TestQueryTimeout checks that query_timeout cancels the server's query (it stops running on
// the server), the client gets 57014, and the server connection is reused cleanly.
func TestQueryTimeout(t *testing.T) {
	c := cluster(t)
	app := "query_timeout_test"
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.PoolSize = 1
		cfg.QueryTimeout = 300 * time.Millisecond
		cfg.DatabaseURL = c.DSN("postgres") + "&application_name=" + app
	})
	ctx := testCtx(t)
	conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	var pid int
	if err := conn.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := conn.Exec(ctx, "select pg_sleep(5)")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
		t.Fatalf("got %v, want 57014", err)
	}
	if el := time.Since(start); el < 300*time.Millisecond || el > 3*time.Second {
		t.Fatalf("cancelled after %v, want about 300ms", el)
	}
	admin := direct(t, c)
	var running int
	if err := admin.QueryRow(ctx, "select count(*) from pg_stat_activity where application_name = $1 and state = 'active' and query like '%pg_sleep%'", app).Scan(&running); err != nil {
		t.Fatal(err)
	}
	if running != 0 {
		t.Fatal("pg_sleep still runs on the server after query_timeout")
	}
	var pid2, one int
	if err := conn.QueryRow(ctx, "select pg_backend_pid(), 1").Scan(&pid2, &one); err != nil || one != 1 {
		t.Fatalf("after the timeout: %v", err)
	}
	if pid2 != pid {
		t.Errorf("server connection replaced (pid %d, then %d); want it reused", pid, pid2)
	}
}

// TestSessionStateRefuse checks session_state = refuse: SQL that would pin fails with 0A000
// (aborting an explicit transaction, as a server error does), the client is not pinned, and its
// connection stays usable.
func TestSessionStateRefuse(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.SessionState = config.SessionStateRefuse })
	ctx := testCtx(t)
	conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	for _, sql := range []string{"listen refused_channel", "select pg_advisory_lock(42)", "create temp table refused_t (i int)"} {
		_, err := conn.Exec(ctx, sql)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "0A000" {
			t.Fatalf("%s: got %v, want 0A000", sql, err)
		}
	}
	if _, err := conn.Exec(ctx, "begin"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "listen refused_channel"); err == nil {
		t.Fatal("LISTEN inside a transaction was not refused")
	}
	if _, err := conn.Exec(ctx, "select 1"); err == nil {
		t.Fatal("the transaction was not aborted by the refusal")
	}
	if _, err := conn.Exec(ctx, "rollback"); err != nil {
		t.Fatal(err)
	}
	extConn := p.connect(t, pgx.QueryExecModeExec)
	if _, err := extConn.Exec(ctx, "select pg_advisory_lock($1)", 7); err == nil {
		t.Fatal("extended-protocol advisory lock was not refused")
	}
	var one int
	if err := extConn.QueryRow(ctx, "select $1::int", 1).Scan(&one); err != nil || one != 1 {
		t.Fatalf("after the refusal: %v", err)
	}
	p.srv.mu.Lock()
	for sess := range p.srv.sessions {
		if sess.Pinned != "" {
			t.Errorf("session %d pinned (%s) under session_state=refuse", sess.id, sess.Pinned)
		}
	}
	p.srv.mu.Unlock()
}

// TestIdleTimeouts checks client_idle_timeout (57P05) and idle_transaction_timeout (25P03): the
// client is told and disconnected, an open transaction is rolled back, and the server is reused.
func TestIdleTimeouts(t *testing.T) {
	c := cluster(t)
	ctx := testCtx(t)
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.PoolSize = 1
		cfg.ClientIdleTimeout = 300 * time.Millisecond
		cfg.IdleTransactionTimeout = 200 * time.Millisecond
	})
	if err := c.Exec(ctx, "drop table if exists idle_tx; create table idle_tx (v int)"); err != nil {
		t.Fatal(err)
	}
	idler := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	time.Sleep(600 * time.Millisecond)
	_, err := idler.Exec(ctx, "select 1")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57P05" {
		t.Fatalf("idle client: got %v, want 57P05", err)
	}

	inTx := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	if _, err := inTx.Exec(ctx, "begin; insert into idle_tx values (1)"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	_, err = inTx.Exec(ctx, "commit")
	if !errors.As(err, &pgErr) || pgErr.Code != "25P03" {
		t.Fatalf("idle in transaction: got %v, want 25P03", err)
	}
	// The only server was rolled back and handed on.
	next := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	var n int
	if err := next.QueryRow(ctx, "select count(*) from idle_tx").Scan(&n); err != nil || n != 0 {
		t.Fatalf("after the timeout: %d rows (%v), want 0", n, err)
	}
}

// TestUpstreamDownLongerThanWait stops PostgreSQL for longer than query_wait_timeout: a client
// gets the documented error within the timeout plus a margin, no goroutine is left behind, and
// service resumes by itself once PostgreSQL is back.
func TestUpstreamDownLongerThanWait(t *testing.T) {
	c := ownCluster(t)
	ctx := testCtx(t)
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.PoolSize = 2
		cfg.QueryWaitTimeout = 700 * time.Millisecond
		cfg.RetryDelay = 50 * time.Millisecond
	})
	conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	if _, err := conn.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	start := time.Now()
	_, err := conn.Exec(ctx, "select 1")
	elapsed := time.Since(start)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != retry.CodeConnectionFailure {
		t.Fatalf("with the upstream down: got %v, want SQLSTATE %s", err, retry.CodeConnectionFailure)
	}
	if elapsed > 700*time.Millisecond+3*time.Second {
		t.Fatalf("error after %v, want within query_wait_timeout (700ms) plus a margin", elapsed)
	}
	t.Logf("client got %s after %v: %s", pgErr.Code, elapsed, pgErr.Message)

	if err := c.StartAgain(ctx); err != nil {
		t.Fatal(err)
	}
	// Service resumes by itself: the pool's dial backoff (at most 2 s) may still be running
	// when the upstream returns, so a client may need a few tries within seconds.
	resumed := time.Now().Add(10 * time.Second)
	for {
		again, err := pgx.Connect(ctx, p.dsn("postgres", "postgres"))
		var one int
		if err == nil {
			err = again.QueryRow(ctx, "select 1").Scan(&one)
			again.Close(ctx)
		}
		if err == nil && one == 1 {
			break
		}
		if time.Now().After(resumed) {
			t.Fatalf("service did not resume within 10s after the upstream came back: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The failed client's session and its relay are gone; nothing waits for the upstream.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+4 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before+4 {
		t.Errorf("%d goroutines after recovery, %d before: something leaked", n, before)
	}
}

// startingUpRelay is a TCP relay to PostgreSQL that answers its first refusals connections
// the way a server still starting up does (FATAL 57P03), then relays.
func startingUpRelay(t *testing.T, upstream string, refusals int) (addr string, attempts *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	attempts = new(atomic.Int64)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := attempts.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				if n <= int64(refusals) {
					if _, err := readStartup(c); err != nil {
						return
					}
					msg, _ := (&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "57P03", Message: "the database system is starting up"}).Encode(nil)
					_, _ = c.Write(msg)
					return
				}
				u, err := net.Dial("tcp", upstream)
				if err != nil {
					return
				}
				defer u.Close()
				done := make(chan struct{})
				go func() { _, _ = io.Copy(u, c); u.Close(); close(done) }()
				_, _ = io.Copy(c, u)
				c.Close()
				<-done
			}()
		}
	}()
	return ln.Addr().String(), attempts
}

// TestDialRetriesStartingUp makes the first dials fail with 57P03: the client connects and runs
// its query, later but without an error.
func TestDialRetriesStartingUp(t *testing.T) {
	c := cluster(t)
	relay, attempts := startingUpRelay(t, fmt.Sprintf("127.0.0.1:%d", c.Port()), 3)
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.DatabaseURL = "postgres://postgres@" + relay + "/postgres?sslmode=disable"
		cfg.RetryDelay = 20 * time.Millisecond
	})
	ctx := testCtx(t)
	conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	var one int
	if err := conn.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("through a server starting up: %v", err)
	}
	if n := attempts.Load(); n < 4 {
		t.Fatalf("%d dial attempts, want at least 4 (3 refused)", n)
	}
	var retries uint64
	for _, st := range p.pools.Stats() {
		retries += st.DialRetries
	}
	if retries < 3 {
		t.Fatalf("pool counted %d dial retries, want at least 3", retries)
	}
}
