package pool

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/rawio"
)

// ErrClosed is returned by Acquire once the pool has been closed.
var ErrClosed = errors.New("pool closed")

// Config describes one pool: the upstream it dials and how many connections it keeps.
type Config struct {
	// Key identifies the pool (upstream, database, user); it holds no secret.
	Key string
	// Database and User label the pool in metrics and admin output.
	Database, User string
	// ConnConfig is the parsed upstream connection config (from pgconn.ParseConfig). The pool
	// dials with copies of it.
	ConnConfig *pgconn.Config
	// Size caps the number of server connections, dialing ones included. Must be >= 1.
	Size int
	// MinSize is how many connections the pool keeps open even when idle.
	MinSize int
	// IdleTimeout closes connections idle for longer than this (down to MinSize); 0 = never.
	IdleTimeout time.Duration
	// Lifetime closes connections older than this at their next release; 0 = unlimited. Each
	// connection gets up to 10 % less so that a pool dialled at once does not expire at once.
	Lifetime time.Duration
	// ConnectTimeout bounds one dial including authentication; 0 = only the caller's context.
	ConnectTimeout time.Duration
}

// Stat is a snapshot of a pool's state and counters.
type Stat struct {
	Key            string
	Database, User string
	Size           int
	Open           int // connections open or being dialled
	Idle           int
	InUse          int
	Waiting        int // callers blocked in Acquire

	Acquires     uint64
	Waits        uint64        // acquires that had to wait
	WaitDuration time.Duration // total time spent waiting
	Dials        uint64
	DialErrors   uint64
	Closes       uint64
}

// Pool keeps server connections to one upstream database as one user. Acquire hands out an idle
// connection, dials a new one while under Size, or queues the caller in FIFO order.
type Pool struct {
	cfg Config

	mu      sync.Mutex
	idle    []*Conn // most recently used last: reuse keeps warm connections busy
	open    int
	dialing int // of open, how many are being dialled
	waiters []*waiter
	params  map[string]string
	closed  bool

	// ctx is cancelled by Close; it bounds the pool's own dials.
	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup

	acquires, waits, waitNanos, dials, dialErrors, closes atomic.Uint64
}

type waiter struct {
	ch chan grant
}

// grant is what a waiter receives: a connection, the right to dial one, or an error.
type grant struct {
	conn *Conn
	dial bool
	err  error
}

// New creates a pool and starts its maintenance goroutine, which Close stops.
func New(cfg Config) *Pool {
	if cfg.Size < 1 {
		cfg.Size = 1
	}
	p := &Pool{cfg: cfg}
	p.ctx, p.stop = context.WithCancel(context.Background())
	p.wg.Add(1)
	go p.maintain()
	return p
}

// Key returns the pool's identity.
func (p *Pool) Key() string { return p.cfg.Key }

// Acquire returns a connection for the caller's exclusive use until Release or Destroy. It
// waits, in FIFO order with other callers, until ctx is done.
func (p *Pool) Acquire(ctx context.Context) (*Conn, error) {
	c, err := p.acquire(ctx)
	if err == nil {
		p.acquires.Add(1)
	}
	return c, err
}

func (p *Pool) acquire(ctx context.Context) (*Conn, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	for len(p.idle) > 0 {
		c := p.idle[len(p.idle)-1]
		p.idle[len(p.idle)-1] = nil
		p.idle = p.idle[:len(p.idle)-1]
		if !c.expired(time.Now()) {
			c.held = true
			p.mu.Unlock()
			return c, nil
		}
		p.open--
		p.mu.Unlock()
		p.closeConn(c)
		p.mu.Lock()
	}
	if p.open < p.cfg.Size {
		p.open++
		p.mu.Unlock()
		return p.dialSlot(ctx)
	}
	w := &waiter{ch: make(chan grant, 1)}
	p.waiters = append(p.waiters, w)
	p.mu.Unlock()

	p.waits.Add(1)
	start := time.Now()
	defer func() { p.waitNanos.Add(uint64(time.Since(start))) }()
	select {
	case g := <-w.ch:
		switch {
		case g.err != nil:
			return nil, g.err
		case g.dial:
			return p.dialSlot(ctx)
		}
		return g.conn, nil
	case <-ctx.Done():
		p.mu.Lock()
		removed := p.removeWaiterLocked(w)
		p.mu.Unlock()
		if !removed {
			// Granted while we gave up: pass the grant on rather than lose it.
			switch g := <-w.ch; {
			case g.dial:
				p.slotFreed()
			case g.conn != nil:
				p.Release(g.conn)
			}
		}
		return nil, fmt.Errorf("wait for server connection: %w", context.Cause(ctx))
	}
}

func (p *Pool) removeWaiterLocked(w *waiter) bool {
	for i, x := range p.waiters {
		if x == w {
			copy(p.waiters[i:], p.waiters[i+1:])
			p.waiters[len(p.waiters)-1] = nil
			p.waiters = p.waiters[:len(p.waiters)-1]
			return true
		}
	}
	return false
}

// dialSlot dials a connection into a slot already counted in p.open, freeing the slot on failure.
func (p *Pool) dialSlot(ctx context.Context) (*Conn, error) {
	p.mu.Lock()
	p.dialing++
	p.mu.Unlock()
	c, err := p.dial(ctx)
	p.mu.Lock()
	p.dialing--
	closed := p.closed
	p.mu.Unlock()
	if err == nil && closed {
		p.closeConn(c)
		err = ErrClosed
	}
	if err != nil {
		p.slotFreed()
		return nil, err
	}
	return c, nil
}

func (p *Pool) dial(ctx context.Context) (*Conn, error) {
	p.dials.Add(1)
	if p.cfg.ConnectTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.cfg.ConnectTimeout)
		defer cancel()
	}
	pc, err := pgconn.ConnectConfig(ctx, p.cfg.ConnConfig.Copy())
	if err != nil {
		// A caller giving up is not the upstream failing.
		if ctx.Err() == nil || !errors.Is(err, ctx.Err()) {
			p.dialErrors.Add(1)
		}
		return nil, fmt.Errorf("connect to upstream: %w", err)
	}
	// pgconn may still have a background reader blocked on the socket (started when a write
	// was slow); it would steal the first reply relayed later. SyncConn stops it.
	if err := pc.SyncConn(ctx); err != nil {
		pc.Close(context.Background())
		p.dialErrors.Add(1)
		return nil, fmt.Errorf("sync upstream connection: %w", err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		pc.Close(context.Background())
		p.dialErrors.Add(1)
		return nil, fmt.Errorf("hijack upstream connection: %w", err)
	}
	now := time.Now()
	c := &Conn{
		Conn:      hc.Conn,
		PID:       hc.PID,
		SecretKey: hc.SecretKey,
		Params:    maps.Clone(hc.ParameterStatuses),
		hijacked:  hc,
		raw:       rawio.New(hc.Conn),
		pool:      p,
		created:   now,
		lastUsed:  now,
		held:      true,
	}
	if p.cfg.Lifetime > 0 {
		c.lifetime = p.cfg.Lifetime - time.Duration(rand.Int64N(int64(p.cfg.Lifetime)/10+1))
	}
	p.mu.Lock()
	if p.params == nil {
		p.params = maps.Clone(hc.ParameterStatuses)
	}
	p.mu.Unlock()
	return c, nil
}

func (c *Conn) expired(now time.Time) bool {
	return c.lifetime > 0 && now.Sub(c.created) > c.lifetime
}

// Release returns a clean, idle connection (ReadyForQuery 'I', nothing in flight) to the pool.
// A connection past its lifetime is closed instead.
func (p *Pool) Release(c *Conn) {
	now := time.Now()
	c.lastUsed = now
	// A holder may have left a deadline set (the proxy wakes its reader with one).
	_ = c.Conn.SetDeadline(time.Time{})
	p.mu.Lock()
	if !c.held {
		p.mu.Unlock()
		panic("pool: Release of a connection that is not handed out")
	}
	c.held = false
	if p.closed || c.expired(now) {
		p.open--
		p.mu.Unlock()
		p.closeConn(c)
		p.slotFreedNoDecrement()
		return
	}
	if len(p.waiters) > 0 {
		w := p.waiters[0]
		p.waiters = p.waiters[1:]
		c.held = true
		p.mu.Unlock()
		w.ch <- grant{conn: c}
		return
	}
	p.idle = append(p.idle, c)
	p.mu.Unlock()
}

// Destroy closes a connection that cannot be reused (broken, or left in an unknown state).
func (p *Pool) Destroy(c *Conn) {
	p.mu.Lock()
	if !c.held {
		p.mu.Unlock()
		panic("pool: Destroy of a connection that is not handed out")
	}
	c.held = false
	p.mu.Unlock()
	p.closeConn(c)
	p.slotFreed()
}

func (p *Pool) closeConn(c *Conn) {
	p.closes.Add(1)
	// Say goodbye so that the server does not log an unexpected EOF; never wait for it.
	_ = c.Conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = c.Conn.Write(terminateMsg)
	_ = c.Conn.Close()
}

// terminateMsg is the protocol's Terminate message.
var terminateMsg = []byte{'X', 0, 0, 0, 4}

// slotFreed gives a freed slot to the first waiter, who then dials.
func (p *Pool) slotFreed() {
	p.mu.Lock()
	p.open--
	p.mu.Unlock()
	p.slotFreedNoDecrement()
}

// slotFreedNoDecrement hands a free slot, already subtracted from p.open, to the first waiter.
func (p *Pool) slotFreedNoDecrement() {
	p.mu.Lock()
	if p.closed || len(p.waiters) == 0 || p.open >= p.cfg.Size {
		p.mu.Unlock()
		return
	}
	w := p.waiters[0]
	p.waiters = p.waiters[1:]
	p.open++
	p.mu.Unlock()
	w.ch <- grant{dial: true}
}

// ServerParams returns the ParameterStatus values of this upstream, dialing a connection if the
// pool has not connected yet. Errors are the upstream's own (e.g. 3D000, 28P01).
func (p *Pool) ServerParams(ctx context.Context) (map[string]string, error) {
	p.mu.Lock()
	params := p.params
	p.mu.Unlock()
	if params != nil {
		return params, nil
	}
	c, err := p.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	p.Release(c)
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.params, nil
}

// Stat returns a snapshot of the pool.
func (p *Pool) Stat() Stat {
	p.mu.Lock()
	s := Stat{
		Key:      p.cfg.Key,
		Database: p.cfg.Database,
		User:     p.cfg.User,
		Size:     p.cfg.Size,
		Open:     p.open,
		Idle:     len(p.idle),
		InUse:    p.open - len(p.idle) - p.dialing,
		Waiting:  len(p.waiters),
	}
	p.mu.Unlock()
	s.Acquires = p.acquires.Load()
	s.Waits = p.waits.Load()
	s.WaitDuration = time.Duration(p.waitNanos.Load())
	s.Dials = p.dials.Load()
	s.DialErrors = p.dialErrors.Load()
	s.Closes = p.closes.Load()
	return s
}

// Close closes idle connections, fails waiters and new acquires, and stops the maintenance
// goroutine. Connections still in use are closed when they are released.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.open -= len(idle)
	waiters := p.waiters
	p.waiters = nil
	p.mu.Unlock()
	p.stop()
	for _, c := range idle {
		p.closeConn(c)
	}
	for _, w := range waiters {
		w.ch <- grant{err: ErrClosed}
	}
	p.wg.Wait()
}

// maintain closes idle connections past IdleTimeout or Lifetime and keeps MinSize open.
func (p *Pool) maintain() {
	defer p.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
		p.evictIdle(time.Now())
		p.fillMin()
	}
}

func (p *Pool) evictIdle(now time.Time) {
	var victims []*Conn
	p.mu.Lock()
	kept := p.idle[:0]
	for _, c := range p.idle {
		idleTooLong := p.cfg.IdleTimeout > 0 && now.Sub(c.lastUsed) > p.cfg.IdleTimeout && p.open-len(victims) > p.cfg.MinSize
		if idleTooLong || c.expired(now) {
			victims = append(victims, c)
			continue
		}
		kept = append(kept, c)
	}
	for i := len(kept); i < len(p.idle); i++ {
		p.idle[i] = nil
	}
	p.idle = kept
	p.open -= len(victims)
	p.mu.Unlock()
	for _, c := range victims {
		p.closeConn(c)
	}
}

func (p *Pool) fillMin() {
	for {
		p.mu.Lock()
		if p.closed || p.open >= p.cfg.MinSize || p.open >= p.cfg.Size {
			p.mu.Unlock()
			return
		}
		p.open++
		p.mu.Unlock()
		c, err := p.dialSlot(p.ctx)
		if err != nil {
			return
		}
		p.Release(c)
	}
}
