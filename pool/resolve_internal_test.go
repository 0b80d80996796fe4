package pool

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// fakeLookup answers from a map the test changes, slowly if delay is set.
type fakeLookup struct {
	mu      sync.Mutex
	answers map[string][]string
	delay   time.Duration
	calls   atomic.Int64
}

func (f *fakeLookup) set(host string, addrs ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answers[host] = addrs
}

func (f *fakeLookup) lookup(ctx context.Context, host string) ([]string, error) {
	f.calls.Add(1)
	if f.delay > 0 {
		select {
		case <-time.After(f.delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if a, ok := f.answers[host]; ok {
		return a, nil
	}
	return nil, fmt.Errorf("no such host %s", host)
}

func parseConfig(t *testing.T, dsn string) *pgconn.Config {
	t.Helper()
	cc, err := pgconn.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return cc
}

// TestHostCacheSharedLookup: concurrent dials of a name not looked up yet share one lookup.
func TestHostCacheSharedLookup(t *testing.T) {
	f := &fakeLookup{answers: map[string][]string{"a.test": {"10.0.0.1"}}, delay: 50 * time.Millisecond}
	cc := parseConfig(t, "postgres://a.test:5432/db")
	cc.LookupFunc = f.lookup
	h := newHostCache(cc, time.Hour, time.Second, false, func([]string) { t.Error("nothing may be retired") })
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			addrs, err := h.LookupHost(t.Context(), "a.test")
			if err != nil || !slices.Equal(addrs, []string{"10.0.0.1"}) {
				t.Errorf("LookupHost = %v, %v", addrs, err)
			}
		})
	}
	wg.Wait()
	if n := f.calls.Load(); n != 1 {
		t.Errorf("%d lookups, want 1", n)
	}
}

// TestHostCacheGone: only addresses that no configured host resolves to any more are gone,
// on every port the host is dialled on; IP hosts never leave.
func TestHostCacheGone(t *testing.T) {
	f := &fakeLookup{answers: map[string][]string{
		"a.test": {"10.0.0.1", "10.0.0.2"},
		"b.test": {"10.0.0.2"},
	}}
	cc := parseConfig(t, "postgres://a.test:5432,a.test:5433,b.test:5432,10.0.0.9:5432/db?sslmode=disable")
	cc.LookupFunc = f.lookup
	var gone [][]string
	h := newHostCache(cc, 0, time.Second, false, func(a []string) { gone = append(gone, a) })
	ctx := t.Context()
	for _, host := range []string{"a.test", "b.test"} {
		if _, err := h.LookupHost(ctx, host); err != nil {
			t.Fatal(err)
		}
	}
	f.set("a.test", "10.0.0.3", "10.0.0.9")
	if _, err := h.LookupHost(ctx, "a.test"); err != nil {
		t.Fatal(err)
	}
	// 10.0.0.2:5432 is still b.test's; 10.0.0.2:5433 was only a.test's.
	want := [][]string{{"10.0.0.1:5432", "10.0.0.1:5433", "10.0.0.2:5433"}}
	if !slices.EqualFunc(gone, want, slices.Equal) {
		t.Errorf("gone %q, want %q", gone, want)
	}
	gone = nil
	f.set("b.test", "[::ffff:10.0.0.4]:6000") // a resolver may give the port too
	if _, err := h.LookupHost(ctx, "b.test"); err != nil {
		t.Fatal(err)
	}
	if want := [][]string{{"10.0.0.2:5432"}}; !slices.EqualFunc(gone, want, slices.Equal) {
		t.Errorf("gone %q, want %q", gone, want)
	}
	if got := h.serverAddrs("b.test", []string{"[::ffff:10.0.0.4]:6000"}); !slices.Equal(got, []string{"10.0.0.4:6000"}) {
		t.Errorf("serverAddrs %q: IPv4-mapped addresses must compare equal to RemoteAddr's form", got)
	}
}

// TestHostCacheNone: a config of IP addresses and Unix sockets has nothing to resolve.
func TestHostCacheNone(t *testing.T) {
	cc := parseConfig(t, "host=/tmp,127.0.0.1,::1 sslmode=disable")
	if h := newHostCache(cc, 0, 0, false, nil); h != nil {
		t.Errorf("newHostCache = %+v, want nil", h)
	}
}

// TestShuffleHosts: every host is kept, each host's TLS and plain entries stay together and in
// order, and the order varies.
func TestShuffleHosts(t *testing.T) {
	base := parseConfig(t, "postgres://h1:1,h2:2,h3:3/db?sslmode=prefer")
	if len(base.Fallbacks) != 5 {
		t.Fatalf("sslmode=prefer gave %d fallbacks, want 5 (TLS and plain per host)", len(base.Fallbacks))
	}
	firsts := map[string]bool{}
	for range 200 {
		cc := base.Copy()
		shuffleHosts(cc)
		all := append([]*pgconn.FallbackConfig{{Host: cc.Host, Port: cc.Port, TLSConfig: cc.TLSConfig}}, cc.Fallbacks...)
		if len(all) != 6 {
			t.Fatalf("%d entries after shuffling, want 6", len(all))
		}
		seen := map[string]bool{}
		for i := 0; i < len(all); i += 2 {
			tlsEntry, plain := all[i], all[i+1]
			if tlsEntry.Host != plain.Host || tlsEntry.Port != plain.Port || tlsEntry.TLSConfig == nil || plain.TLSConfig != nil {
				t.Fatalf("entries %d and %d: %s:%d tls=%v, %s:%d tls=%v; want one host, TLS first", i, i+1,
					tlsEntry.Host, tlsEntry.Port, tlsEntry.TLSConfig != nil, plain.Host, plain.Port, plain.TLSConfig != nil)
			}
			if tlsEntry.TLSConfig.ServerName != tlsEntry.Host {
				t.Errorf("%s's TLS config names %s", tlsEntry.Host, tlsEntry.TLSConfig.ServerName)
			}
			seen[tlsEntry.Host] = true
		}
		if len(seen) != 3 {
			t.Fatalf("hosts after shuffling: %v", seen)
		}
		firsts[cc.Host] = true
	}
	if len(firsts) != 3 {
		t.Errorf("first hosts over 200 shuffles: %v, want all three", firsts)
	}
	if base.Host != "h1" || base.Fallbacks[1].Host != "h2" {
		t.Error("shuffling a copy changed the original")
	}
}

// TestHostCacheKeepsAnswerOnFailure: a failed lookup keeps the last answer for another maxTTL,
// so that dials do not each wait for DNS while it is down; a failed dial (markStale) asks again.
func TestHostCacheKeepsAnswerOnFailure(t *testing.T) {
	f := &fakeLookup{answers: map[string][]string{"a.test": {"10.0.0.1"}}}
	cc := parseConfig(t, "postgres://a.test:5432/db")
	cc.LookupFunc = f.lookup
	const ttl = 50 * time.Millisecond
	h := newHostCache(cc, ttl, time.Second, false, func([]string) { t.Error("nothing may be retired") })
	ctx := t.Context()
	lookup := func(wantCalls int64) {
		t.Helper()
		addrs, err := h.LookupHost(ctx, "a.test")
		if err != nil || !slices.Equal(addrs, []string{"10.0.0.1"}) {
			t.Errorf("LookupHost = %v, %v; want the kept answer", addrs, err)
		}
		if n := f.calls.Load(); n != wantCalls {
			t.Errorf("%d lookups, want %d", n, wantCalls)
		}
	}
	lookup(1)
	f.mu.Lock()
	delete(f.answers, "a.test")
	f.mu.Unlock()
	time.Sleep(ttl + 10*time.Millisecond)
	lookup(2) // expired: asks, fails, keeps
	lookup(2) // kept as fresh
	h.markStale()
	lookup(3) // a dial failed: asks again
}
