package pool_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/pgsidecar/pgsidecar/pool"
)

// relay is an in-test TCP relay to the shared cluster that counts the connections it accepts and
// those still open. It stands for one upstream host: two relays are two hosts.
type relay struct {
	addr     string
	accepted atomic.Int64
	active   atomic.Int64

	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

// startRelay listens on listenAddr and relays every connection to target. It is closed, with
// every connection it relays, at the end of the test.
func startRelay(t *testing.T, listenAddr, target string) (*relay, error) {
	t.Helper()
	ln, err := net.Listen("tcp", listenAddr)
	if err != nil {
		return nil, err
	}
	r := &relay{addr: ln.Addr().String(), ln: ln}
	r.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.accepted.Add(1)
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			r.mu.Lock()
			r.conns = append(r.conns, c, s)
			r.mu.Unlock()
			r.active.Add(1)
			r.wg.Go(func() {
				defer r.active.Add(-1)
				done := make(chan struct{})
				go func() {
					defer close(done)
					_, _ = io.Copy(s, c)
					c.Close()
					s.Close()
				}()
				_, _ = io.Copy(c, s)
				c.Close()
				s.Close()
				<-done
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		r.mu.Lock()
		for _, c := range r.conns {
			c.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r, nil
}

func mustRelay(t *testing.T, listenAddr, target string) *relay {
	t.Helper()
	r, err := startRelay(t, listenAddr, target)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// relayPair starts relays to the shared cluster on 127.0.0.1 and 127.0.0.2 with the same port,
// as a host name's old and new address are: the port comes from the connection string. Linux
// routes all of 127/8 to the loopback interface.
func relayPair(t *testing.T) (first, second *relay, port int) {
	t.Helper()
	target := fmt.Sprintf("127.0.0.1:%d", cluster(t).Port())
	for range 10 {
		first = mustRelay(t, "127.0.0.1:0", target)
		port = first.ln.Addr().(*net.TCPAddr).Port
		var err error
		if second, err = startRelay(t, fmt.Sprintf("127.0.0.2:%d", port), target); err == nil {
			return first, second, port
		}
		first.ln.Close() // port taken on 127.0.0.2: try another
	}
	t.Fatal("no port free on both 127.0.0.1 and 127.0.0.2")
	return nil, nil, 0
}

// fakeDNS is an in-test resolver (a pgconn.LookupFunc) whose answers the test changes.
type fakeDNS struct {
	mu      sync.Mutex
	answers map[string][]string
	err     error // returned instead of an answer while set
	hang    bool  // block until the lookup's context ends
	lookups atomic.Int64
}

func (d *fakeDNS) set(host string, addrs ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.answers == nil {
		d.answers = map[string][]string{}
	}
	d.answers[host] = addrs
}

func (d *fakeDNS) fail(err error, hang bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.err, d.hang = err, hang
}

func (d *fakeDNS) LookupHost(ctx context.Context, host string) ([]string, error) {
	d.lookups.Add(1)
	d.mu.Lock()
	addrs, err, hang := d.answers[host], d.err, d.hang
	d.mu.Unlock()
	if hang {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, err
	}
	if addrs == nil {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return addrs, nil
}

// dnsPool starts a pool whose upstream is postgres://db.test:port, resolved by dns.
func dnsPool(t *testing.T, dns *fakeDNS, port int, mutate func(*pool.Config)) (*pool.Pool, string) {
	t.Helper()
	app := appName()
	cc, err := pgconn.ParseConfig(fmt.Sprintf("postgres://postgres@db.test:%d/postgres?sslmode=disable&application_name=%s", port, app))
	if err != nil {
		t.Fatal(err)
	}
	cc.LookupFunc = dns.LookupHost
	cfg := pool.Config{Key: "dns/" + app, Database: "postgres", User: "postgres", ConnConfig: cc, Size: 4,
		Retry: retry.Backoff{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond}}
	if mutate != nil {
		mutate(&cfg)
	}
	p := pool.New(cfg)
	t.Cleanup(p.Close)
	return p, app
}

// TestDNSFailover: when the host name moves to another address, new dials go there, an idle
// connection to the old address is closed at once and one in use is closed at its release
// instead of going back to the pool.
func TestDNSFailover(t *testing.T) {
	leakCheckAfterCleanup(t)
	oldAddr, newAddr, port := relayPair(t)
	dns := &fakeDNS{}
	dns.set("db.test", "127.0.0.1")
	p, app := dnsPool(t, dns, port, func(c *pool.Config) { c.DNSMaxTTL = 300 * time.Millisecond })

	inUse, idle := acquire(t, p), acquire(t, p)
	if inUse.Addr() != oldAddr.addr || idle.Addr() != oldAddr.addr {
		t.Fatalf("connected to %s and %s, want %s", inUse.Addr(), idle.Addr(), oldAddr.addr)
	}
	execOK(t, inUse, "select 1")
	p.Release(idle)

	// The failover: the name now points at 127.0.0.2. The maintenance goroutine notices within
	// DNSMaxTTL and a tick, with no dial to prompt it.
	dns.set("db.test", "127.0.0.2")
	eventually(t, 5*time.Second, func() bool { return p.Stat().Retired == 2 }, func() string {
		return fmt.Sprintf("connections to the old address not retired: %+v", p.Stat())
	})
	if s := p.Stat(); s.Idle != 0 || s.Open != 1 {
		t.Errorf("after the move: %+v, want the idle connection closed and the one in use open", s)
	}
	execOK(t, inUse, "select 1") // still usable by its holder
	p.Release(inUse)
	if s := p.Stat(); s.Open != 0 || s.Idle != 0 {
		t.Errorf("after releasing the retired connection: %+v, want it closed", s)
	}
	eventually(t, 5*time.Second, func() bool { return oldAddr.active.Load() == 0 }, func() string {
		return fmt.Sprintf("%d connections still open through the old address", oldAddr.active.Load())
	})

	c := acquire(t, p)
	if c.Addr() != newAddr.addr {
		t.Errorf("new connection to %s, want %s", c.Addr(), newAddr.addr)
	}
	execOK(t, c, "select 1")
	p.Release(c)
	if s := p.Stat(); s.Idle != 1 || s.Retired != 2 {
		t.Errorf("a connection to the new address: %+v, want it kept idle", s)
	}
	if n := oldAddr.accepted.Load(); n != 2 {
		t.Errorf("old address accepted %d connections, want 2", n)
	}
	waitBackends(t, app, 1, 5*time.Second)
}

// TestDNSCache: within DNSMaxTTL, dials share one lookup and acquiring idle connections looks
// nothing up; with 0, every dial looks up.
func TestDNSCache(t *testing.T) {
	leakCheckAfterCleanup(t)
	r := mustRelay(t, "127.0.0.1:0", fmt.Sprintf("127.0.0.1:%d", cluster(t).Port()))
	port := r.ln.Addr().(*net.TCPAddr).Port
	for _, tt := range []struct {
		ttl         time.Duration
		wantLookups int64
	}{{time.Hour, 1}, {0, 4}} {
		t.Run("ttl="+tt.ttl.String(), func(t *testing.T) {
			dns := &fakeDNS{}
			dns.set("db.test", "127.0.0.1")
			p, _ := dnsPool(t, dns, port, func(c *pool.Config) { c.DNSMaxTTL = tt.ttl })
			var conns []*pool.Conn
			for range 4 {
				conns = append(conns, acquire(t, p))
			}
			for _, c := range conns {
				p.Release(c)
			}
			for range 20 {
				p.Release(acquire(t, p)) // idle connections: no dial, no lookup
			}
			// With 0, the maintenance goroutine may look up once more while the test runs.
			if n := dns.lookups.Load(); n != tt.wantLookups && (tt.ttl != 0 || n < tt.wantLookups) {
				t.Errorf("%d lookups for 4 dials, want %d", n, tt.wantLookups)
			}
			if s := p.Stat(); s.Retired != 0 || s.Idle != 4 {
				t.Errorf("%+v, want 4 idle connections and nothing retired", s)
			}
		})
	}
}

// TestDNSLookupAfterDialFailure: a failed dial makes the next attempt look the name up again,
// however young the answer, so a moved name is followed at once.
func TestDNSLookupAfterDialFailure(t *testing.T) {
	leakCheckAfterCleanup(t)
	_, newAddr, port := relayPair(t)
	dns := &fakeDNS{}
	dns.set("db.test", "127.0.0.3") // nothing listens there: refused
	p, _ := dnsPool(t, dns, port, func(c *pool.Config) {
		c.DNSMaxTTL = time.Hour
		c.Retry = retry.Backoff{Initial: 10 * time.Millisecond, MaxAttempts: 1}
	})

	// Fail once, then point the name at a live address.
	if _, err := p.Acquire(ctxFor(t, 10*time.Second)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("Acquire from a refused address: %v, want ECONNREFUSED", err)
	}
	lookups := dns.lookups.Load()
	dns.set("db.test", "127.0.0.2")
	c, err := p.Acquire(ctxFor(t, 10*time.Second))
	if err != nil {
		t.Fatalf("Acquire after the name moved: %v", err)
	}
	defer p.Release(c)
	if c.Addr() != newAddr.addr {
		t.Errorf("connected to %s, want %s", c.Addr(), newAddr.addr)
	}
	if n := dns.lookups.Load() - lookups; n != 1 {
		t.Errorf("%d lookups after the failed dial, want 1", n)
	}
}

// TestDNSLookupFailureKeepsAnswer: a resolver that fails or hangs does not take the upstream
// away: dials use the last answer, after at most LookupTimeout, and nothing is retired.
func TestDNSLookupFailureKeepsAnswer(t *testing.T) {
	leakCheckAfterCleanup(t)
	r := mustRelay(t, "127.0.0.1:0", fmt.Sprintf("127.0.0.1:%d", cluster(t).Port()))
	port := r.ln.Addr().(*net.TCPAddr).Port
	dns := &fakeDNS{}
	dns.set("db.test", "127.0.0.1")
	p, _ := dnsPool(t, dns, port, func(c *pool.Config) { c.DNSMaxTTL = 0; c.LookupTimeout = 100 * time.Millisecond })
	first := acquire(t, p)

	dns.fail(&net.DNSError{Err: "server misbehaving", Name: "db.test", IsTemporary: true}, false)
	second := acquire(t, p)

	dns.fail(nil, true)
	start := time.Now()
	third := acquire(t, p)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("dial with a hanging resolver took %v, want about LookupTimeout", d)
	}
	for _, c := range []*pool.Conn{first, second, third} {
		if c.Addr() != r.addr {
			t.Errorf("connected to %s, want %s", c.Addr(), r.addr)
		}
		p.Release(c)
	}
	if s := p.Stat(); s.Retired != 0 || s.Idle != 3 {
		t.Errorf("%+v, want 3 idle connections and nothing retired", s)
	}

	// With no answer ever, the lookup's error is the dial's.
	dns2 := &fakeDNS{}
	dns2.fail(&net.DNSError{Err: "no such host", Name: "db.test", IsNotFound: true}, false)
	p2, _ := dnsPool(t, dns2, port, func(c *pool.Config) {
		c.Retry = retry.Backoff{Initial: time.Millisecond, MaxAttempts: 1}
	})
	_, err := p2.Acquire(ctxFor(t, 5*time.Second))
	if dnsErr, ok := errors.AsType[*net.DNSError](err); !ok || !dnsErr.IsNotFound {
		t.Errorf("Acquire with an unresolvable name: %v, want the *net.DNSError", err)
	}
}

// TestRetireAddr: idle connections to the address close at once, those in use at their
// release; other addresses are untouched, and the address may be dialled again.
func TestRetireAddr(t *testing.T) {
	leakCheckAfterCleanup(t)
	c := cluster(t)
	other := mustRelay(t, "127.0.0.1:0", fmt.Sprintf("127.0.0.1:%d", c.Port()))
	app := appName()
	cc, err := pgconn.ParseConfig(fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable&application_name=%s", c.Port(), app))
	if err != nil {
		t.Fatal(err)
	}
	p := pool.New(pool.Config{Key: "retire/" + app, ConnConfig: cc, Size: 4})
	t.Cleanup(p.Close)
	a1, a2, a3 := acquire(t, p), acquire(t, p), acquire(t, p)
	p.Release(a3)
	// One connection through the relay: another address in the same pool.
	cc2 := cc.Copy()
	cc2.Port = uint16(other.ln.Addr().(*net.TCPAddr).Port)
	p2 := pool.New(pool.Config{Key: "retire-other/" + app, ConnConfig: cc2, Size: 1})
	t.Cleanup(p2.Close)
	b := acquire(t, p2)

	want := net.JoinHostPort("127.0.0.1", strconv.Itoa(c.Port()))
	if a1.Addr() != want {
		t.Fatalf("Addr() = %q, want %q", a1.Addr(), want)
	}
	if n := p.RetireAddr(want); n != 3 {
		t.Errorf("RetireAddr retired %d connections, want 3", n)
	}
	if n := p2.RetireAddr(want); n != 0 {
		t.Errorf("RetireAddr on a pool without connections to it retired %d", n)
	}
	if s := p.Stat(); s.Idle != 0 || s.Open != 2 || s.Retired != 3 {
		t.Errorf("after RetireAddr: %+v, want the idle one closed, 2 in use", s)
	}
	execOK(t, a1, "select 1")
	p.Release(a1)
	p.Destroy(a2)
	if s := p.Stat(); s.Open != 0 {
		t.Errorf("after releasing: %+v, want nothing open", s)
	}
	waitBackends(t, app, 1, 5*time.Second) // b, through the relay

	// Not a ban: the next acquire dials the same address.
	a4 := acquire(t, p)
	if a4.Addr() != want {
		t.Errorf("new connection to %s, want %s", a4.Addr(), want)
	}
	p.Release(a4)
	if s := p.Stat(); s.Idle != 1 {
		t.Errorf("%+v: a new connection must go back to the pool", s)
	}

	// Retire by predicate: a4's PID.
	pid := a4.PID
	if n := p.Retire(func(c *pool.Conn) bool { return c.PID == pid }); n != 1 {
		t.Errorf("Retire by PID retired %d, want 1", n)
	}
	p2.Release(b)
	if s := p.Stat(); s.Open != 0 || s.Retired != 4 {
		t.Errorf("after Retire: %+v", s)
	}
}

// TestRetireAddrDialInFlight: a dial to the address that was under way when it was retired
// yields a connection that serves its acquirer once and is then closed.
func TestRetireAddrDialInFlight(t *testing.T) {
	leakCheckAfterCleanup(t)
	c := cluster(t)
	cc := connConfig(t, c, "postgres", appName())
	dialing, proceed := make(chan struct{}), make(chan struct{})
	var once sync.Once
	cc.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		once.Do(func() {
			close(dialing)
			<-proceed
		})
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	p := pool.New(pool.Config{Key: "retire-inflight", ConnConfig: cc, Size: 2})
	t.Cleanup(p.Close)
	type result struct {
		c   *pool.Conn
		err error
	}
	got := make(chan result, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		c, err := p.Acquire(ctxFor(t, 10*time.Second))
		got <- result{c, err}
	})
	<-dialing
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(c.Port()))
	if n := p.RetireAddr(addr); n != 0 {
		t.Errorf("RetireAddr counted %d open connections, want 0 (one dial in flight)", n)
	}
	close(proceed)
	wg.Wait()
	res := <-got
	if res.err != nil {
		t.Fatal(res.err)
	}
	conn := res.c
	execOK(t, conn, "select 1")
	p.Release(conn)
	if s := p.Stat(); s.Open != 0 || s.Retired != 1 {
		t.Errorf("after releasing the connection dialled during RetireAddr: %+v, want it closed", s)
	}
	// Later dials are not affected.
	p.Release(acquire(t, p))
	if s := p.Stat(); s.Idle != 1 {
		t.Errorf("%+v, want the next connection kept", s)
	}
}

// TestLoadBalanceHosts: with load_balance_hosts=random connections spread over the hosts; with
// it off, the first host that accepts gets them all; a host that is down is skipped either way.
func TestLoadBalanceHosts(t *testing.T) {
	leakCheckAfterCleanup(t)
	target := fmt.Sprintf("127.0.0.1:%d", cluster(t).Port())
	down := func() string { // a port nothing listens on
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().String()
	}()
	const dials = 24
	for _, tt := range []struct {
		name     string
		random   bool
		withDown bool
	}{{"random", true, false}, {"disable", false, false}, {"random, one host down", true, true}} {
		t.Run(tt.name, func(t *testing.T) {
			h1, h2 := mustRelay(t, "127.0.0.1:0", target), mustRelay(t, "127.0.0.1:0", target)
			hosts := h1.addr + "," + h2.addr
			if tt.withDown {
				hosts = down + "," + h1.addr
			}
			cc, err := pgconn.ParseConfig(fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable&target_session_attrs=read-write&application_name=%s", hosts, appName()))
			if err != nil {
				t.Fatal(err)
			}
			p := pool.New(pool.Config{Key: "lb/" + tt.name, ConnConfig: cc, Size: dials, LoadBalanceHosts: tt.random})
			t.Cleanup(p.Close)
			var conns []*pool.Conn
			for range dials {
				conns = append(conns, acquire(t, p))
			}
			for _, c := range conns {
				p.Release(c)
			}
			n1, n2 := h1.accepted.Load(), h2.accepted.Load()
			t.Logf("%s: %d and %d connections", hosts, n1, n2)
			switch {
			case tt.withDown:
				if n1 != dials {
					t.Errorf("the live host got %d connections, want all %d", n1, dials)
				}
			case tt.random:
				// Each host is missed by all 24 dials with probability 2^-24.
				if n1 == 0 || n2 == 0 || n1+n2 != dials {
					t.Errorf("hosts got %d and %d connections, want both some of %d", n1, n2, dials)
				}
			default:
				if n1 != dials || n2 != 0 {
					t.Errorf("hosts got %d and %d connections, want all on the first", n1, n2)
				}
			}
		})
	}
}
