package pool_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/pgsidecar/pgsidecar/pool"
)

// faultCluster is a second cluster, for the tests that stop or restart their upstream (so that
// the shared one stays up for the others) and for the ones that need password authentication.
// The tests of this package run one at a time; each leaves it running.
var (
	faultOnce    sync.Once
	faultCluster *pgtest.Cluster
	faultErr     error
)

const faultPassword = "fault-secret"

func faultPG(t *testing.T) *pgtest.Cluster {
	t.Helper()
	cluster(t) // skips under -short or without PostgreSQL
	faultOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		faultCluster, faultErr = pgtest.Start(ctx, pgtest.Options{Auth: "scram-sha-256", Password: faultPassword})
	})
	if faultErr != nil {
		t.Fatal(faultErr)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := faultCluster.StartAgain(ctx); err != nil {
			t.Errorf("restart the fault cluster after the test: %v", err)
		}
	})
	return faultCluster
}

// faultPool starts a pool on pg, like newPool does on the shared cluster.
func faultPool(t *testing.T, pg *pgtest.Cluster, mutate func(*pool.Config)) (*pool.Pool, string) {
	t.Helper()
	app := appName()
	cfg := pool.Config{
		Key:        "fault/" + app,
		Database:   "postgres",
		User:       "postgres",
		ConnConfig: connConfig(t, pg, "postgres", app),
		Size:       3,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	p := pool.New(cfg)
	t.Cleanup(p.Close)
	return p, app
}

// leakCheckAfterCleanup is leakCheck for tests that leave closing pools and servers to
// t.Cleanup: registered first, it runs after every cleanup registered later.
func leakCheckAfterCleanup(t *testing.T) {
	t.Helper()
	t.Cleanup(leakCheck(t))
}

// ctxFor returns a context that times out after d and is cancelled at the end of the test.
func ctxFor(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestUpstreamStopped(t *testing.T) {
	leakCheckAfterCleanup(t)
	pg := faultPG(t)
	p, _ := faultPool(t, pg, func(c *pool.Config) {
		c.Retry = retry.Backoff{Initial: 50 * time.Millisecond, Max: 250 * time.Millisecond}
	})
	c := acquire(t, p)
	execOK(t, c, "select 1")
	p.Destroy(c)
	if !p.Healthy() || p.LastError() != nil {
		t.Fatalf("after a good dial: Healthy %v, LastError %v; want true, nil", p.Healthy(), p.LastError())
	}
	if err := pg.Stop(ctxFor(t, 60*time.Second)); err != nil {
		t.Fatal(err)
	}

	t.Run("stays down", func(t *testing.T) {
		const wait = time.Second
		start := time.Now()
		c, err := p.Acquire(ctxFor(t, wait))
		elapsed := time.Since(start)
		if err == nil {
			p.Release(c)
			t.Fatal("Acquire with the upstream stopped succeeded")
		}
		t.Logf("after %v: %v", elapsed, err)
		if elapsed < wait-50*time.Millisecond || elapsed > wait+300*time.Millisecond {
			t.Errorf("Acquire returned after %v, want after its ctx deadline %v (+300ms at most)", elapsed, wait)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("error %v does not wrap ECONNREFUSED (the last dial error)", err)
		}
		if _, ok := errors.AsType[*net.OpError](err); !ok {
			t.Errorf("error %v does not wrap a *net.OpError", err)
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("error %v does not wrap context.DeadlineExceeded", err)
		}
		s := p.Stat()
		if s.DialRetries == 0 || s.DialErrors == 0 || s.Open != 0 || s.Dialing != 0 || s.Waiting != 0 {
			t.Errorf("Stat %+v: want DialRetries and DialErrors > 0, nothing open, dialing or waiting", s)
		}
		if s.Dials > 40 {
			t.Errorf("%d dials in %v: backoff does not space them", s.Dials, wait)
		}
		if p.Healthy() || !errors.Is(p.LastError(), syscall.ECONNREFUSED) {
			t.Errorf("Healthy %v, LastError %v; want false and a refused dial", p.Healthy(), p.LastError())
		}
	})

	t.Run("comes back", func(t *testing.T) {
		before := p.Stat()
		started := make(chan error, 1)
		go func() {
			time.Sleep(500 * time.Millisecond)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			started <- pg.StartAgain(ctx)
		}()
		start := time.Now()
		c, err := p.Acquire(ctxFor(t, 2*time.Second))
		elapsed := time.Since(start)
		if err := <-started; err != nil {
			t.Fatalf("StartAgain: %v", err)
		}
		if err != nil {
			t.Fatalf("Acquire while the upstream came back, after %v: %v", elapsed, err)
		}
		t.Logf("Acquire succeeded after %v", elapsed)
		execOK(t, c, "select 1")
		p.Release(c)
		s := p.Stat()
		if s.DialRetries <= before.DialRetries {
			t.Errorf("DialRetries %d, want more than %d", s.DialRetries, before.DialRetries)
		}
		if !p.Healthy() || p.LastError() != nil {
			t.Errorf("Healthy %v, LastError %v; want true, nil", p.Healthy(), p.LastError())
		}
	})
}

func TestRestartChecksIdle(t *testing.T) {
	leakCheckAfterCleanup(t)
	pg := faultPG(t)
	p, _ := faultPool(t, pg, func(c *pool.Config) { c.Size = 3; c.CheckDelay = 0 })
	unchecked, _ := faultPool(t, pg, func(c *pool.Config) { c.Size = 1; c.CheckDelay = -1 })

	// A live idle connection passes the check, again and again, and nothing is consumed.
	c := acquire(t, p)
	pid := c.PID
	p.Release(c)
	for range 20 {
		c := acquire(t, p)
		if c.PID != pid {
			t.Fatalf("Acquire returned backend %d, want the idle %d", c.PID, pid)
		}
		execOK(t, c, "select 1")
		p.Release(c)
	}
	if s := p.Stat(); s.CheckFailures != 0 || s.Dials != 1 {
		t.Fatalf("live connection: CheckFailures %d, Dials %d; want 0, 1", s.CheckFailures, s.Dials)
	}

	var held []*pool.Conn
	for range 3 {
		held = append(held, acquire(t, p))
	}
	for _, c := range held {
		p.Release(c)
	}
	unchecked.Release(acquire(t, unchecked))
	if err := pg.Restart(ctxFor(t, 60*time.Second), "fast"); err != nil {
		t.Fatal(err)
	}

	held = held[:0]
	for range 3 {
		c := acquire(t, p)
		execOK(t, c, "select 1")
		held = append(held, c)
	}
	for _, c := range held {
		p.Release(c)
	}
	if s := p.Stat(); s.CheckFailures != 3 || s.Open != 3 || s.Idle != 3 {
		t.Errorf("after restart: CheckFailures %d, Open %d, Idle %d; want 3 3 3 (three dead idle conns replaced)",
			s.CheckFailures, s.Open, s.Idle)
	}

	// Without the check the dead connection is handed out: the check is what made the difference.
	u := acquire(t, unchecked)
	if err := u.Exec(ctxFor(t, 10*time.Second), "select 1"); err == nil {
		t.Error("Exec on an unchecked connection from before the restart succeeded; the test proves nothing")
	} else {
		t.Logf("unchecked stale connection: %v", err)
	}
	unchecked.Destroy(u)
}

func TestDropIdle(t *testing.T) {
	leakCheckAfterCleanup(t)
	p, app := newPool(t, func(c *pool.Config) { c.Size = 3 })
	c1, c2, c3 := acquire(t, p), acquire(t, p), acquire(t, p)
	p.Release(c2)
	p.Release(c3)
	waitBackends(t, app, 3, 5*time.Second)

	p.DropIdle()
	if s := p.Stat(); s.Open != 1 || s.Idle != 0 || s.InUse != 1 || s.IdleDropped != 2 || s.Closes != 2 {
		t.Errorf("DropIdle with one held: %+v; want Open 1, Idle 0, InUse 1, IdleDropped 2, Closes 2", s)
	}
	waitBackends(t, app, 1, 5*time.Second)

	p.Release(c1)
	p.DropIdle()
	if s := p.Stat(); s.Open != 0 || s.Idle != 0 || s.IdleDropped != 3 {
		t.Errorf("DropIdle of all: %+v; want Open 0, Idle 0, IdleDropped 3", s)
	}
	waitBackends(t, app, 0, 5*time.Second)
	p.DropIdle() // nothing to drop

	c := acquire(t, p)
	execOK(t, c, "select 1")
	p.Release(c)
	if s := p.Stat(); s.Open != 1 || s.IdleDropped != 3 {
		t.Errorf("after reuse: Open %d, IdleDropped %d; want 1, 3", s.Open, s.IdleDropped)
	}
}

func TestNonRetryableNotRetried(t *testing.T) {
	leakCheckAfterCleanup(t)
	pg := faultPG(t)
	tests := []struct {
		name, code string
		mutate     func(*pool.Config)
	}{
		{"wrong password", "28P01", func(c *pool.Config) { c.ConnConfig.Password = "wrong" }},
		{"no such database", "3D000", func(c *pool.Config) {
			c.ConnConfig = connConfig(t, pg, "no_such_db", appName())
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, _ := faultPool(t, pg, func(c *pool.Config) {
				c.Retry = retry.Backoff{Initial: time.Millisecond, Max: 10 * time.Millisecond}
				tt.mutate(c)
			})
			start := time.Now()
			c, err := p.Acquire(ctxFor(t, 10*time.Second))
			elapsed := time.Since(start)
			if err == nil {
				p.Release(c)
				t.Fatal("Acquire succeeded")
			}
			if pgErr, ok := errors.AsType[*pgconn.PgError](err); !ok || pgErr.Code != tt.code {
				t.Errorf("Acquire: %v, want a *pgconn.PgError %s", err, tt.code)
			}
			if elapsed > 2*time.Second {
				t.Errorf("Acquire took %v, want an answer at once", elapsed)
			}
			if s := p.Stat(); s.Dials != 1 || s.DialRetries != 0 || s.DialErrors != 1 || s.Open != 0 {
				t.Errorf("Stat %+v, want one dial, no retry, nothing open", s)
			}
			if pgErr, ok := errors.AsType[*pgconn.PgError](p.LastError()); p.Healthy() || !ok || pgErr.Code != tt.code {
				t.Errorf("Healthy %v, LastError %v; want false, %s", p.Healthy(), p.LastError(), tt.code)
			}
		})
	}
}

func TestRetryMaxAttempts(t *testing.T) {
	leakCheckAfterCleanup(t)
	p := pool.New(pool.Config{Key: "attempts", Database: "appdb", User: "appuser", ConnConfig: closedPortConfig(t), Size: 1,
		Retry: retry.Backoff{Initial: time.Millisecond, Max: 5 * time.Millisecond, MaxAttempts: 3}})
	defer p.Close()
	_, err := p.Acquire(ctxFor(t, 10*time.Second))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("Acquire: %v, want a refused dial", err)
	}
	if s := p.Stat(); s.Dials != 3 || s.DialRetries != 2 || s.DialErrors != 3 || s.Open != 0 {
		t.Errorf("Stat %+v, want 3 dials, 2 retries, 3 errors, nothing open", s)
	}
}

// countedConn calls done once when closed.
type countedConn struct {
	net.Conn
	once sync.Once
	done func()
}

func (c *countedConn) Close() error {
	c.once.Do(c.done)
	return c.Conn.Close()
}

// silentServer accepts connections and never answers: every dial to it hangs in startup until
// its connect timeout. It is closed, with every connection it accepted, at the end of the test.
func silentServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { _, _ = io.Copy(io.Discard, c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func TestMaxConcurrentDials(t *testing.T) {
	leakCheckAfterCleanup(t)
	addr := silentServer(t)
	cc, err := pgconn.ParseConfig(fmt.Sprintf("postgres://appuser@%s/appdb?sslmode=disable", addr))
	if err != nil {
		t.Fatal(err)
	}
	// Dials in flight, counted where pgconn opens and closes its sockets.
	var mu sync.Mutex
	var inFlight, maxInFlight, total int
	cc.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		inFlight++
		total++
		maxInFlight = max(maxInFlight, inFlight)
		mu.Unlock()
		done := func() {
			mu.Lock()
			inFlight--
			mu.Unlock()
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			done()
			return nil, err
		}
		return &countedConn{Conn: c, done: done}, nil
	}
	const size, maxDials = 8, 2
	p := pool.New(pool.Config{Key: "silent", Database: "appdb", User: "appuser", ConnConfig: cc, Size: size,
		MaxConcurrentDials: maxDials, ConnectTimeout: 150 * time.Millisecond,
		Retry: retry.Backoff{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond}})
	defer p.Close()

	var maxDialing atomic.Int64
	stop := make(chan struct{})
	var watch sync.WaitGroup
	watch.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if d := int64(p.Stat().Dialing); d > maxDialing.Load() {
				maxDialing.Store(d)
			}
			time.Sleep(time.Millisecond)
		}
	})

	errs := make(chan error, size)
	var acquirers sync.WaitGroup
	for range size {
		acquirers.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 1200*time.Millisecond)
			defer cancel()
			c, err := p.Acquire(ctx)
			if err == nil {
				p.Release(c)
			}
			errs <- err
		})
	}
	acquirers.Wait()
	close(stop)
	watch.Wait()
	close(errs)
	for err := range errs {
		if err == nil {
			t.Error("Acquire from a silent server succeeded")
			continue
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Acquire: %v, want context.DeadlineExceeded", err)
		}
		if _, ok := errors.AsType[*pgconn.ConnectError](err); !ok {
			t.Errorf("Acquire: %v, want it to wrap the last dial error (*pgconn.ConnectError)", err)
		}
	}
	mu.Lock()
	t.Logf("%d dials, at most %d at once; Stat().Dialing at most %d; %+v", total, maxInFlight, maxDialing.Load(), p.Stat())
	if maxInFlight > maxDials || maxInFlight < 1 {
		t.Errorf("%d dials in flight at once, want 1..%d", maxInFlight, maxDials)
	}
	if total < 2 {
		t.Errorf("%d dials in all, want retries", total)
	}
	mu.Unlock()
	if d := maxDialing.Load(); d > maxDials {
		t.Errorf("Stat().Dialing reached %d, want at most %d", d, maxDials)
	}
	if s := p.Stat(); s.Open != 0 || s.Dialing != 0 || s.Waiting != 0 || s.Waits < size-maxDials {
		t.Errorf("after: %+v, want nothing open, dialing or waiting, and at least %d waits", s, size-maxDials)
	}
}

// TestDialBurst: more acquirers than MaxConcurrentDials on a healthy upstream all get a
// connection, the later ones by waiting for a dial token.
func TestDialBurst(t *testing.T) {
	leakCheckAfterCleanup(t)
	const size = 6
	p, app := newPool(t, func(c *pool.Config) { c.Size = size; c.MaxConcurrentDials = 2 })
	var wg sync.WaitGroup
	conns := make(chan *pool.Conn, size)
	for range size {
		wg.Go(func() {
			c, err := p.Acquire(ctxFor(t, 20*time.Second))
			if err != nil {
				t.Errorf("Acquire: %v", err)
				return
			}
			if s := p.Stat(); s.Dialing > 2 {
				t.Errorf("Stat().Dialing %d, want at most 2", s.Dialing)
			}
			conns <- c
		})
	}
	wg.Wait()
	close(conns)
	for c := range conns {
		execOK(t, c, "select 1")
		p.Release(c)
	}
	if s := p.Stat(); s.Open != size || s.Idle != size || s.Dials != size || s.Dialing != 0 {
		t.Errorf("after the burst: %+v, want %d open and idle, %d dials", s, size, size)
	}
	waitBackends(t, app, size, 5*time.Second)
}

// TestMinSizeFillWhileDown: the maintenance goroutine keeps trying to fill MinSize while the
// upstream refuses, but one dial per tick at most, spaced by the backoff, never a burst.
func TestMinSizeFillWhileDown(t *testing.T) {
	leakCheckAfterCleanup(t)
	p := pool.New(pool.Config{Key: "fill-down", Database: "appdb", User: "appuser", ConnConfig: closedPortConfig(t),
		Size: 4, MinSize: 4})
	t.Cleanup(p.Close)
	eventually(t, 5*time.Second, func() bool { return p.Stat().DialErrors >= 2 }, func() string {
		return fmt.Sprintf("no fill attempts: %+v", p.Stat())
	})
	s := p.Stat()
	if s.Dials > 3 || s.Open != 0 || s.Dialing != 0 {
		t.Errorf("filling a refusing upstream: %+v, want a dial per tick at most and nothing open", s)
	}
	if p.Healthy() || !errors.Is(p.LastError(), syscall.ECONNREFUSED) {
		t.Errorf("Healthy %v, LastError %v; want false and a refused dial", p.Healthy(), p.LastError())
	}
}
