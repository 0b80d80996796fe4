package pool

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// demotionCheckTTL is how long one check of an address answers for it: a client that loops on
// read-only errors costs the upstream at most one extra connection per address per interval.
const demotionCheckTTL = time.Second

// demotionCheckTimeout bounds a check when the pool has no ConnectTimeout.
const demotionCheckTimeout = 5 * time.Second

type demotionCheck struct {
	at      time.Time
	demoted bool
	done    chan struct{} // while a check is in progress: closed when it ends
}

// errOtherAddr refuses the dials of a demotion check to every address but the one checked.
var errOtherAddr = errors.New("not the address being checked")

// Demoted reports whether the server at addr (a Conn.Addr) no longer passes the pool's
// target_session_attrs check (ConnConfig.ValidateConnect) on a fresh connection: a primary
// turned standby, or fenced read-only server-wide. A read-only error on one connection proves
// nothing by itself: the client may have asked for a read-only transaction, set
// default_transaction_read_only for its session, or raised the code itself. False when the pool
// has no such check, the check could not be made (the connection's own failure will say more),
// or another caller is checking the address right now. Answers are remembered for a second per
// address, so a busy demoted server costs one extra connection per second at most.
func (p *Pool) Demoted(ctx context.Context, addr string) bool {
	cc := p.settings().ConnConfig
	if cc == nil || cc.ValidateConnect == nil {
		return false
	}
	now := time.Now()
	p.mu.Lock()
	c, ok := p.demotions[addr]
	if ok && c.done == nil && now.Sub(c.at) < demotionCheckTTL {
		p.mu.Unlock()
		return c.demoted
	}
	if ok && c.done != nil {
		// Another caller is checking: one check at a time per address, its answer for all.
		p.mu.Unlock()
		select {
		case <-c.done:
		case <-ctx.Done():
			return false
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		if c := p.demotions[addr]; c != nil { // forgotten if the map was reset meanwhile
			return c.demoted
		}
		return false
	}
	if p.demotions == nil || len(p.demotions) > 64 {
		p.demotions = make(map[string]*demotionCheck)
	}
	c = &demotionCheck{done: make(chan struct{})}
	p.demotions[addr] = c
	p.mu.Unlock()

	demoted, err := p.checkDemoted(ctx, addr)
	p.mu.Lock()
	// A failed check is remembered too: the connection's own failure will say more.
	p.demotions[addr] = &demotionCheck{at: time.Now(), demoted: err == nil && demoted}
	p.mu.Unlock()
	close(c.done)
	return err == nil && demoted
}

// checkDemoted opens a connection to addr alone, through the pool's configuration (so with
// the TLS settings of the host that resolves to it), and runs the pool's ValidateConnect on it.
func (p *Pool) checkDemoted(ctx context.Context, addr string) (bool, error) {
	cfg := p.settings()
	timeout := cfg.ConnectTimeout
	if timeout <= 0 {
		timeout = demotionCheckTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cc := cfg.ConnConfig.Copy()
	validate := cc.ValidateConnect
	cc.ValidateConnect = nil
	if p.hosts != nil {
		cc.LookupFunc = p.hosts.LookupHost
	}
	dial := p.dialFn
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	cc.DialFunc = func(ctx context.Context, network, a string) (net.Conn, error) {
		if normalAddr(a) != addr {
			return nil, errOtherAddr
		}
		return dial(ctx, network, a)
	}
	pc, err := pgconn.ConnectConfig(ctx, cc)
	if err != nil {
		return false, err
	}
	defer pc.Close(context.WithoutCancel(ctx))
	return validate(ctx, pc) != nil, nil
}
