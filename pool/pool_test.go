package pool_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/goleak"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/pgsidecar/pgsidecar/pool"
)

// sharedCluster is one PostgreSQL cluster for every test of this package: none of them restarts
// or reconfigures it, and each pool tags its backends with its own application_name.
var (
	sharedOnce    sync.Once
	sharedCluster *pgtest.Cluster
	sharedErr     error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedCluster != nil {
		_ = sharedCluster.Close()
	}
	if faultCluster != nil {
		_ = faultCluster.Close()
	}
	os.Exit(code)
}

// cluster returns the package's shared PostgreSQL cluster, skipping under -short.
func cluster(t testing.TB) *pgtest.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs PostgreSQL")
	}
	if err := pgtest.Available(); err != nil {
		if pgtest.Required() {
			t.Fatalf("%v (PostgreSQL is required here: not skipping)", err)
		}
		t.Skip(err)
	}
	sharedOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		sharedCluster, sharedErr = pgtest.Start(ctx, pgtest.Options{})
	})
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	return sharedCluster
}

// leakCheck snapshots the running goroutines and returns a check, to be deferred first, that
// fails the test if any other goroutine is still running when it ends.
func leakCheck(t *testing.T) func() {
	t.Helper()
	opt := goleak.IgnoreCurrent()
	return func() {
		t.Helper()
		goleak.VerifyNone(t, opt)
	}
}

var appSeq atomic.Int64

// appName returns an application_name no other pool of this test binary uses.
func appName() string {
	return fmt.Sprintf("pooltest_%d", appSeq.Add(1))
}

// connConfig parses a ConnConfig for database on c that tags its backends with app.
func connConfig(t testing.TB, c *pgtest.Cluster, database, app string) *pgconn.Config {
	t.Helper()
	cc, err := pgconn.ParseConfig(c.DSN(database) + "&application_name=" + app)
	if err != nil {
		t.Fatal(err)
	}
	return cc
}

// newPool starts a pool on the shared cluster whose backends are tagged with a fresh
// application_name, returned too. mutate adjusts the config (Size defaults to 3). The pool is
// closed at the end of the test if the test has not closed it.
func newPool(t *testing.T, mutate func(*pool.Config)) (*pool.Pool, string) {
	t.Helper()
	c := cluster(t)
	app := appName()
	cfg := pool.Config{
		Key:        "test/" + app,
		Database:   "postgres",
		User:       "postgres",
		ConnConfig: connConfig(t, c, "postgres", app),
		Size:       3,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	p := pool.New(cfg)
	t.Cleanup(p.Close)
	return p, app
}

// backendPIDs returns the PIDs of the upstream backends tagged with app.
func backendPIDs(t testing.TB, app string) []uint32 {
	t.Helper()
	pids, err := queryBackendPIDs(cluster(t).DSN("postgres"), app)
	if err != nil {
		t.Fatal(err)
	}
	return pids
}

// queryBackendPIDs asks pg_stat_activity, over a connection of its own, for the backends tagged
// with app. Unlike backendPIDs it may be called from any goroutine.
func queryBackendPIDs(dsn, app string) ([]uint32, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, "select pid from pg_stat_activity where application_name = $1 order by pid", app)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (uint32, error) {
		var pid int32
		err := r.Scan(&pid)
		return uint32(pid), err
	})
}

func countBackends(t testing.TB, app string) int {
	t.Helper()
	return len(backendPIDs(t, app))
}

// eventually polls cond every 20ms until it holds or timeout passes, then fails with msg().
func eventually(t testing.TB, timeout time.Duration, cond func() bool, msg func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", timeout, msg())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitBackends waits until exactly n upstream backends are tagged with app.
func waitBackends(t testing.TB, app string, n int, timeout time.Duration) {
	t.Helper()
	var got int
	eventually(t, timeout, func() bool { got = countBackends(t, app); return got == n },
		func() string { return fmt.Sprintf("upstream has %d backends for %s, want %d", got, app, n) })
}

// counts is the part of a Stat that the tests compare exactly.
type counts struct {
	Open, Idle, InUse, Waiting int
	Acquires, Waits, Dials     uint64
	DialErrors, Closes         uint64
}

func countsOf(s pool.Stat) counts {
	return counts{
		Open: s.Open, Idle: s.Idle, InUse: s.InUse, Waiting: s.Waiting,
		Acquires: s.Acquires, Waits: s.Waits, Dials: s.Dials, DialErrors: s.DialErrors, Closes: s.Closes,
	}
}

func checkStat(t testing.TB, p *pool.Pool, step string, want counts) {
	t.Helper()
	if got := countsOf(p.Stat()); got != want {
		t.Errorf("%s: Stat\n got %+v\nwant %+v", step, got, want)
	}
}

func acquire(t testing.TB, p *pool.Pool) *pool.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := p.Acquire(ctx)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	return c
}

func execOK(t testing.TB, c *pool.Conn, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Exec(ctx, sql); err != nil {
		t.Fatalf("Exec %q: %v", sql, err)
	}
}

// waitWaiting waits until n callers are queued in p's Acquire.
func waitWaiting(t testing.TB, p *pool.Pool, n int) {
	t.Helper()
	eventually(t, 5*time.Second, func() bool { return p.Stat().Waiting == n }, func() string {
		return fmt.Sprintf("Stat().Waiting = %d, want %d", p.Stat().Waiting, n)
	})
}

type acquired struct {
	i    int
	conn *pool.Conn
	err  error
}

func TestAcquireReleaseReuse(t *testing.T) {
	defer leakCheck(t)()
	p, app := newPool(t, nil)
	defer p.Close()

	checkStat(t, p, "fresh", counts{})

	c1 := acquire(t, p)
	checkStat(t, p, "first acquire", counts{Open: 1, InUse: 1, Acquires: 1, Dials: 1})
	execOK(t, c1, "select 1")
	if c1.PID == 0 {
		t.Error("PID is 0")
	}
	if v := c1.Params["server_version"]; v == "" {
		t.Errorf("Params has no server_version: %v", c1.Params)
	}
	if pids := backendPIDs(t, app); !slices.Equal(pids, []uint32{c1.PID}) {
		t.Errorf("upstream backends %v, want [%d]", pids, c1.PID)
	}

	p.Release(c1)
	checkStat(t, p, "release", counts{Open: 1, Idle: 1, Acquires: 1, Dials: 1})

	c2 := acquire(t, p)
	if c2 != c1 {
		t.Errorf("Acquire after Release returned a different conn (PID %d, want %d)", c2.PID, c1.PID)
	}
	checkStat(t, p, "reacquire", counts{Open: 1, InUse: 1, Acquires: 2, Dials: 1})
	execOK(t, c2, "select 1")

	// With one held, the next acquire dials; releasing both leaves the last released on top.
	c3 := acquire(t, p)
	if c3 == c2 || c3.PID == c2.PID {
		t.Fatalf("second concurrent acquire returned the held conn")
	}
	checkStat(t, p, "second conn", counts{Open: 2, InUse: 2, Acquires: 3, Dials: 2})
	p.Release(c2)
	p.Release(c3)
	checkStat(t, p, "release both", counts{Open: 2, Idle: 2, Acquires: 3, Dials: 2})
	if c := acquire(t, p); c != c3 {
		t.Errorf("Acquire returned PID %d, want the most recently released PID %d (LIFO)", c.PID, c3.PID)
	} else {
		p.Release(c)
	}
	checkStat(t, p, "LIFO reacquire", counts{Open: 2, Idle: 2, Acquires: 4, Dials: 2})
	if n := countBackends(t, app); n != 2 {
		t.Errorf("upstream backends %d, want 2", n)
	}

	p.Close()
	checkStat(t, p, "closed", counts{Acquires: 4, Dials: 2, Closes: 2})
	waitBackends(t, app, 0, 5*time.Second)
}

func TestSizeCap(t *testing.T) {
	defer leakCheck(t)()
	p, app := newPool(t, func(c *pool.Config) { c.Size = 3 })
	defer p.Close()

	var held []*pool.Conn
	for range 3 {
		held = append(held, acquire(t, p))
	}
	checkStat(t, p, "three acquires", counts{Open: 3, InUse: 3, Acquires: 3, Dials: 3})
	if n := countBackends(t, app); n != 3 {
		t.Fatalf("upstream backends %d, want 3", n)
	}

	// Watch the upstream while the fourth caller waits.
	dsn := cluster(t).DSN("postgres")
	stop := make(chan struct{})
	maxSeen := make(chan int, 1)
	go func() {
		m := 0
		for {
			select {
			case <-stop:
				maxSeen <- m
				return
			default:
			}
			if pids, err := queryBackendPIDs(dsn, app); err == nil {
				m = max(m, len(pids))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()

	start := time.Now() // before the deadline is set, so that elapsed is at least 200ms
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	c, err := p.Acquire(ctx)
	elapsed := time.Since(start)
	close(stop)
	if err == nil {
		p.Release(c)
		t.Fatal("fourth Acquire on a full pool succeeded")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("fourth Acquire: %v, want context.DeadlineExceeded", err)
	}
	if elapsed < 200*time.Millisecond {
		t.Errorf("fourth Acquire failed after %v, want >= 200ms", elapsed)
	}
	s := p.Stat()
	if s.Waits != 1 || s.Waiting != 0 || s.Open != 3 || s.InUse != 3 || s.Dials != 3 {
		t.Errorf("after timeout: Waits=%d Waiting=%d Open=%d InUse=%d Dials=%d, want 1 0 3 3 3",
			s.Waits, s.Waiting, s.Open, s.InUse, s.Dials)
	}
	// The wait is timed from inside Acquire, which starts after the deadline was set: it ends at
	// the deadline, so it can be a little under 200ms (199.8ms seen in CI under -race), and it
	// cannot be longer than the call.
	if s.WaitDuration < 190*time.Millisecond || s.WaitDuration > elapsed {
		t.Errorf("WaitDuration %v, want about 200ms and at most the call's %v", s.WaitDuration, elapsed)
	}
	if m := <-maxSeen; m > 3 {
		t.Errorf("upstream had %d backends, want at most 3", m)
	}
	if n := countBackends(t, app); n != 3 {
		t.Errorf("upstream backends %d, want 3", n)
	}
	for _, c := range held {
		p.Release(c)
	}
	if s := p.Stat(); s.Open != 3 || s.Idle != 3 {
		t.Errorf("after release: Open=%d Idle=%d, want 3 3", s.Open, s.Idle)
	}
}

func TestWaitersServedFIFO(t *testing.T) {
	defer leakCheck(t)()
	p, _ := newPool(t, func(c *pool.Config) { c.Size = 1 })
	defer p.Close()

	held := acquire(t, p)
	got := make(chan acquired, 5)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := 1; i <= 5; i++ {
		go func() {
			c, err := p.Acquire(ctx)
			got <- acquired{i: i, conn: c, err: err}
		}()
		waitWaiting(t, p, i)
	}
	for want := 1; want <= 5; want++ {
		p.Release(held)
		var r acquired
		select {
		case r = <-got:
		case <-time.After(5 * time.Second):
			t.Fatalf("no waiter got the conn after release %d", want)
		}
		if r.err != nil {
			t.Fatalf("waiter %d: %v", r.i, r.err)
		}
		if r.i != want {
			t.Errorf("release %d went to waiter %d, want waiter %d", want, r.i, want)
		}
		if r.conn != held {
			t.Errorf("waiter %d got a different conn", r.i)
		}
		held = r.conn
	}
	p.Release(held)
	checkStat(t, p, "after FIFO", counts{Open: 1, Idle: 1, Acquires: 6, Waits: 5, Dials: 1})
}

// TestWaiterTimeoutKeepsGrant races short-timeout acquires against releases and destroys, so
// that some grants (conns and dial slots) reach waiters that have just given up.
func TestWaiterTimeoutKeepsGrant(t *testing.T) {
	defer leakCheck(t)()
	const size = 3
	p, app := newPool(t, func(c *pool.Config) { c.Size = size })
	defer p.Close()

	// Warm up: the race is about handing conns over, and a dial takes longer than most timeouts.
	var warm []*pool.Conn
	for range size {
		warm = append(warm, acquire(t, p))
	}
	for _, c := range warm {
		p.Release(c)
	}

	var wg sync.WaitGroup
	var ok, timedOut, destroyed atomic.Int64
	var refillErr atomic.Value
	stop := time.Now().Add(1500 * time.Millisecond)
	for range 12 {
		wg.Go(func() {
			for time.Now().Before(stop) {
				timeout := time.Duration(rand.IntN(5000)+100) * time.Microsecond
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				c, err := p.Acquire(ctx)
				cancel()
				if err != nil {
					timedOut.Add(1)
					continue
				}
				ok.Add(1)
				if rand.IntN(50) == 0 {
					// Destroy hands the slot to a waiter as a right to dial, which a waiter with
					// a short timeout often gives up; then queue patiently so the pool refills.
					destroyed.Add(1)
					p.Destroy(c)
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					c, err = p.Acquire(ctx)
					cancel()
					if err != nil {
						refillErr.Store(err)
						return
					}
				}
				if rand.IntN(2) == 0 {
					time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond)
				}
				p.Release(c)
			}
		})
	}
	wg.Wait()
	if err := refillErr.Load(); err != nil {
		t.Fatalf("patient Acquire after Destroy: %v (%+v)", err, p.Stat())
	}
	s := p.Stat()
	t.Logf("acquired %d, failed %d, destroyed %d; %+v", ok.Load(), timedOut.Load(), destroyed.Load(), s)
	if ok.Load() == 0 || timedOut.Load() == 0 {
		t.Errorf("the race did not happen: %d acquired, %d failed", ok.Load(), timedOut.Load())
	}
	if s.Open != s.Idle || s.InUse != 0 || s.Waiting != 0 || s.Open > size {
		t.Fatalf("after the race: Open=%d Idle=%d InUse=%d Waiting=%d, want Open == Idle <= %d, nothing in use or waiting",
			s.Open, s.Idle, s.InUse, s.Waiting, size)
	}
	// Every slot is still usable: Size conns can be acquired at once, and each works.
	var held []*pool.Conn
	for range size {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := p.Acquire(ctx)
		cancel()
		if err != nil {
			t.Fatalf("Acquire %d of %d after the race: %v (a slot was lost; %+v)", len(held)+1, size, err, p.Stat())
		}
		execOK(t, c, "select 1")
		held = append(held, c)
	}
	for _, c := range held {
		p.Release(c)
	}
	if s := p.Stat(); s.Open != size || s.Idle != size {
		t.Errorf("Open=%d Idle=%d, want %d %d", s.Open, s.Idle, size, size)
	}
	waitBackends(t, app, size, 5*time.Second)
}

func TestDestroyFreesSlot(t *testing.T) {
	defer leakCheck(t)()
	p, app := newPool(t, func(c *pool.Config) { c.Size = 1 })
	defer p.Close()

	c1 := acquire(t, p)
	got := make(chan acquired, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := p.Acquire(ctx)
		got <- acquired{conn: c, err: err}
	}()
	waitWaiting(t, p, 1)
	p.Destroy(c1)
	r := <-got
	if r.err != nil {
		t.Fatalf("waiter after Destroy: %v", r.err)
	}
	c2 := r.conn
	if c2 == c1 || c2.PID == c1.PID {
		t.Fatalf("waiter got the destroyed conn (PID %d)", c2.PID)
	}
	execOK(t, c2, "select 1")
	checkStat(t, p, "after destroy", counts{Open: 1, InUse: 1, Acquires: 2, Waits: 1, Dials: 2, Closes: 1})
	eventually(t, 5*time.Second, func() bool { return slices.Equal(backendPIDs(t, app), []uint32{c2.PID}) },
		func() string { return fmt.Sprintf("upstream backends %v, want only [%d]", backendPIDs(t, app), c2.PID) })
	p.Release(c2)
}

func TestIdleEviction(t *testing.T) {
	defer leakCheck(t)()
	p, app := newPool(t, func(c *pool.Config) {
		c.Size = 3
		c.MinSize = 1
		c.IdleTimeout = time.Second
	})
	defer p.Close()

	var held []*pool.Conn
	for range 3 {
		held = append(held, acquire(t, p))
	}
	for _, c := range held {
		p.Release(c)
	}
	if s := p.Stat(); s.Open != 3 || s.Idle != 3 {
		t.Fatalf("Open=%d Idle=%d, want 3 3", s.Open, s.Idle)
	}
	// Closes counts a connection once it is closed, just after Open stops counting it: both
	// are waited for (a check right after Open reached 1 once saw Closes still 1 under -race).
	eventually(t, 3500*time.Millisecond, func() bool { s := p.Stat(); return s.Open == 1 && s.Closes == 2 }, func() string {
		s := p.Stat()
		return fmt.Sprintf("Open %d, Closes %d", s.Open, s.Closes)
	})
	checkStat(t, p, "evicted", counts{Open: 1, Idle: 1, Acquires: 3, Dials: 3, Closes: 2})
	waitBackends(t, app, 1, 3*time.Second)
	// MinSize holds: another tick does not evict the last one.
	time.Sleep(1200 * time.Millisecond)
	if s := p.Stat(); s.Open != 1 || s.Closes != 2 {
		t.Errorf("below MinSize: Open=%d Closes=%d, want 1 2", s.Open, s.Closes)
	}
}

func TestMinSizeFill(t *testing.T) {
	defer leakCheck(t)()
	p, app := newPool(t, func(c *pool.Config) {
		c.Size = 3
		c.MinSize = 2
	})
	defer p.Close()

	eventually(t, 3*time.Second, func() bool { return countBackends(t, app) == 2 }, func() string {
		return fmt.Sprintf("upstream has %d backends, want 2", countBackends(t, app))
	})
	eventually(t, time.Second, func() bool { return p.Stat().Idle == 2 }, func() string {
		return fmt.Sprintf("Idle = %d, want 2", p.Stat().Idle)
	})
	checkStat(t, p, "filled", counts{Open: 2, Idle: 2, Dials: 2})
}

func TestLifetime(t *testing.T) {
	defer leakCheck(t)()
	p, app := newPool(t, func(c *pool.Config) { c.Lifetime = time.Second })
	defer p.Close()

	c1 := acquire(t, p)
	time.Sleep(1100 * time.Millisecond)
	p.Release(c1)
	checkStat(t, p, "release past lifetime", counts{Acquires: 1, Dials: 1, Closes: 1})

	c2 := acquire(t, p)
	if c2.PID == c1.PID {
		t.Errorf("Acquire after lifetime returned the old backend %d", c1.PID)
	}
	checkStat(t, p, "reacquire", counts{Open: 1, InUse: 1, Acquires: 2, Dials: 2, Closes: 1})
	execOK(t, c2, "select 1")
	eventually(t, 5*time.Second, func() bool { return slices.Equal(backendPIDs(t, app), []uint32{c2.PID}) },
		func() string { return fmt.Sprintf("upstream backends %v, want only [%d]", backendPIDs(t, app), c2.PID) })
	p.Release(c2)
}

func TestServerParams(t *testing.T) {
	defer leakCheck(t)()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	t.Run("cached", func(t *testing.T) {
		p, _ := newPool(t, nil)
		defer p.Close()
		params, err := p.ServerParams(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if params["server_version"] == "" {
			t.Errorf("no server_version in %v", params)
		}
		again, err := p.ServerParams(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if again["server_version"] != params["server_version"] {
			t.Errorf("second call: server_version %q, want %q", again["server_version"], params["server_version"])
		}
		if s := p.Stat(); s.Dials != 1 || s.Open != 1 || s.Idle != 1 {
			t.Errorf("Dials=%d Open=%d Idle=%d, want 1 1 1", s.Dials, s.Open, s.Idle)
		}
	})

	t.Run("no such database", func(t *testing.T) {
		p, _ := newPool(t, func(c *pool.Config) {
			c.Database = "no_such_db"
			c.ConnConfig = connConfig(t, cluster(t), "no_such_db", appName())
		})
		defer p.Close()
		for i := range 2 {
			_, err := p.ServerParams(ctx)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "3D000" {
				t.Fatalf("call %d: ServerParams error %v, want a *pgconn.PgError with code 3D000", i+1, err)
			}
		}
		if s := p.Stat(); s.Open != 0 || s.Dials != 2 || s.DialErrors != 2 {
			t.Errorf("Open=%d Dials=%d DialErrors=%d, want 0 2 2", s.Open, s.Dials, s.DialErrors)
		}
	})
}

func TestDialFailure(t *testing.T) {
	defer leakCheck(t)()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cc, err := pgconn.ParseConfig(fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port))
	if err != nil {
		t.Fatal(err)
	}
	// One attempt: retrying a refused dial is TestRetryMaxAttempts's and resilience_test.go's.
	p := pool.New(pool.Config{Key: "closed-port", Database: "postgres", User: "postgres", ConnConfig: cc, Size: 2,
		ConnectTimeout: 5 * time.Second, Retry: retry.Backoff{MaxAttempts: 1}})
	defer p.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := p.Acquire(ctx)
	if err == nil {
		p.Release(c)
		t.Fatal("Acquire on a closed port succeeded")
	}
	t.Logf("Acquire: %v", err)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		t.Errorf("dial error is a server error: %v", err)
	}
	if s := p.Stat(); s.Open != 0 || s.Idle != 0 || s.InUse != 0 || s.Dials != 1 || s.DialErrors != 1 || s.Closes != 0 {
		t.Errorf("after failed dial: %+v, want Open 0, Dials 1, DialErrors 1, nothing else", s)
	}
}

func TestClose(t *testing.T) {
	defer leakCheck(t)()

	t.Run("waiters and held conns", func(t *testing.T) {
		p, app := newPool(t, func(c *pool.Config) { c.Size = 2 })
		c1, c2 := acquire(t, p), acquire(t, p)
		got := make(chan acquired, 2)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for i := 1; i <= 2; i++ {
			go func() {
				c, err := p.Acquire(ctx)
				got <- acquired{i: i, conn: c, err: err}
			}()
			waitWaiting(t, p, i)
		}
		p.Close()
		for range 2 {
			select {
			case r := <-got:
				if !errors.Is(r.err, pool.ErrClosed) {
					t.Errorf("waiter %d: %v, want ErrClosed", r.i, r.err)
				}
				if r.conn != nil {
					p.Release(r.conn)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("a waiter is still blocked after Close")
			}
		}
		if _, err := p.Acquire(ctx); !errors.Is(err, pool.ErrClosed) {
			t.Errorf("Acquire after Close: %v, want ErrClosed", err)
		}
		if s := p.Stat(); s.Open != 2 || s.InUse != 2 || s.Waiting != 0 || s.Closes != 0 {
			t.Errorf("after Close: Open=%d InUse=%d Waiting=%d Closes=%d, want 2 2 0 0", s.Open, s.InUse, s.Waiting, s.Closes)
		}
		p.Release(c1)
		if s := p.Stat(); s.Open != 1 || s.Idle != 0 || s.Closes != 1 {
			t.Errorf("Release after Close: Open=%d Idle=%d Closes=%d, want 1 0 1", s.Open, s.Idle, s.Closes)
		}
		p.Destroy(c2)
		if s := p.Stat(); s.Open != 0 || s.Closes != 2 {
			t.Errorf("Destroy after Close: Open=%d Closes=%d, want 0 2", s.Open, s.Closes)
		}
		waitBackends(t, app, 0, 5*time.Second)
		p.Close() // idempotent
	})

	t.Run("idle conns", func(t *testing.T) {
		p, app := newPool(t, func(c *pool.Config) { c.Size = 3 })
		c1, c2, c3 := acquire(t, p), acquire(t, p), acquire(t, p)
		p.Release(c2)
		p.Release(c3)
		waitBackends(t, app, 3, 5*time.Second)
		p.Close()
		checkStat(t, p, "closed with two idle", counts{Open: 1, InUse: 1, Acquires: 3, Dials: 3, Closes: 2})
		eventually(t, 5*time.Second, func() bool { return slices.Equal(backendPIDs(t, app), []uint32{c1.PID}) },
			func() string {
				return fmt.Sprintf("upstream backends %v, want only the held one [%d]", backendPIDs(t, app), c1.PID)
			})
		p.Release(c1)
		checkStat(t, p, "released after close", counts{Acquires: 3, Dials: 3, Closes: 3})
		waitBackends(t, app, 0, 5*time.Second)
	})
}

// sendQuery writes a simple Query message on c, as the proxy's relay would.
func sendQuery(t testing.TB, c *pool.Conn, sql string) {
	t.Helper()
	msg, err := (&pgproto3.Query{String: sql}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("write query: %v", err)
	}
}

// readUntilReady reads c's responses with a pgproto3.Frontend until ReadyForQuery and returns
// copies of the DataRow values, the ErrorResponse (if any) and the transaction status.
func readUntilReady(t testing.TB, c *pool.Conn) (rows [][]string, errResp *pgproto3.ErrorResponse, txStatus byte) {
	t.Helper()
	fe := pgproto3.NewFrontend(c, nil)
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("receive: %v", err)
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			var row []string
			for _, v := range m.Values {
				row = append(row, string(v))
			}
			rows = append(rows, row)
		case *pgproto3.ErrorResponse:
			e := *m
			errResp = &e
		case *pgproto3.ReadyForQuery:
			return rows, errResp, m.TxStatus
		}
	}
}

func TestCancelRequest(t *testing.T) {
	defer leakCheck(t)()
	p, _ := newPool(t, nil)
	defer p.Close()
	c := acquire(t, p)
	defer p.Release(c)

	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	sendQuery(t, c, "select pg_sleep(10)")

	dsn := cluster(t).DSN("postgres")
	cancelErr := make(chan error, 1)
	go func() {
		// Cancel once the backend is really running the query, so that the cancel is not lost.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			cancelErr <- err
			return
		}
		defer conn.Close(context.Background())
		for {
			var active bool
			err := conn.QueryRow(ctx, "select exists (select 1 from pg_stat_activity where pid = $1 and state = 'active' and query like '%pg_sleep%')", int32(c.PID)).Scan(&active)
			if err != nil {
				cancelErr <- err
				return
			}
			if active {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		cancelErr <- c.CancelRequest(ctx)
	}()

	_, errResp, tx := readUntilReady(t, c)
	elapsed := time.Since(start)
	if err := <-cancelErr; err != nil {
		t.Fatalf("CancelRequest: %v", err)
	}
	if errResp == nil || errResp.Code != "57014" {
		t.Fatalf("response %+v, want ErrorResponse 57014 query_canceled", errResp)
	}
	if elapsed > 3*time.Second {
		t.Errorf("query ended after %v, want the cancel to stop it within 3s", elapsed)
	}
	if tx != 'I' {
		t.Errorf("TxStatus %q after cancel, want 'I'", tx)
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	execOK(t, c, "select 1")
}

func TestExecThenRawRelay(t *testing.T) {
	defer leakCheck(t)()
	p, _ := newPool(t, nil)
	defer p.Close()
	c := acquire(t, p)
	defer p.Release(c)

	execOK(t, c, "set application_name = 'x'")
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	sendQuery(t, c, "show application_name")
	rows, errResp, tx := readUntilReady(t, c)
	if errResp != nil {
		t.Fatalf("show application_name: %+v", errResp)
	}
	if len(rows) != 1 || len(rows[0]) != 1 || rows[0][0] != "x" {
		t.Errorf("rows %q, want [[x]]", rows)
	}
	if tx != 'I' {
		t.Errorf("TxStatus %q, want 'I'", tx)
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}

	// Exec after raw relay, and after a server error, still works.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := c.Exec(ctx, "select 1/0")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "22012" {
		t.Errorf("Exec select 1/0: %v, want *pgconn.PgError 22012", err)
	}
	execOK(t, c, "select 1")
	if err := c.Exec(ctx, "begin"); err == nil {
		t.Error("Exec begin: nil error, want one about the transaction state")
	}
	execOK(t, c, "rollback")

	// What the proxy does when a client leaves a failed transaction behind: the relay saw
	// TxStatus 'E', then Exec rolls back.
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	sendQuery(t, c, "begin; select 1/0")
	_, errResp, tx = readUntilReady(t, c)
	if errResp == nil || errResp.Code != "22012" || tx != 'E' {
		t.Fatalf("begin; select 1/0: error %+v, TxStatus %q; want 22012 and 'E'", errResp, tx)
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	execOK(t, c, "ROLLBACK")
	sendQuery(t, c, "select current_setting('application_name'), now() = statement_timestamp()")
	rows, errResp, tx = readUntilReady(t, c)
	if errResp != nil || tx != 'I' || len(rows) != 1 || rows[0][0] != "x" || rows[0][1] != "t" {
		t.Errorf("after ROLLBACK: rows %q, error %+v, TxStatus %q; want [[x t]], none, 'I'", rows, errResp, tx)
	}
}

// join is Set.Join of a fixed config, failing the test on error.
func join(t *testing.T, s *pool.Set, cfg pool.Config) *pool.Pool {
	t.Helper()
	p, err := s.Join(cfg.Key, func() (pool.Config, error) { return cfg, nil })
	if err != nil {
		t.Fatalf("Join(%q): %v", cfg.Key, err)
	}
	return p
}

func TestSet(t *testing.T) {
	defer leakCheck(t)()
	cc, err := pgconn.ParseConfig("postgres://u@127.0.0.1:1/db?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	s := pool.NewSet(pool.SetOptions{MaxPools: 2})
	cfg := func(key string) pool.Config {
		return pool.Config{Key: key, Database: "db_" + key, User: "u", ConnConfig: cc, Size: 2}
	}
	b := join(t, s, cfg("b"))
	a := join(t, s, cfg("a"))
	if a == b {
		t.Fatalf("Join: a=%p b=%p, want two distinct pools", a, b)
	}
	again, err := s.Join("a", func() (pool.Config, error) {
		t.Error("Join of an existing key built a config")
		return pool.Config{}, nil
	})
	if err != nil || again != a {
		t.Errorf("second Join for key a = %p, %v; want %p", again, err, a)
	}
	s.Leave(again)
	if a.Key() != "a" || b.Key() != "b" {
		t.Errorf("keys %q %q, want a b", a.Key(), b.Key())
	}
	if p, ok := s.Lookup("a"); !ok || p != a {
		t.Errorf("Lookup(a) = %p, %v; want %p, true", p, ok, a)
	}
	if p, ok := s.Lookup("c"); ok || p != nil {
		t.Errorf("Lookup(c) = %p, %v; want nil, false", p, ok)
	}
	stats := s.Stats()
	var keys []string
	for _, st := range stats {
		keys = append(keys, st.Key)
	}
	if !slices.Equal(keys, []string{"a", "b"}) {
		t.Errorf("Stats keys %q, want [a b]", keys)
	}
	if stats[0].Database != "db_a" || stats[0].Size != 2 {
		t.Errorf("Stats[0] = %+v, want the first config of key a (db_a, size 2)", stats[0])
	}

	// max_pools: a third client-chosen pool is refused; a configured route's is not.
	if p, err := s.Join("c", func() (pool.Config, error) { return cfg("c"), nil }); !errors.Is(err, pool.ErrTooManyPools) || p != nil {
		t.Errorf("third Join = %p, %v; want ErrTooManyPools", p, err)
	}
	kept := cfg("kept")
	kept.Keep = true
	k := join(t, s, kept)
	if s.Len() != 3 {
		t.Errorf("Len %d, want 3", s.Len())
	}
	// A config that cannot be built is the caller's error, and makes no pool.
	boom := errors.New("boom")
	if _, err := s.Join("bad", func() (pool.Config, error) { return pool.Config{}, boom }); !errors.Is(err, boom) {
		t.Errorf("Join with a failing config: %v, want boom", err)
	}

	// Pools that never connected go when their last user leaves; the configured one stays.
	s.Leave(a)
	if _, ok := s.Lookup("a"); ok {
		t.Error("pool a, never connected, kept after its last user left")
	}
	if _, err := a.Acquire(context.Background()); !errors.Is(err, pool.ErrClosed) {
		t.Errorf("removed pool: Acquire %v, want ErrClosed", err)
	}
	s.Leave(k)
	if _, ok := s.Lookup("kept"); !ok {
		t.Error("configured pool removed")
	}
	// Room again under max_pools.
	c := join(t, s, cfg("c"))

	s.Close()
	if p, err := s.Join("a", func() (pool.Config, error) { return cfg("a"), nil }); p != nil || !errors.Is(err, pool.ErrClosed) {
		t.Errorf("Join after Close = %p, %v; want ErrClosed", p, err)
	}
	if _, ok := s.Lookup("b"); ok {
		t.Error("Lookup after Close found a pool")
	}
	for _, p := range []*pool.Pool{b, c, k} {
		if _, err := p.Acquire(context.Background()); !errors.Is(err, pool.ErrClosed) {
			t.Errorf("pool %s after Set.Close: Acquire %v, want ErrClosed", p.Key(), err)
		}
	}
	s.Close() // idempotent
}

// TestSetDropsFailingPools: pools of client-chosen pairs are kept only while their upstream
// accepts logins. One whose database is missing goes with its last user; one that connected is
// kept while unused, until its upstream starts refusing it and it holds no connection. A
// min_pool_size pool that is refused backs off instead of dialing at every tick.
func TestSetDropsFailingPools(t *testing.T) {
	defer leakCheck(t)()
	c := cluster(t)
	ctx := t.Context()
	admin, err := pgconn.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	exec := func(sql string) {
		t.Helper()
		if _, err := admin.Exec(ctx, sql).ReadAll(); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec("DROP DATABASE IF EXISTS setdrop")
	exec("CREATE DATABASE setdrop")

	s := pool.NewSet(pool.SetOptions{SweepInterval: 100 * time.Millisecond})
	defer s.Close()
	missing := join(t, s, pool.Config{Key: "missing", ConnConfig: connConfig(t, c, "no_such_db", appName()), Size: 1})
	if _, err := missing.Acquire(ctx); err == nil {
		t.Fatal("Acquire on a missing database succeeded")
	}
	s.Leave(missing)
	if s.Len() != 0 {
		t.Fatalf("%d pools after the only user of a refused pool left, want 0", s.Len())
	}

	p := join(t, s, pool.Config{Key: "setdrop", ConnConfig: connConfig(t, c, "setdrop", appName()), Size: 1, MinSize: 1, Lifetime: time.Second})
	p.Release(acquire(t, p))
	s.Leave(p)
	time.Sleep(300 * time.Millisecond)
	if _, ok := s.Lookup("setdrop"); !ok {
		t.Fatal("a working pool was dropped when its last user left")
	}
	// The database goes: its connection reaches its lifetime, and the refill is refused.
	exec("DROP DATABASE setdrop WITH (FORCE)")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, ok := s.Lookup("setdrop"); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("an unused pool whose database was dropped is still kept: %+v", p.Stat())
		}
	}

	// A min_pool_size pool whose database is missing, kept by its user: the refill backs off.
	refused := join(t, s, pool.Config{Key: "refused", ConnConfig: connConfig(t, c, "no_such_db", appName()), Size: 2, MinSize: 1})
	defer s.Leave(refused)
	time.Sleep(5 * time.Second)
	if n := refused.Stat().Dials; n == 0 || n > 3 {
		t.Errorf("%d dials in 5s to a missing database, want 1 to 3", n)
	}
}
