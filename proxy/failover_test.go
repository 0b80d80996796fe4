package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

// TestFailoverPromotedStandby puts the proxy in front of a primary and its streaming standby
// (database_url lists both, target_session_attrs=read-write), stops the primary and promotes
// the standby: writes through the proxy resume on the former standby without reconfiguring it.
func TestFailoverPromotedStandby(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: needs PostgreSQL")
	}
	primary := pgtest.Must(t, pgtest.Options{Replication: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	if err := primary.Exec(ctx, "create table failover_t (v int)"); err != nil {
		t.Fatal(err)
	}
	port1 := primary.Port()
	standbyDir := filepath.Join(primary.SocketDir(), "standby")
	if out, err := primary.RunAsOwner(ctx, "pg_basebackup", "-D", standbyDir, "-R", "-X", "stream", "-c", "fast",
		"-h", "127.0.0.1", "-p", fmt.Sprint(port1), "-U", "postgres"); err != nil {
		t.Fatalf("pg_basebackup: %v\n%s", err, out)
	}
	port2 := freeTCPPort(t)
	// Registered after pgtest.Must, so it runs before the cluster's Close removes the directory.
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer scancel()
		_, _ = primary.RunAsOwner(sctx, "pg_ctl", "-D", standbyDir, "-m", "immediate", "-w", "stop")
	})
	if out, err := primary.RunAsOwner(ctx, "pg_ctl", "-D", standbyDir, "-l", standbyDir+"/log",
		"-o", fmt.Sprintf("-p %d -c listen_addresses=127.0.0.1 -c unix_socket_directories=%s", port2, primary.SocketDir()),
		"-w", "-t", "60", "start"); err != nil {
		t.Fatalf("start standby: %v\n%s", err, out)
	}
	standbyDSN := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port2)
	waitFor(t, ctx, 30*time.Second, "the standby to be in recovery", func() error {
		conn, err := pgx.Connect(ctx, standbyDSN)
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		var inRecovery bool
		if err := conn.QueryRow(ctx, "select pg_is_in_recovery()").Scan(&inRecovery); err != nil {
			return err
		}
		if !inRecovery {
			return errors.New("not in recovery")
		}
		return nil
	})

	p := startProxy(t, primary, func(cfg *config.Config) {
		cfg.DatabaseURL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/postgres?sslmode=disable&target_session_attrs=read-write", port1, port2)
		cfg.PoolSize = 3
		cfg.QueryWaitTimeout = 10 * time.Second
		cfg.RetryDelay = 50 * time.Millisecond
	})
	conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	if _, err := conn.Exec(ctx, "insert into failover_t values (1)"); err != nil {
		t.Fatalf("insert on the primary: %v", err)
	}
	var port int
	if err := conn.QueryRow(ctx, "select inet_server_port()").Scan(&port); err != nil || port != port1 {
		t.Fatalf("before the failover: server port %d (%v), want the primary's %d", port, err, port1)
	}

	stopped := time.Now()
	if err := primary.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if out, err := primary.RunAsOwner(ctx, "pg_ctl", "-D", standbyDir, "-w", "promote"); err != nil {
		t.Fatalf("promote: %v\n%s", err, out)
	}
	promoted := time.Now()
	t.Logf("primary stopped and standby promoted in %v", promoted.Sub(stopped))

	// Write until a write succeeds, reconnecting when the proxy closed the client.
	errCounts := map[string]int{}
	var attempts int
	succeeded := false
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		attempts++
		if conn == nil || conn.IsClosed() {
			cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
			c, err := pgx.Connect(cctx, p.dsn("postgres", "postgres")+"&default_query_exec_mode=simple_protocol")
			ccancel()
			if err != nil {
				errCounts["connect: "+err.Error()]++
				time.Sleep(50 * time.Millisecond)
				continue
			}
			conn = c
			t.Cleanup(func() { _ = c.Close(context.Background()) })
		}
		qctx, qcancel := context.WithTimeout(ctx, 15*time.Second)
		_, err := conn.Exec(qctx, "insert into failover_t values (2)")
		qcancel()
		if err == nil {
			succeeded = true
			break
		}
		errCounts["insert: "+err.Error()]++
		time.Sleep(50 * time.Millisecond)
	}
	resumed := time.Now()
	msgs := make([]string, 0, len(errCounts))
	for m, n := range errCounts {
		msgs = append(msgs, fmt.Sprintf("%dx %s", n, m))
	}
	sort.Strings(msgs)
	t.Logf("writes resumed %v after the stop (%v after the promotion), %d attempts; client errors meanwhile: %d distinct\n%s",
		resumed.Sub(stopped), resumed.Sub(promoted), attempts, len(msgs), strings.Join(msgs, "\n"))
	if !succeeded {
		t.Fatal("no write succeeded through the proxy within 30s of the failover")
	}

	var inRecovery bool
	if err := conn.QueryRow(ctx, "select pg_is_in_recovery(), inet_server_port()").Scan(&inRecovery, &port); err != nil {
		t.Fatal(err)
	}
	if inRecovery {
		t.Error("after the failover the proxy's server is in recovery; want the promoted primary")
	}
	if port != port2 {
		t.Errorf("after the failover: server port %d, want the promoted standby's %d", port, port2)
	}
	direct2, err := pgx.Connect(ctx, standbyDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer direct2.Close(context.Background())
	var ones, twos int
	if err := direct2.QueryRow(ctx, "select count(*) filter (where v = 1), count(*) filter (where v = 2) from failover_t").Scan(&ones, &twos); err != nil {
		t.Fatal(err)
	}
	if twos != 1 {
		t.Errorf("promoted standby has %d rows with v = 2, want 1", twos)
	}
	t.Logf("promoted standby: %d row(s) v=1 (written on the old primary), %d row(s) v=2", ones, twos)
}

// freeTCPPort returns a loopback port that was free a moment ago.
func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// waitFor polls check until it returns nil, failing the test after d.
func waitFor(t *testing.T, ctx context.Context, d time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// blackholeRelay is a TCP relay to PostgreSQL that can be switched to blackhole mode: it then
// accepts connections but never answers, and stops forwarding on the connections it relays
// (it reads and discards). A connection that saw the blackhole stays dead after it is lifted,
// as its byte stream has a gap; new connections are relayed again.
type blackholeRelay struct {
	ln       net.Listener
	upstream string
	black    atomic.Bool
	live     atomic.Int64 // client-side connections open

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func startBlackholeRelay(t *testing.T, upstream string) *blackholeRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &blackholeRelay{ln: ln, upstream: upstream, conns: map[net.Conn]struct{}{}}
	t.Cleanup(func() {
		ln.Close()
		r.mu.Lock()
		for c := range r.conns {
			c.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.track(c)
			r.live.Add(1)
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				defer r.live.Add(-1)
				defer r.untrack(c)
				r.serve(c)
			}()
		}
	}()
	return r
}

func (r *blackholeRelay) addr() string { return r.ln.Addr().String() }

func (r *blackholeRelay) track(c net.Conn) {
	r.mu.Lock()
	r.conns[c] = struct{}{}
	r.mu.Unlock()
}

func (r *blackholeRelay) untrack(c net.Conn) {
	c.Close()
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
}

func (r *blackholeRelay) serve(c net.Conn) {
	if r.black.Load() {
		_, _ = io.Copy(io.Discard, c)
		return
	}
	u, err := net.Dial("tcp", r.upstream)
	if err != nil {
		return
	}
	r.track(u)
	defer r.untrack(u)
	var dead atomic.Bool
	done := make(chan struct{})
	go func() {
		r.pipe(u, c, &dead)
		u.Close()
		close(done)
	}()
	r.pipe(c, u, &dead)
	c.Close()
	<-done
}

// pipe copies src to dst until src fails; once the relay is blackholed, for good on this
// connection, it discards what it reads instead.
func (r *blackholeRelay) pipe(dst, src net.Conn, dead *atomic.Bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if r.black.Load() {
				dead.Store(true)
			}
			if !dead.Load() {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// TestUpstreamBlackholed makes the upstream unresponsive without refusing or closing anything
// (a network partition): a new client whose request needs a new server connection gets an error
// within query_wait_timeout plus connect_timeout plus a margin, never a hang, and service
// resumes once the network heals.
//
// The pool's idle server connections are dropped before the blackhole: they would be handed
// out as healthy (the server_check_delay peek sees nothing wrong with a silent socket).
func TestUpstreamBlackholed(t *testing.T) {
	c := cluster(t)
	relay := startBlackholeRelay(t, fmt.Sprintf("127.0.0.1:%d", c.Port()))
	const (
		waitTimeout    = 800 * time.Millisecond
		connectTimeout = 300 * time.Millisecond
		margin         = 3 * time.Second
	)
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.DatabaseURL = "postgres://postgres@" + relay.addr() + "/postgres?sslmode=disable"
		cfg.QueryWaitTimeout = waitTimeout
		cfg.ConnectTimeout = connectTimeout
		cfg.QueryTimeout = time.Second
		cfg.RetryDelay = 50 * time.Millisecond
	})
	ctx := testCtx(t)
	dsnFor := func(database string) string {
		return p.dsn(database, "postgres") + "&default_query_exec_mode=simple_protocol"
	}

	healthy, err := pgx.Connect(ctx, dsnFor("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	var one int
	if err := healthy.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("through the healthy relay: %v", err)
	}
	healthy.Close(ctx)
	for _, st := range p.pools.Stats() {
		if pl, ok := p.pools.Lookup(st.Key); ok {
			pl.DropIdle()
		}
	}
	time.Sleep(100 * time.Millisecond)
	before := runtime.NumGoroutine()
	liveBefore := relay.live.Load()

	relay.black.Store(true)
	bound := waitTimeout + connectTimeout + margin
	// Two new clients: one of the existing pool (it logs in on the pool's cached server
	// parameters; its query needs a dial), one of a database without a pool yet (its login
	// needs a dial).
	for _, database := range []string{"postgres", "template1"} {
		// The client's own deadline is well past the bound, so that a hang shows as a hang.
		cctx, ccancel := context.WithTimeout(ctx, bound+5*time.Second)
		start := time.Now()
		stage := "connect"
		err := func() error {
			conn, err := pgx.Connect(cctx, dsnFor(database))
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			stage = "query"
			_, err = conn.Exec(cctx, "select 1")
			return err
		}()
		elapsed := time.Since(start)
		ccancel()
		if err == nil {
			t.Fatalf("database %s: a new client's query succeeded with the upstream blackholed", database)
		}
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || (!strings.HasPrefix(pgErr.Code, "08") && !strings.HasPrefix(pgErr.Code, "57")) {
			t.Fatalf("database %s, upstream blackholed: at %s after %v got %v, want a class 08 or 57 error", database, stage, elapsed, err)
		}
		if elapsed > bound {
			t.Fatalf("database %s, upstream blackholed: error after %v, want within %v (query_wait_timeout + connect_timeout + margin)", database, elapsed, bound)
		}
		t.Logf("database %s, upstream blackholed: a new client got %s %s at %s after %v: %s",
			database, pgErr.Severity, pgErr.Code, stage, elapsed, pgErr.Message)
	}

	relay.black.Store(false)
	recoverStart := time.Now()
	deadline := recoverStart.Add(5 * time.Second)
	var lastErr error
	for {
		lastErr = func() error {
			qctx, qcancel := context.WithTimeout(ctx, 3*time.Second)
			defer qcancel()
			conn, err := pgx.Connect(qctx, dsnFor("postgres"))
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			var one int
			return conn.QueryRow(qctx, "select 1").Scan(&one)
		}()
		if lastErr == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if lastErr != nil {
		t.Fatalf("after the blackhole was lifted: %v", lastErr)
	}
	t.Logf("service resumed %v after the blackhole was lifted", time.Since(recoverStart))

	gdeadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+6 && time.Now().Before(gdeadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before+6 {
		t.Errorf("%d goroutines after recovery, %d before: something leaked (relay connections open: %d, before %d)",
			n, before, relay.live.Load(), liveBefore)
	}
	t.Logf("goroutines: %d before the blackhole, %d after recovery; relay connections open: %d before, %d after",
		before, runtime.NumGoroutine(), liveBefore, relay.live.Load())
}

// TestUpstreamBlackholedIdleServer blackholes the upstream while the pool still holds an idle
// server connection through it: a client given that connection must not wait forever. Its query
// passes query_timeout, the cancel cannot reach the server, and after a grace period the proxy
// closes the connection and tells the client (08006).
func TestUpstreamBlackholedIdleServer(t *testing.T) {
	c := cluster(t)
	relay := startBlackholeRelay(t, fmt.Sprintf("127.0.0.1:%d", c.Port()))
	const queryTimeout = time.Second
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.DatabaseURL = "postgres://postgres@" + relay.addr() + "/postgres?sslmode=disable"
		cfg.QueryWaitTimeout = 800 * time.Millisecond
		cfg.ConnectTimeout = 300 * time.Millisecond
		cfg.QueryTimeout = queryTimeout
		cfg.RetryDelay = 50 * time.Millisecond
	})
	ctx := testCtx(t)
	conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	if _, err := conn.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	relay.black.Store(true)
	start := time.Now()
	_, err := conn.Exec(ctx, "select 1")
	elapsed := time.Since(start)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || !strings.HasPrefix(pgErr.Code, "08") {
		t.Fatalf("query on a blackholed server: after %v got %v, want a class 08 error", elapsed, err)
	}
	// query_timeout, then a grace period of query_timeout, plus a margin.
	if bound := 2*queryTimeout + 3*time.Second; elapsed > bound {
		t.Fatalf("error after %v, want within %v", elapsed, bound)
	}
	t.Logf("client got %s after %v: %s", pgErr.Code, elapsed, pgErr.Message)
	relay.black.Store(false)
	again := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	var one int
	if err := again.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("after the blackhole lifted: %v", err)
	}
}
