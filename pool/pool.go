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
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/internal/rawio"
	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/pgsidecar/pgsidecar/internal/tcpopt"
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
	// MinSize is how many connections the pool keeps open even when idle. The maintenance
	// goroutine opens missing ones one at a time, and not while the upstream is failing faster
	// than Retry allows.
	MinSize int
	// IdleTimeout closes connections idle for longer than this (down to MinSize); 0 = never.
	IdleTimeout time.Duration
	// Lifetime closes connections older than this at their next release; 0 = unlimited. Each
	// connection gets up to 10 % less so that a pool dialled at once does not expire at once.
	Lifetime time.Duration
	// ConnectTimeout bounds one dial attempt including authentication; 0 = only the caller's
	// context.
	ConnectTimeout time.Duration
	// Retry paces dial attempts. A dial that fails with a retryable error (retry.Classify: the
	// upstream refusing, resetting, starting up or shutting down, too many connections) is tried
	// again after a backoff delay until the acquirer's context ends or Retry.MaxAttempts attempts
	// were made; a non-retryable error (28P01, 3D000, ...) is returned at once. While dials fail,
	// the delay is the pool's, not each acquirer's: the pool's dials take turns. Zero fields mean
	// Initial 100ms, Max 2s, attempts limited only by the acquirer's context.
	Retry retry.Backoff
	// CheckDelay is server_check_delay: an idle connection unused for at least this long is
	// checked before it is handed out, with a non-blocking peek at its socket (no round trip). An
	// idle server has nothing to say, so anything readable (typically the FATAL a server sends
	// before it exits), end of file or a socket error means the connection is dead; it is closed
	// and the acquirer gets another one. 0 = check on every acquire of an idle connection;
	// negative = never check.
	CheckDelay time.Duration
	// MaxConcurrentDials caps the dials in flight, waits between attempts included, so that a
	// burst of acquirers or an upstream coming back is not stampeded. Acquirers beyond it wait,
	// in FIFO order, for a released connection or a free dial. 0 = 2.
	MaxConcurrentDials int
	// TCP, when not nil, is applied to every upstream TCP socket as soon as ConnConfig's
	// DialFunc returns it (keepalive, TCP_USER_TIMEOUT), before TLS and login. nil leaves the
	// sockets as DialFunc makes them (pgconn's default: Go's keepalive, probing every 15 s).
	TCP *tcpopt.Options
	// LoadBalanceHosts is libpq's load_balance_hosts=random: every dial tries ConnConfig's hosts,
	// and the addresses each host name resolves to, in a new random order, so that connections
	// spread over equivalent hosts. Every host is still tried until one accepts, and
	// target_session_attrs still decides which ones do. false tries them in the order listed.
	LoadBalanceHosts bool
	// DNSMaxTTL is how long the addresses of one of ConnConfig's host names are used before
	// they are looked up again (with ConnConfig.LookupFunc, pgconn's default being the system
	// resolver). Lookups happen when a connection is dialled and the answer is older than this
	// or a dial failed since, and in the maintenance goroutine while the pool has connections,
	// never on Acquire. When an address leaves the answer, the pool's connections to it are
	// retired (see RetireAddr). A failed lookup keeps the last answer. 0 = look up on every dial
	// and every maintenance tick (once a second). A custom LookupFunc must return when its
	// context ends: Close waits for a lookup in progress.
	DNSMaxTTL time.Duration
	// LookupTimeout bounds one lookup; 0 = 5s. A dial's lookups are also bounded by its context.
	LookupTimeout time.Duration
	// WaitObserver, when set, gets the seconds each acquire that had to queue waited, and
	// DialObserver the seconds each successful dial (connect and login) took: the proxy's
	// histograms.
	WaitObserver, DialObserver prometheus.Observer
	// Keep marks the pool of a configured route: a Set keeps it until Close, and it does not
	// count toward SetOptions.MaxPools.
	Keep bool
}

// defaultMaxConcurrentDials is MaxConcurrentDials when the Config leaves it 0.
const defaultMaxConcurrentDials = 2

// Stat is a snapshot of a pool's state and counters.
type Stat struct {
	Key            string
	Database, User string
	Size           int
	Open           int // connections open or being dialled
	Idle           int
	InUse          int
	Dialing        int // of Open, dials in flight (backoff waits included); at most MaxConcurrentDials
	Waiting        int // callers blocked in Acquire

	Acquires      uint64
	Waits         uint64        // acquires that had to wait
	WaitDuration  time.Duration // total time spent waiting
	Dials         uint64        // dial attempts, retries included
	DialErrors    uint64        // dial attempts that failed (not counting callers giving up)
	DialRetries   uint64        // dial attempts that retried a failed one
	Closes        uint64
	CheckFailures uint64 // idle connections found dead by the CheckDelay check
	IdleDropped   uint64 // idle connections closed by DropIdle
	Retired       uint64 // connections retired: by RetireAddr or Retire, or their address left DNS
	// ClosesBy counts Closes by reason, indexed by CloseReason.
	ClosesBy [NumCloseReasons]uint64

	MinSize int
	Clients int           // users (Set.Join) of the pool: its clients
	Used    int           // of Idle, connections due for the CheckDelay check before reuse
	MaxWait time.Duration // how long the longest waiting caller has waited

	// Usage is what clients did with the pool's connections (AddUsage).
	Usage
}

// Usage counts what clients did on a pool's connections, as PgBouncer's SHOW STATS does. The
// proxy adds a session's counts when one of its transactions ends, so that the sessions share
// no counter while they run.
type Usage struct {
	Transactions, Queries uint64
	Received, Sent        uint64 // bytes from clients, bytes to clients
	XactTime, QueryTime   time.Duration
	// StatementEvictions counts shared prepared statements closed on servers to make room.
	StatementEvictions uint64
}

// CloseReason says why a server connection was closed.
type CloseReason int

// Reasons for closing a server connection.
const (
	CloseError           CloseReason = iota // its holder found it broken or in an unknown state
	CloseIdleTimeout                        // idle past IdleTimeout
	CloseLifetime                           // older than Lifetime
	CloseCheckFailed                        // found dead by the CheckDelay check
	CloseRetired                            // retired (RetireAddr, Retire, DNS, a dropped pool)
	CloseUpstreamRestart                    // DropIdle after an upstream restart
	CloseResized                            // beyond a smaller Size
	ClosePoolClosed                         // the pool was closed
	NumCloseReasons
)

// closeReasonNames are the metrics' reason labels.
var closeReasonNames = [NumCloseReasons]string{"error", "idle_timeout", "lifetime", "check_failed", "retired", "upstream_restart", "resized", "pool_closed"}

// String returns the reason's label.
func (r CloseReason) String() string { return closeReasonNames[r] }

// Pool keeps server connections to one upstream database as one user. Acquire hands out an idle
// connection, dials a new one while under Size, or queues the caller in FIFO order.
type Pool struct {
	cfg      Config
	maxDials int

	// hosts resolves ConnConfig's host names; nil when it names none. dialFn is ConnConfig's
	// DialFunc, applying TCP.
	hosts  *hostCache
	dialFn pgconn.DialFunc

	mu      sync.Mutex
	idle    []*Conn            // most recently used last: reuse keeps warm connections busy
	all     map[*Conn]struct{} // every connection dialled and not closed yet, idle or handed out
	open    int
	dialing int // of open, slots whose dialer holds one of the maxDials dial tokens
	waiters []*waiter
	params  map[string]string
	closed  bool

	// retiredAddrs holds the addresses RetireAddr retired while dials were in flight, each with
	// the retireSeq it got, so that a dial that started before and connects to one of them
	// retires its connection too. Emptied whenever no dial is in flight.
	retiredAddrs map[string]uint64
	retireSeq    uint64

	// The upstream's health as the last dial saw it.
	lastErr  error     // the last dial's error; nil after a success
	failures int       // retryable dial failures in a row
	nextDial time.Time // while failures > 0, no dial attempt starts before this
	// refusals counts the non-retryable dial failures in a row (a wrong password, no such
	// database); while there are any, fillMin waits until nextFill, backing off, instead of
	// dialing at every tick an upstream that will refuse again.
	refusals int
	nextFill time.Time
	// recovered is closed when a dial succeeds after failures, waking dialers waiting for their
	// turn; nil while no dial is failing.
	recovered chan struct{}

	// ctx is cancelled by Close; it bounds the pool's own dials.
	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup

	// freeWaiters keeps waiters, channel included, for reuse: with more clients than
	// connections, every acquire waits.
	freeWaiters sync.Pool
	// expiry fires at expiryAt, the earliest waiter deadline known when it was armed, and takes
	// every waiter past its deadline out of the queue: one timer for the pool instead of one per
	// waiting client. Guarded by mu.
	expiry   *time.Timer
	expiryAt time.Time

	// demotions remembers the last Demoted check of each address; guarded by mu.
	demotions map[string]*demotionCheck

	// users counts the Set.Join calls not yet matched by Leave; keep is Config.Keep, as
	// Set.Reconfigure last set it; dropped is set by Set.Drop. Guarded by the Set's mu.
	users   int
	keep    bool
	dropped bool

	acquires, waits, waitNanos, dials, dialErrors, closes atomic.Uint64
	dialRetries, checkFailures, idleDropped, retired      atomic.Uint64
	closesBy                                              [NumCloseReasons]atomic.Uint64
	usage                                                 struct {
		transactions, queries, received, sent, xactNanos, queryNanos, evictions atomic.Uint64
	}
}

type waiter struct {
	ch chan grant // buffered: a grant never blocks the granter
	// deadline is when an AcquireWithin waiter gives up (zero: only its context); the pool's
	// expiry timer takes it out of the queue then.
	deadline time.Time
	// start is when it began to wait.
	start time.Time
}

// grant is what a waiter receives: a connection, the right to dial one (a slot and a dial token
// already counted in open and dialing), the news that its deadline passed, or an error.
type grant struct {
	conn    *Conn
	dial    bool
	expired bool
	err     error
}

// New creates a pool and starts its maintenance goroutine, which Close stops.
func New(cfg Config) *Pool {
	if cfg.Size < 1 {
		cfg.Size = 1
	}
	p := &Pool{cfg: cfg, maxDials: cfg.MaxConcurrentDials, all: map[*Conn]struct{}{}, retiredAddrs: map[string]uint64{}}
	if p.maxDials < 1 {
		p.maxDials = defaultMaxConcurrentDials
	}
	if cc := cfg.ConnConfig; cc != nil {
		p.hosts = newHostCache(cc, cfg.DNSMaxTTL, cfg.LookupTimeout, cfg.LoadBalanceHosts, p.retireGone)
		p.dialFn = cc.DialFunc
		if cfg.TCP != nil && cc.DialFunc != nil {
			p.dialFn = withTCPOptions(cc.DialFunc, *cfg.TCP)
		}
	}
	p.ctx, p.stop = context.WithCancel(context.Background())
	p.wg.Add(1)
	go p.maintain()
	return p
}

// settings returns a copy of the pool's configuration, which Reconfigure may change.
func (p *Pool) settings() Config {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cfg
}

// Reconfigure applies cfg's tunable settings to the pool: ConnConfig (for new connections: a
// changed password, say), Size, MinSize, IdleTimeout, Lifetime, ConnectTimeout, Retry and
// CheckDelay. Its identity (Key, Database, User) and its dialing setup (TCP,
// LoadBalanceHosts, DNSMaxTTL, LookupTimeout, MaxConcurrentDials) stay as created; Keep is the
// Set's (Set.Reconfigure). A larger Size lets waiters dial at once; a smaller one closes idle
// connections beyond it now and busy ones as they are released. Open connections are kept.
func (p *Pool) Reconfigure(cfg Config) {
	if cfg.Size < 1 {
		cfg.Size = 1
	}
	p.mu.Lock()
	p.cfg.ConnConfig = cfg.ConnConfig
	p.cfg.Size, p.cfg.MinSize = cfg.Size, cfg.MinSize
	p.cfg.IdleTimeout, p.cfg.Lifetime, p.cfg.ConnectTimeout = cfg.IdleTimeout, cfg.Lifetime, cfg.ConnectTimeout
	p.cfg.Retry, p.cfg.CheckDelay = cfg.Retry, cfg.CheckDelay
	var victims []*Conn
	for p.open > p.cfg.Size && len(p.idle) > 0 {
		victims = append(victims, p.idle[0])
		p.idle[0] = nil
		p.idle = p.idle[1:]
		p.open--
	}
	p.dispatchLocked()
	p.mu.Unlock()
	for _, c := range victims {
		p.closeConn(c, CloseResized)
	}
}

// stopRefill makes MinSize 0, so that the maintenance goroutine opens no more connections.
func (p *Pool) stopRefill() {
	p.mu.Lock()
	p.cfg.MinSize = 0
	p.mu.Unlock()
}

// Key returns the pool's identity.
func (p *Pool) Key() string { return p.cfg.Key }

// Acquire returns a connection for the caller's exclusive use until Release or Destroy. It
// waits, in FIFO order with other callers, until ctx is done; while the upstream is down or
// refusing, that includes dialing again and again (see Config.Retry). An error after ctx ends
// wraps both ctx's cause and, if dials were failing, the last dial error.
func (p *Pool) Acquire(ctx context.Context) (*Conn, error) {
	c, err := p.acquire(ctx, 0)
	if err == nil {
		p.acquires.Add(1)
	}
	return c, err
}

// ErrWaitTimeout is wrapped by AcquireWithin's error when its wait bound passed.
var ErrWaitTimeout = errors.New("wait bound passed")

// AcquireWithin is Acquire that also gives up once wait has passed (wait <= 0: no bound but
// ctx), with an error wrapping ErrWaitTimeout. It is Acquire with a context.WithTimeout, but
// cheaper on the path every client over the pool size takes: a waiter gets a timer, and only a
// dial gets a derived context.
func (p *Pool) AcquireWithin(ctx context.Context, wait time.Duration) (*Conn, error) {
	c, err := p.acquire(ctx, wait)
	if err == nil {
		p.acquires.Add(1)
	}
	return c, err
}

// dialWithin is dialSlot bounded by deadline too (zero: ctx only).
func (p *Pool) dialWithin(ctx context.Context, deadline time.Time) (*Conn, error) {
	if deadline.IsZero() {
		return p.dialSlot(ctx)
	}
	dctx, cancel := context.WithDeadlineCause(ctx, deadline, ErrWaitTimeout)
	defer cancel()
	c, err := p.dialSlot(dctx)
	// pgconn reports a connect attempt cut short as context.DeadlineExceeded, not the cause.
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(dctx), ErrWaitTimeout) && !errors.Is(err, ErrWaitTimeout) {
		err = fmt.Errorf("%w (gave up: %w)", err, ErrWaitTimeout)
	}
	return c, err
}

// takeIdleLocked pops a usable idle connection, checking it first when it has been idle for
// longer than CheckDelay, or returns nil. mu must be held; it is released and taken again
// while a connection is checked or closed.
func (p *Pool) takeIdleLocked() *Conn {
	for len(p.idle) > 0 && !p.closed {
		c := p.idle[len(p.idle)-1]
		p.idle[len(p.idle)-1] = nil
		p.idle = p.idle[:len(p.idle)-1]
		now := time.Now()
		if c.expired(now) {
			p.open--
			p.dispatchLocked()
			p.mu.Unlock()
			p.closeConn(c, CloseLifetime)
			p.mu.Lock()
			continue
		}
		c.held = true
		if !p.needsCheck(c, now) {
			return c
		}
		p.mu.Unlock()
		alive := c.alive()
		p.mu.Lock()
		if alive && !c.retired {
			return c
		}
		reason := CloseRetired
		if !alive {
			p.checkFailures.Add(1)
			reason = CloseCheckFailed
		}
		c.held = false
		p.open--
		p.dispatchLocked()
		p.mu.Unlock()
		p.closeConn(c, reason)
		p.mu.Lock()
	}
	return nil
}

// TryAcquire returns an idle connection when one is ready and no caller is waiting, without
// waiting or dialling: the common case costs no context or timer.
func (p *Pool) TryAcquire() *Conn {
	p.mu.Lock()
	var c *Conn
	if len(p.waiters) == 0 {
		c = p.takeIdleLocked()
	}
	p.mu.Unlock()
	if c != nil {
		p.acquires.Add(1)
	}
	return c
}

func (p *Pool) acquire(ctx context.Context, wait time.Duration) (*Conn, error) {
	var deadline time.Time
	if wait > 0 {
		deadline = time.Now().Add(wait)
	}
	p.mu.Lock()
	if c := p.takeIdleLocked(); c != nil {
		p.mu.Unlock()
		return c, nil
	}
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	// Callers already waiting come first: a new one dials only if none waits.
	if len(p.waiters) == 0 && p.canDialLocked() {
		p.open++
		p.dialing++
		p.mu.Unlock()
		return p.dialWithin(ctx, deadline)
	}
	w, _ := p.freeWaiters.Get().(*waiter)
	if w == nil {
		w = &waiter{ch: make(chan grant, 1)}
	}
	w.deadline = deadline
	start := time.Now()
	w.start = start
	p.waiters = append(p.waiters, w)
	if !deadline.IsZero() {
		p.armExpiryLocked(deadline)
	}
	p.mu.Unlock()

	p.waits.Add(1)
	defer func() {
		waited := time.Since(start)
		p.waitNanos.Add(uint64(waited))
		if o := p.cfg.WaitObserver; o != nil {
			o.Observe(waited.Seconds())
		}
	}()
	var cause error
	select {
	case g := <-w.ch:
		// The queue no longer holds w and nothing else will be sent to it.
		p.freeWaiters.Put(w)
		switch {
		case g.err != nil:
			return nil, g.err
		case g.dial:
			return p.dialWithin(ctx, deadline)
		case g.expired:
			p.mu.Lock()
			lastErr := p.lastErr
			p.mu.Unlock()
			if lastErr != nil {
				return nil, fmt.Errorf("wait for server connection: %w (last dial: %w)", ErrWaitTimeout, lastErr)
			}
			return nil, fmt.Errorf("wait for server connection: %w", ErrWaitTimeout)
		}
		return g.conn, nil
	case <-ctx.Done():
		cause = context.Cause(ctx)
	}
	p.mu.Lock()
	removed := p.removeWaiterLocked(w)
	lastErr := p.lastErr
	p.mu.Unlock()
	if !removed {
		// Granted while we gave up: pass the grant on rather than lose it.
		switch g := <-w.ch; {
		case g.dial:
			p.mu.Lock()
			p.open--
			p.dialDoneLocked()
			p.dispatchLocked()
			p.mu.Unlock()
		case g.conn != nil:
			p.Release(g.conn)
		}
	}
	p.freeWaiters.Put(w) // out of the queue, its channel drained
	if lastErr != nil {
		return nil, fmt.Errorf("wait for server connection: %w (last dial: %w)", cause, lastErr)
	}
	return nil, fmt.Errorf("wait for server connection: %w", cause)
}

// needsCheck reports whether an idle connection must pass the liveness check before reuse.
func (p *Pool) needsCheck(c *Conn, now time.Time) bool {
	return p.cfg.CheckDelay >= 0 && now.Sub(c.lastUsed) >= p.cfg.CheckDelay
}

// canDialLocked reports whether a slot and a dial token are free.
func (p *Pool) canDialLocked() bool {
	return p.open < p.cfg.Size && p.dialing < p.maxDials
}

// dialDoneLocked gives a dial token back. mu must be held.
func (p *Pool) dialDoneLocked() {
	p.dialing--
	if p.dialing == 0 && len(p.retiredAddrs) > 0 {
		clear(p.retiredAddrs) // no dial that started before a retirement is left
	}
}

// dispatchLocked gives free slots and dial tokens to waiters, first come first served, as rights
// to dial. It never blocks: a waiter's channel holds one grant and it gets at most one.
func (p *Pool) dispatchLocked() {
	for len(p.waiters) > 0 && !p.closed && p.canDialLocked() {
		w := p.waiters[0]
		p.waiters[0] = nil
		p.waiters = p.waiters[1:]
		p.open++
		p.dialing++
		w.ch <- grant{dial: true}
	}
}

// armExpiryLocked makes sure the expiry timer fires no later than deadline.
func (p *Pool) armExpiryLocked(deadline time.Time) {
	if !p.expiryAt.IsZero() && !deadline.Before(p.expiryAt) {
		return
	}
	p.expiryAt = deadline
	if p.expiry == nil {
		p.expiry = time.AfterFunc(time.Until(deadline), p.expireWaiters)
		return
	}
	p.expiry.Reset(time.Until(deadline))
}

// expireWaiters tells every waiter whose deadline has passed, taking it out of the queue, and
// arms the timer for the next deadline.
func (p *Pool) expireWaiters() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.expiryAt = time.Time{}
	now := time.Now()
	var next time.Time
	kept := p.waiters[:0]
	for _, w := range p.waiters {
		switch {
		case w.deadline.IsZero():
		case !w.deadline.After(now):
			w.ch <- grant{expired: true}
			continue
		case next.IsZero() || w.deadline.Before(next):
			next = w.deadline
		}
		kept = append(kept, w)
	}
	clear(p.waiters[len(kept):])
	p.waiters = kept
	if !next.IsZero() && !p.closed {
		p.armExpiryLocked(next)
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

// dialSlot dials a connection into a slot and dial token already counted in p.open and
// p.dialing, retrying as Config.Retry says. It gives the token back, and the slot on failure.
func (p *Pool) dialSlot(ctx context.Context) (*Conn, error) {
	c, err := p.dialRetrying(ctx)
	var orphan *Conn
	p.mu.Lock()
	p.dialDoneLocked()
	if err == nil && p.closed {
		orphan, c, err = c, nil, ErrClosed
	}
	if err != nil {
		p.open--
	}
	p.dispatchLocked()
	p.mu.Unlock()
	if orphan != nil {
		p.closeConn(orphan, ClosePoolClosed)
	}
	return c, err
}

// dialRetrying dials until a dial succeeds, fails with a non-retryable error, ctx ends or
// Retry.MaxAttempts attempts have failed. Attempts wait for their turn (waitDialTurn).
func (p *Pool) dialRetrying(ctx context.Context) (*Conn, error) {
	var lastErr error
	for attempt := 0; ; attempt++ {
		if err := p.waitDialTurn(ctx); err != nil {
			if errors.Is(err, ErrClosed) {
				return nil, err
			}
			return nil, p.gaveUp(err, lastErr)
		}
		if attempt > 0 {
			p.dialRetries.Add(1)
		}
		c, err := p.dial(ctx)
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			if lastErr == nil {
				return nil, err // the attempt's own error says that ctx ended
			}
			return nil, p.gaveUp(context.Cause(ctx), lastErr)
		}
		lastErr = err
		if !retry.Classify(err).Retryable {
			return nil, err
		}
		if p.settings().Retry.Exhausted(attempt + 1) {
			if attempt == 0 {
				return nil, err
			}
			return nil, fmt.Errorf("%w (gave up after %d attempts)", err, attempt+1)
		}
	}
}

// gaveUp is the error of a dialer whose ctx ended between attempts: the cause, and the last dial
// error (this dialer's, else the pool's), which says why no connection was made.
func (p *Pool) gaveUp(cause, lastErr error) error {
	if lastErr == nil {
		p.mu.Lock()
		lastErr = p.lastErr
		p.mu.Unlock()
	}
	if lastErr == nil {
		return fmt.Errorf("connect to upstream: %w", cause)
	}
	return fmt.Errorf("%w (gave up: %w)", lastErr, cause)
}

// waitDialTurn returns when the caller may start a dial attempt: at once while dials succeed;
// while they fail, not before the pool's nextDial, which the caller then pushes one backoff delay
// on, so that the pool's dialers take turns instead of stampeding the upstream. It returns
// ctx's cause if ctx ends first, ErrClosed if the pool closes.
func (p *Pool) waitDialTurn(ctx context.Context) error {
	for {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return ErrClosed
		}
		wait := p.dialTurnLocked(time.Now())
		recovered := p.recovered
		p.mu.Unlock()
		if wait <= 0 {
			return nil
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-recovered:
		case <-ctx.Done():
		case <-p.ctx.Done():
		}
		t.Stop()
	}
}

// dialTurnLocked returns how long a dialer must wait before its next attempt; 0 means it may go
// now, and then, while dials fail, it has claimed the turn by moving nextDial on.
func (p *Pool) dialTurnLocked(now time.Time) time.Duration {
	if p.failures == 0 {
		return 0
	}
	if wait := p.nextDial.Sub(now); wait > 0 {
		return wait
	}
	p.nextDial = now.Add(p.cfg.Retry.Delay(p.failures-1, nil))
	return 0
}

// dial makes one dial attempt and records its outcome as the upstream's health. The caller holds
// a dial token (p.dialing) for the duration.
func (p *Pool) dial(ctx context.Context) (*Conn, error) {
	p.dials.Add(1)
	p.mu.Lock()
	seq := p.retireSeq
	p.mu.Unlock()
	began := time.Now()
	c, err := p.connect(ctx)
	if o := p.cfg.DialObserver; err == nil && o != nil {
		o.Observe(time.Since(began).Seconds())
	}
	// A caller giving up says nothing about the upstream.
	if err != nil && ctx.Err() != nil {
		return nil, err
	}
	if err != nil {
		p.dialErrors.Add(1)
		if _, isServer := errors.AsType[*pgconn.PgError](err); !isServer && p.hosts != nil {
			// The name may have moved (a DNS-based failover): look it up again next time.
			p.hosts.markStale()
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err == nil {
		p.all[c] = struct{}{}
		if s, ok := p.retiredAddrs[c.addr]; ok && s > seq {
			// Retired while this dial was in flight, maybe resolved from the old answer.
			c.retired = true
			p.retired.Add(1)
		}
	}
	switch {
	case err == nil:
		p.lastErr, p.failures, p.nextDial = nil, 0, time.Time{}
		p.refusals, p.nextFill = 0, time.Time{}
		if p.recovered != nil {
			close(p.recovered)
			p.recovered = nil
		}
		if p.params == nil {
			p.params = maps.Clone(c.Params)
		}
	case retry.Classify(err).Retryable:
		p.lastErr = err
		p.failures++
		if next := time.Now().Add(p.cfg.Retry.Delay(p.failures-1, nil)); next.After(p.nextDial) {
			p.nextDial = next
		}
		if p.recovered == nil {
			p.recovered = make(chan struct{})
		}
	default:
		// The upstream answered (a wrong password, no such database): it is up, but this pool
		// cannot log in, which readiness should know.
		p.lastErr = err
		p.refusals++
		p.nextFill = time.Now().Add(refusalDelay(p.refusals))
	}
	return c, err
}

// connect dials, authenticates and hijacks one upstream connection.
func (p *Pool) connect(ctx context.Context) (*Conn, error) {
	cfg := p.settings()
	if cfg.ConnectTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.ConnectTimeout)
		defer cancel()
	}
	cc := cfg.ConnConfig.Copy()
	if cfg.LoadBalanceHosts {
		shuffleHosts(cc)
	}
	if p.hosts != nil {
		cc.LookupFunc = p.hosts.LookupHost
	}
	cc.DialFunc = p.dialFn
	pc, err := pgconn.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("connect to upstream: %w", err)
	}
	// pgconn may still have a background reader blocked on the socket (started when a write
	// was slow); it would steal the first reply relayed later. SyncConn stops it.
	if err := pc.SyncConn(ctx); err != nil {
		pc.Close(context.Background())
		return nil, fmt.Errorf("sync upstream connection: %w", err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		pc.Close(context.Background())
		return nil, fmt.Errorf("hijack upstream connection: %w", err)
	}
	now := time.Now()
	c := &Conn{
		Conn:      hc.Conn,
		PID:       hc.PID,
		SecretKey: hc.SecretKey,
		Params:    maps.Clone(hc.ParameterStatuses),
		addr:      remoteAddr(hc.Conn),
		hijacked:  hc,
		raw:       rawio.New(hc.Conn),
		pool:      p,
		created:   now,
		lastUsed:  now,
		held:      true,
		cancelTLS: tlsConfigOf(cc, hc.Conn),
	}
	if cfg.Lifetime > 0 {
		c.lifetime = cfg.Lifetime - time.Duration(rand.Int64N(int64(cfg.Lifetime)/10+1))
	}
	return c, nil
}

func (c *Conn) expired(now time.Time) bool {
	return c.lifetime > 0 && now.Sub(c.created) > c.lifetime
}

// Release returns a clean, idle connection (ReadyForQuery 'I', nothing in flight) to the pool.
// A connection past its lifetime, or retired while it was handed out (see RetireAddr), is
// closed instead. A connection of another pool goes back to its own.
func (p *Pool) Release(c *Conn) {
	if c.pool != p && c.pool != nil {
		// Held by a client that a reload moved to another pool meanwhile.
		c.pool.Release(c)
		return
	}
	now := time.Now()
	// A holder may have left a deadline set (the proxy wakes its reader with one). Clearing
	// one costs a runtime lock, so only when it was set.
	if c.deadlineSet.Swap(false) {
		_ = c.Conn.SetDeadline(time.Time{})
	}
	p.mu.Lock()
	if !c.held {
		p.mu.Unlock()
		panic("pool: Release of a connection that is not handed out")
	}
	c.held = false
	c.lastUsed = now
	if reason, ok := p.releaseCloseLocked(c, now); ok {
		p.open--
		p.dispatchLocked()
		p.mu.Unlock()
		p.closeConn(c, reason)
		return
	}
	if len(p.waiters) > 0 {
		w := p.waiters[0]
		p.waiters[0] = nil
		p.waiters = p.waiters[1:]
		c.held = true
		p.mu.Unlock()
		w.ch <- grant{conn: c}
		return
	}
	p.idle = append(p.idle, c)
	p.mu.Unlock()
}

// releaseCloseLocked says whether a released connection must be closed instead of kept, and why.
func (p *Pool) releaseCloseLocked(c *Conn, now time.Time) (CloseReason, bool) {
	switch {
	case p.closed:
		return ClosePoolClosed, true
	case c.retired:
		return CloseRetired, true
	case c.expired(now):
		return CloseLifetime, true
	case p.open > p.cfg.Size:
		return CloseResized, true
	}
	return 0, false
}

// Destroy closes a connection that cannot be reused (broken, or left in an unknown state), in
// the pool it belongs to.
func (p *Pool) Destroy(c *Conn) {
	if c.pool != p && c.pool != nil {
		c.pool.Destroy(c)
		return
	}
	p.mu.Lock()
	if !c.held {
		p.mu.Unlock()
		panic("pool: Destroy of a connection that is not handed out")
	}
	c.held = false
	p.open--
	p.dispatchLocked()
	p.mu.Unlock()
	p.closeConn(c, CloseError)
}

// DropIdle closes every idle connection at once. The proxy calls it when a server reports
// 57P01/57P02 or dies: an upstream restart has killed its siblings too. Connections in use are
// not touched; their holders find out on their own.
func (p *Pool) DropIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.open -= len(idle)
	p.dispatchLocked()
	p.mu.Unlock()
	p.idleDropped.Add(uint64(len(idle)))
	for _, c := range idle {
		p.closeConn(c, CloseUpstreamRestart)
	}
}

// RetireAddr retires every connection to the server address addr, "ip:port" as Conn.Addr
// returns it (for a host name's connections after a failover, say, or those of a primary that
// answered 25006 read_only_sql_transaction): idle ones are closed at once, and those handed out
// are closed when released instead of going back to the pool, as are those being dialled to
// addr at the time. It returns how many connections it retired, not counting dials in flight.
// It bans nothing: later dials may connect to addr again, as host order and
// target_session_attrs decide.
func (p *Pool) RetireAddr(addr string) int {
	addr = normalAddr(addr)
	return p.retire(func(c *Conn) bool { return c.addr == addr }, addr)
}

// Retire retires every open connection for which match returns true, as RetireAddr does, except
// that dials in flight are not covered. match is called with the pool's lock held, for idle and
// handed-out connections alike: it may read a connection's identity (Addr, PID, Created,
// Params) but not its Tag, and must not call the pool.
func (p *Pool) Retire(match func(*Conn) bool) int {
	return p.retire(match, "")
}

// retire retires the connections match selects; addr, if not empty, is the address they are
// selected by, for dials in flight.
func (p *Pool) retire(match func(*Conn) bool, addr string) int {
	p.mu.Lock()
	var victims []*Conn
	kept := p.idle[:0]
	for _, c := range p.idle {
		if match(c) {
			victims = append(victims, c)
		} else {
			kept = append(kept, c)
		}
	}
	clear(p.idle[len(kept):])
	p.idle = kept
	p.open -= len(victims)
	n := len(victims)
	for c := range p.all {
		if c.held && !c.retired && match(c) {
			c.retired = true
			n++
		}
	}
	if addr != "" && p.dialing > 0 {
		p.retireSeq++
		p.retiredAddrs[addr] = p.retireSeq
	}
	p.dispatchLocked()
	p.mu.Unlock()
	p.retired.Add(uint64(n))
	for _, c := range victims {
		p.closeConn(c, CloseRetired)
	}
	return n
}

// retireGone retires the connections to addresses that left the DNS answer of a host name.
func (p *Pool) retireGone(addrs []string) {
	for _, a := range addrs {
		p.RetireAddr(a)
	}
}

// AddUsage adds what a client did since its last AddUsage to the pool's counters.
func (p *Pool) AddUsage(u Usage) {
	if u.Transactions > 0 {
		p.usage.transactions.Add(u.Transactions)
	}
	if u.Queries > 0 {
		p.usage.queries.Add(u.Queries)
	}
	p.usage.received.Add(u.Received)
	p.usage.sent.Add(u.Sent)
	if u.XactTime > 0 {
		p.usage.xactNanos.Add(uint64(u.XactTime))
	}
	if u.QueryTime > 0 {
		p.usage.queryNanos.Add(uint64(u.QueryTime))
	}
	if u.StatementEvictions > 0 {
		p.usage.evictions.Add(u.StatementEvictions)
	}
}

// unwanted reports whether the pool is not worth keeping once unused: its upstream never
// accepted a login, or its last dial failed and it holds no connection.
func (p *Pool) unwanted() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.params == nil || p.lastErr != nil && p.open == 0
}

// Healthy reports whether the pool's last dial succeeded (or none was made yet): false while the
// upstream is down, refusing, or rejecting this pool's login.
func (p *Pool) Healthy() bool {
	return p.LastError() == nil
}

// LastError returns the error of the pool's last dial, or nil if it succeeded or none was made.
func (p *Pool) LastError() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastErr
}

func (p *Pool) closeConn(c *Conn, reason CloseReason) {
	// Counted first: a caller that sees the slot freed sees the close counted.
	p.closes.Add(1)
	p.closesBy[reason].Add(1)
	p.mu.Lock()
	delete(p.all, c)
	p.mu.Unlock()
	// Say goodbye so that the server does not log an unexpected EOF; never wait for it.
	_ = c.Conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = c.Conn.Write(terminateMsg)
	_ = c.Conn.Close()
}

// terminateMsg is the protocol's Terminate message.
var terminateMsg = []byte{'X', 0, 0, 0, 4}

// KnownServerParams returns the server parameters ServerParams would return, without waiting:
// nil until a connection of the pool has reported them.
func (p *Pool) KnownServerParams() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.params
}

// ServerParams returns the ParameterStatus values of this upstream, dialing a connection if the
// pool has not connected yet. Errors are the upstream's own (e.g. 3D000, 28P01).
func (p *Pool) ServerParams(ctx context.Context) (map[string]string, error) {
	if params := p.KnownServerParams(); params != nil {
		return params, nil
	}
	c, err := p.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	p.Release(c)
	return p.KnownServerParams(), nil
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
		Dialing:  p.dialing,
		Waiting:  len(p.waiters),
		MinSize:  p.cfg.MinSize,
	}
	now := time.Now()
	if len(p.waiters) > 0 {
		s.MaxWait = now.Sub(p.waiters[0].start)
	}
	for _, c := range p.idle {
		if p.needsCheck(c, now) {
			s.Used++
		}
	}
	p.mu.Unlock()
	s.Acquires = p.acquires.Load()
	s.Waits = p.waits.Load()
	s.WaitDuration = time.Duration(p.waitNanos.Load())
	s.Dials = p.dials.Load()
	s.DialErrors = p.dialErrors.Load()
	s.Closes = p.closes.Load()
	s.DialRetries = p.dialRetries.Load()
	s.CheckFailures = p.checkFailures.Load()
	s.IdleDropped = p.idleDropped.Load()
	s.Retired = p.retired.Load()
	for i := range s.ClosesBy {
		s.ClosesBy[i] = p.closesBy[i].Load()
	}
	s.Transactions = p.usage.transactions.Load()
	s.Queries = p.usage.queries.Load()
	s.Received = p.usage.received.Load()
	s.Sent = p.usage.sent.Load()
	s.XactTime = time.Duration(p.usage.xactNanos.Load())
	s.QueryTime = time.Duration(p.usage.queryNanos.Load())
	s.StatementEvictions = p.usage.evictions.Load()
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
	if p.expiry != nil {
		p.expiry.Stop()
	}
	p.mu.Unlock()
	p.stop()
	for _, c := range idle {
		p.closeConn(c, ClosePoolClosed)
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
		p.refreshHosts()
	}
}

// refreshHosts looks the upstream's host names up again when their answers are older than
// DNSMaxTTL, so that connections to an address that left DNS are retired even while no dial
// happens. A pool without connections has nothing to retire: its next dial looks up.
func (p *Pool) refreshHosts() {
	if p.hosts == nil {
		return
	}
	p.mu.Lock()
	open := p.open
	p.mu.Unlock()
	if open > 0 {
		p.hosts.refresh(p.ctx)
	}
}

func (p *Pool) evictIdle(now time.Time) {
	type victim struct {
		c      *Conn
		reason CloseReason
	}
	var victims []victim
	p.mu.Lock()
	kept := p.idle[:0]
	for _, c := range p.idle {
		switch {
		case p.cfg.IdleTimeout > 0 && now.Sub(c.lastUsed) > p.cfg.IdleTimeout && p.open-len(victims) > p.cfg.MinSize:
			victims = append(victims, victim{c, CloseIdleTimeout})
		case c.expired(now):
			victims = append(victims, victim{c, CloseLifetime})
		default:
			kept = append(kept, c)
		}
	}
	for i := len(kept); i < len(p.idle); i++ {
		p.idle[i] = nil
	}
	p.idle = kept
	p.open -= len(victims)
	p.dispatchLocked()
	p.mu.Unlock()
	for _, v := range victims {
		p.closeConn(v.c, v.reason)
	}
}

// fillMin opens connections up to MinSize, one at a time, with a single attempt each: it uses a
// dial token like any dialer, leaves the tokens to waiters when there are any, and waits for the
// next tick while failing dials space the pool's attempts.
func (p *Pool) fillMin() {
	for {
		p.mu.Lock()
		now := time.Now()
		if p.closed || p.open >= p.cfg.MinSize || len(p.waiters) > 0 || !p.canDialLocked() ||
			now.Before(p.nextFill) || p.dialTurnLocked(now) > 0 {
			p.mu.Unlock()
			return
		}
		p.open++
		p.dialing++
		p.mu.Unlock()
		c, err := p.dial(p.ctx)
		p.mu.Lock()
		p.dialDoneLocked()
		if err != nil {
			p.open--
		}
		p.dispatchLocked()
		p.mu.Unlock()
		if err != nil {
			return
		}
		p.Release(c) // closes it if the pool closed meanwhile
	}
}

// refusalDelay is how long fillMin waits after the nth refusal in a row: 2s, 4s, 8s ... up to a
// minute, each drawn from its upper half so that pools refused together spread out. A client's
// own acquire still dials at once.
func refusalDelay(n int) time.Duration {
	d := 2 * time.Second
	for i := 1; i < n && d < time.Minute; i++ {
		d *= 2
	}
	d = min(d, time.Minute)
	return d/2 + time.Duration(rand.Int64N(int64(d/2)))
}
