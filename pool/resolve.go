package pool

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// defaultLookupTimeout is Config.LookupTimeout when it is 0: the system resolver's own default
// for one try (resolv.conf "timeout").
const defaultLookupTimeout = 5 * time.Second

// hostCache resolves the upstream's host names for pgconn (as its LookupFunc) and keeps each
// answer for up to maxTTL, so that most dials do not wait for DNS and so that the pool learns
// when an address leaves an answer: onGone is then called with the server addresses ("ip:port")
// no configured host resolves to any more, for the pool to retire its connections to them.
//
// A failed lookup keeps the last answer for another maxTTL (a DNS outage must not take the
// upstream away with it, nor make every dial wait for a lookup to time out), and lookups of one
// name are shared: while one is in flight, others wait for its answer.
type hostCache struct {
	lookup  pgconn.LookupFunc // the real resolver: ConnConfig's LookupFunc
	maxTTL  time.Duration
	timeout time.Duration
	shuffle bool // load_balance_hosts=random: a random order of each answer
	onGone  func(addrs []string)

	// ports are the ports each configured host name is dialled on; literal are the server
	// addresses of hosts given as IP addresses, which never leave.
	ports   map[string][]uint16
	literal []string

	mu    sync.Mutex
	hosts map[string]*hostEntry
}

// hostEntry is what hostCache knows about one host name. Guarded by hostCache.mu.
type hostEntry struct {
	addrs []string  // the last answer that succeeded, as the resolver returned it; nil = none yet
	at    time.Time // when addrs were looked up
	stale bool      // a dial failed since: look up again before the next use
	err   error     // the last lookup's error, for callers that waited for it and have no addrs

	// flight is closed when the lookup in progress ends; nil while none is.
	flight chan struct{}
}

// newHostCache returns a cache for the host names of cc, or nil when cc names none (only IP
// addresses and Unix socket directories).
func newHostCache(cc *pgconn.Config, maxTTL, timeout time.Duration, shuffle bool, onGone func([]string)) *hostCache {
	h := &hostCache{
		lookup:  cc.LookupFunc,
		maxTTL:  maxTTL,
		timeout: timeout,
		shuffle: shuffle,
		onGone:  onGone,
		ports:   map[string][]uint16{},
		hosts:   map[string]*hostEntry{},
	}
	if h.timeout <= 0 {
		h.timeout = defaultLookupTimeout
	}
	add := func(host string, port uint16) {
		switch {
		case isUnixSocket(host, port):
		case isIP(host):
			h.literal = append(h.literal, serverAddr(host, port))
		case !slices.Contains(h.ports[host], port):
			h.ports[host] = append(h.ports[host], port)
		}
	}
	add(cc.Host, cc.Port)
	for _, fb := range cc.Fallbacks {
		add(fb.Host, fb.Port)
	}
	if len(h.ports) == 0 || h.lookup == nil {
		return nil
	}
	return h
}

// LookupHost is the pool's pgconn.LookupFunc. It answers from the cache while the answer is
// younger than maxTTL and no dial failed since, and looks the name up again otherwise.
func (h *hostCache) LookupHost(ctx context.Context, host string) ([]string, error) {
	var addrs []string
	if _, ok := h.ports[host]; ok {
		var err error
		if addrs, err = h.resolve(ctx, host); err != nil {
			return nil, err
		}
	} else {
		// Not a configured name (pgconn only asks for those) or an IP address: pass it through.
		var err error
		if addrs, err = h.lookup(ctx, host); err != nil {
			return nil, err
		}
	}
	if h.shuffle && len(addrs) > 1 {
		addrs = slices.Clone(addrs)
		rand.Shuffle(len(addrs), func(i, j int) { addrs[i], addrs[j] = addrs[j], addrs[i] })
	}
	return addrs, nil
}

// resolve returns host's addresses: the cached answer while it is fresh, else a new one.
func (h *hostCache) resolve(ctx context.Context, host string) ([]string, error) {
	waited := false
	for {
		h.mu.Lock()
		e := h.hosts[host]
		if e == nil {
			e = &hostEntry{}
			h.hosts[host] = e
		}
		if e.addrs != nil && (waited || (!e.stale && time.Since(e.at) < h.maxTTL)) {
			addrs := e.addrs
			h.mu.Unlock()
			return addrs, nil
		}
		if flight := e.flight; flight != nil {
			h.mu.Unlock()
			select {
			case <-flight:
			case <-ctx.Done():
				return nil, fmt.Errorf("look up %s: %w", host, context.Cause(ctx))
			}
			h.mu.Lock()
			err, none := e.err, e.addrs == nil
			h.mu.Unlock()
			if err != nil && none {
				return nil, err
			}
			// Take the answer of the lookup waited for, even a kept one after a failure,
			// rather than start another.
			waited = true
			continue
		}
		flight := make(chan struct{})
		e.flight = flight
		h.mu.Unlock()

		addrs, err := h.lookupBounded(ctx, host)

		h.mu.Lock()
		e.flight = nil
		close(flight)
		if err != nil {
			switch {
			case ctx.Err() != nil:
				// Cut short by its caller leaving, the lookup says nothing of DNS: callers
				// that waited for it look up themselves.
				e.err = nil
			case e.addrs != nil:
				// A stale answer beats none. It is kept for another maxTTL, so that while DNS
				// is down dials do not each wait for a lookup to time out; a dial that fails
				// with it marks it stale again.
				e.err, e.at, e.stale = err, time.Now(), false
			default:
				e.err = err
			}
			addrs := e.addrs
			h.mu.Unlock()
			if addrs != nil {
				return addrs, nil
			}
			return nil, err
		}
		var gone []string
		if e.addrs != nil {
			before := h.serverAddrs(host, e.addrs)
			e.addrs = addrs
			gone = h.goneLocked(before)
		}
		e.addrs, e.at, e.stale, e.err = addrs, time.Now(), false, nil
		h.mu.Unlock()
		if len(gone) > 0 {
			h.onGone(gone)
		}
		return addrs, nil
	}
}

// lookupBounded asks the resolver, for at most timeout. An empty answer is an error: it would
// retire every connection, and a name that resolves to nothing is more likely a DNS hiccup than
// an upstream that is gone.
func (h *hostCache) lookupBounded(ctx context.Context, host string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	addrs, err := h.lookup(ctx, host)
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", host, err)
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("look up %s: %w", host, errNoAddresses)
	}
	return addrs, nil
}

var errNoAddresses = errors.New("no addresses")

// goneLocked returns the addresses of before that no configured host resolves to now. h.mu must
// be held.
func (h *hostCache) goneLocked(before []string) []string {
	live := map[string]bool{}
	for _, a := range h.literal {
		live[a] = true
	}
	for host, e := range h.hosts {
		for _, a := range h.serverAddrs(host, e.addrs) {
			live[a] = true
		}
	}
	var gone []string
	for _, a := range before {
		if !live[a] && !slices.Contains(gone, a) {
			gone = append(gone, a)
		}
	}
	return gone
}

// serverAddrs returns the server addresses ("ip:port", as Conn.Addr has them) that an answer
// for host leads to: each address on each port host is configured with, or on the port the
// answer gives (a LookupFunc may return "ip:port", which pgconn honours).
func (h *hostCache) serverAddrs(host string, addrs []string) []string {
	var out []string
	for _, a := range addrs {
		if ip, port, err := net.SplitHostPort(a); err == nil {
			if p, err := strconv.ParseUint(port, 10, 16); err == nil {
				out = append(out, serverAddr(ip, uint16(p)))
				continue
			}
		}
		for _, p := range h.ports[host] {
			out = append(out, serverAddr(a, p))
		}
	}
	return out
}

// markStale makes the next dial look every host name up again: a dial failed, and the answer
// may be why (a failover moved the name).
func (h *hostCache) markStale() {
	h.mu.Lock()
	for _, e := range h.hosts {
		e.stale = true
	}
	h.mu.Unlock()
}

// refresh looks up again every host name whose answer is older than maxTTL, so that connections
// to addresses that left DNS are retired even while no dial happens. Errors keep the old answer.
func (h *hostCache) refresh(ctx context.Context) {
	h.mu.Lock()
	hosts := make([]string, 0, len(h.hosts))
	for host := range h.hosts {
		hosts = append(hosts, host)
	}
	h.mu.Unlock()
	for _, host := range hosts {
		if ctx.Err() != nil {
			return
		}
		_, _ = h.resolve(ctx, host)
	}
}

// serverAddr formats a server address the way a TCP connection's RemoteAddr does, so that the
// two compare equal: IPv4-mapped IPv6 addresses unmapped, IPv6 in brackets.
func serverAddr(ip string, port uint16) string {
	if a, err := netip.ParseAddr(ip); err == nil {
		return netip.AddrPortFrom(a.Unmap(), port).String()
	}
	return net.JoinHostPort(ip, strconv.Itoa(int(port)))
}

// normalAddr returns addr ("ip:port") in serverAddr's form, or unchanged if it is not one.
func normalAddr(addr string) string {
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
	}
	return addr
}

func isIP(host string) bool {
	_, err := netip.ParseAddr(host)
	return err == nil
}

// isUnixSocket reports whether pgconn takes host for a Unix socket directory, which it never
// resolves.
func isUnixSocket(host string, port uint16) bool {
	network, _ := pgconn.NetworkAddress(host, port)
	return network == "unix"
}

// shuffleHosts puts cc's hosts (the primary and the fallbacks) in a random order for
// load_balance_hosts=random. The entries pgconn made for one host (with and without TLS, for
// sslmode=prefer or allow) stay together and in their order; every host is still tried, each
// checked by ValidateConnect, so target_session_attrs means what it did.
func shuffleHosts(cc *pgconn.Config) {
	all := make([]*pgconn.FallbackConfig, 0, 1+len(cc.Fallbacks))
	all = append(all, &pgconn.FallbackConfig{Host: cc.Host, Port: cc.Port, TLSConfig: cc.TLSConfig})
	all = append(all, cc.Fallbacks...)
	var groups [][]*pgconn.FallbackConfig
	for _, fb := range all {
		if n := len(groups); n > 0 && groups[n-1][0].Host == fb.Host && groups[n-1][0].Port == fb.Port {
			groups[n-1] = append(groups[n-1], fb)
			continue
		}
		groups = append(groups, []*pgconn.FallbackConfig{fb})
	}
	if len(groups) < 2 {
		return
	}
	rand.Shuffle(len(groups), func(i, j int) { groups[i], groups[j] = groups[j], groups[i] })
	all = slices.Concat(groups...)
	cc.Host, cc.Port, cc.TLSConfig = all[0].Host, all[0].Port, all[0].TLSConfig
	cc.Fallbacks = all[1:]
}
