package proxy

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/pgsidecar/pgsidecar/internal/tcpopt"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy/admin"
	"github.com/pgsidecar/pgsidecar/proxy/auth"
	"github.com/pgsidecar/pgsidecar/proxy/txmode"
)

// Options configures a Server.
type Options struct {
	// Config is the effective configuration; the Server reads it, never changes it.
	Config *config.Config
	// Pools holds the upstream pools; the Server creates pools in it as routes are used.
	Pools *pool.Set
	// Logger receives connection-level events. Required.
	Logger *slog.Logger
	// Metrics, when set, is updated as clients come and go. Optional.
	Metrics *Metrics
	// Version is what the admin console's SHOW VERSION reports after "pgsidecar ".
	Version string
	// Upstreams, Reload and Shutdown serve the admin console's SHOW UPSTREAMS, RELOAD and
	// SHUTDOWN; nil ones make those commands fail. Shutdown must start the drain and return.
	Upstreams func() []admin.UpstreamRow
	Reload    func() error
	Shutdown  func()
}

// Server accepts PostgreSQL clients on the configured listeners and relays their sessions to
// pooled upstream connections.
type Server struct {
	// cfg is the configuration in force; Reload replaces it.
	cfg     atomic.Pointer[config.Config]
	pools   *pool.Set
	log     *slog.Logger
	metrics *Metrics
	tls     *tls.Config
	// tlsRequired is tls.mode=require, as started (the TLS settings need a restart).
	tlsRequired bool
	// tcp is applied to every accepted client socket (keepalive, TCP_USER_TIMEOUT).
	tcp tcpopt.Options

	listeners []net.Listener
	acceptWG  sync.WaitGroup
	// acceptStop is closed when the listeners close, for accept loops waiting to admit a login;
	// loginEnded tells one of them that a login ended (logins.go).
	acceptStop chan struct{}
	stopAccept sync.Once
	loginEnded chan struct{}

	// ctx is the parent of every session's context; cancel force-closes all sessions.
	// endedCtx is the context of sessions that ended (cancelled).
	ctx      context.Context
	endedCtx *sessionCtx
	cancel   context.CancelFunc

	mu       sync.Mutex
	sessions map[*session]struct{}
	closing  bool
	sessWG   sync.WaitGroup

	clients atomic.Int64
	// draining is set by Shutdown: transaction-mode clients are let go once idle.
	draining atomic.Bool
	nextID   atomic.Uint64

	cancelMu sync.Mutex
	byPID    map[uint32]*session

	// stmts names the prepared statements shared by transaction-mode clients.
	stmts txmode.Registry
	// logins are the sessions still logging in, oldest first (guarded by mu; logins.go);
	// failedLogins throttles failed logins per client address.
	logins       loginQueue
	failedLogins failedLogins
	// certs serves and reloads the client TLS certificate (nil without TLS).
	certs *certReloader
	// creds keeps the SCRAM credentials of the users' plain-text passwords.
	creds auth.Credentials
	// epoch is the origin of the sessions' stamps.
	epoch time.Time
	// clientParams shares the startup parameter maps of clients (params.go); limits the
	// tracker limits of the configuration in force (trackerLimits).
	clientParams paramsIntern
	limits       atomic.Pointer[limitsCache]
	// welcomes keeps the ParameterStatus messages of logins (params.go).
	welcomes welcomeCache
	// settable keeps each route's replayed parameters (settable.go).
	settable settableCache
	// hooks are set by tests only.
	hooks testHooks
	// relays runs the sessions' serverToClient loops; sessionRuns their logins and the client
	// loops of parked sessions that resume.
	relays      workers[relayTask]
	sessionRuns workers[sessionTask]
	// parker parks idle clients (park.go); nil before Start, or when the system cannot.
	parker *parker
	// routes remembers resolved routes: a connection per transaction resolves one per login.
	routes routeCache
	// routeGen counts reloads: a client whose pool was bound before the last one rebinds.
	routeGen atomic.Uint64
	// pauses are the admin console's PAUSE and DISABLE; stats its SHOW STATS averages.
	pauses pauses
	stats  statsWindow
	// What the admin console reports and calls (Options).
	version   string
	upstreams func() []admin.UpstreamRow
	reload    func() error
	shutdown  func()
}

// New validates what the proxy needs from opts (TLS files) and returns a Server that is not
// listening yet.
func New(opts Options) (*Server, error) {
	if opts.Config == nil || opts.Pools == nil || opts.Logger == nil {
		return nil, errors.New("proxy: Config, Pools and Logger are required")
	}
	s := &Server{
		epoch:      time.Now(),
		pools:      opts.Pools,
		log:        opts.Logger,
		metrics:    opts.Metrics,
		tcp:        opts.Config.TCPOptions(),
		sessions:   make(map[*session]struct{}),
		acceptStop: make(chan struct{}),
		loginEnded: make(chan struct{}, 1),
		byPID:      make(map[uint32]*session),
		version:    opts.Version,
		upstreams:  opts.Upstreams,
		reload:     opts.Reload,
		shutdown:   opts.Shutdown,
	}
	s.cfg.Store(opts.Config)
	s.tlsRequired = opts.Config.TLS.Mode == config.TLSRequire
	s.stmts.Max = opts.Config.MaxPreparedStatementBytes
	if method, err := auth.ParseMethod(opts.Config.AuthType); err == nil && method != auth.Trust {
		// Derived now, so that no login pays for it (see auth.Credentials).
		users := make(map[string]string, len(opts.Config.Users))
		for _, u := range opts.Config.Users {
			users[u.Name] = u.Password
		}
		if err := s.creds.Prepare(users); err != nil {
			return nil, fmt.Errorf("prepare scram credentials: %w", err)
		}
	}
	if c := opts.Config.TLS; c.CertFile != "" && c.Mode != config.TLSDisable {
		r, err := newCertReloader(c.CertFile, c.KeyFile, s.log)
		if err != nil {
			return nil, err
		}
		s.certs = r
		s.tls = &tls.Config{GetCertificate: r.getCertificate, MinVersion: tls.VersionTLS12}
	}
	return s, nil
}

// config returns the configuration in force.
func (s *Server) config() *config.Config { return s.cfg.Load() }

// Start binds every listen address and starts accepting. Sessions live until they end, or
// until Shutdown's deadline passes.
func (s *Server) Start(ctx context.Context) error {
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	ended, cancelEnded := context.WithCancel(s.ctx)
	cancelEnded()
	s.endedCtx = &sessionCtx{ctx: ended, cancel: cancelEnded}
	if err := s.openConfiguredPools(); err != nil {
		return err
	}
	if s.certs != nil {
		s.certs.watch(s.ctx)
	}
	// Accepted sockets get the tcp_* options (tcpopt) whole; Go's own keepalive setup on
	// accept would only be overwritten, at four system calls per connection.
	lc := net.ListenConfig{KeepAlive: -1}
	for _, addr := range s.config().Listen {
		ln, err := lc.Listen(ctx, "tcp", addr)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("listen on %s: %w", addr, err)
		}
		s.listeners = append(s.listeners, ln)
	}
	s.parker = s.startParker()
	for _, ln := range s.listeners {
		// The keepalive settings go on the listener, which its connections inherit: fewer
		// system calls per connection.
		opts, err := s.tcp.ApplyToListener(ln.(*net.TCPListener))
		if err != nil {
			s.log.Warn("could not set TCP options on a listener; setting them on each connection", "listen", ln.Addr().String(), "err", err)
		}
		s.acceptWG.Add(1)
		go s.acceptLoop(ln, opts)
	}
	return nil
}

// openConfiguredPools creates the pools of the routes the configuration names, before any
// client asks, so that min_pool_size connections are opened at start and the pools are kept
// whatever their upstream says.
func (s *Server) openConfiguredPools() error {
	ups, err := s.config().ConfiguredUpstreams()
	if err != nil {
		return fmt.Errorf("configured routes: %w", err)
	}
	for _, up := range ups {
		p, err := s.pools.Join(up.Key, func() (pool.Config, error) { return s.poolConfig(up) })
		if err != nil {
			return fmt.Errorf("pool for %s: %w", up.Key, err)
		}
		s.routes.used(up.Key, up.ClientDatabase, up.ClientUser, s.poolExists)
		s.pools.Leave(p)
	}
	return nil
}

// stopCertWatch waits for the certificate watcher to end (s.cancel was called).
func (s *Server) stopCertWatch() {
	if s.certs != nil {
		s.certs.stop()
	}
}

// Addrs returns the bound listen addresses (useful with port 0).
func (s *Server) Addrs() []net.Addr {
	addrs := make([]net.Addr, len(s.listeners))
	for i, ln := range s.listeners {
		addrs[i] = ln.Addr()
	}
	return addrs
}

// Clients returns the number of connected clients.
func (s *Server) Clients() int64 { return s.clients.Load() }

func (s *Server) closeListeners() {
	s.stopAccept.Do(func() { close(s.acceptStop) })
	for _, ln := range s.listeners {
		_ = ln.Close()
	}
}

func (s *Server) acceptLoop(ln net.Listener, opts tcpopt.Accepted) {
	defer s.acceptWG.Done()
	loopback := isLoopback(ln.Addr())
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and similar: back off instead of spinning.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed", "listen", ln.Addr().String(), "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		if err := opts.Apply(conn); err != nil {
			// The session still works; only dead-peer detection is weaker.
			s.log.Warn("could not set TCP options on a client socket", "err", err)
		}
		sess := s.newSession(conn, loopback)
		if sess == nil {
			_ = conn.Close()
			continue
		}
		if !s.admitLogin(sess) {
			_ = conn.Close()
			s.removeSession(sess)
			return
		}
		s.sessionRuns.start(sessionTask{s: sess})
	}
}

func isLoopback(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// newSession registers a session for conn; nil once the server is shutting down.
func (s *Server) newSession(conn net.Conn, loopback bool) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return nil
	}
	id := s.nextID.Add(1)
	sess := &session{
		srv:      s,
		id:       id,
		conn:     conn,
		loopback: loopback,
		remote:   conn.RemoteAddr(),
	}
	sess.log = sessionLog{sess}
	s.sessions[sess] = struct{}{}
	s.sessWG.Add(1)
	return sess
}

func (s *Server) removeSession(sess *session) {
	s.mu.Lock()
	delete(s.sessions, sess)
	s.mu.Unlock()
	s.sessWG.Done()
}

// registerCancelKey mints the BackendKeyData a client sees and maps it to sess.
func (s *Server) registerCancelKey(sess *session, serverPID uint32) {
	var b [8]byte
	s.cancelMu.Lock()
	defer s.cancelMu.Unlock()
	for {
		_, _ = rand.Read(b[:])
		pid := mintedPID(binary.BigEndian.Uint32(b[:4]))
		if serverPID != 0 {
			// A session-mode client keeps its server for good: it is told that server's real
			// PID, so that pg_backend_pid(), pg_stat_activity and pg_terminate_backend agree
			// with what it was told. The secret is still the proxy's.
			pid, serverPID = serverPID, 0
		}
		if _, taken := s.byPID[pid]; taken {
			continue
		}
		sess.cancelPID = pid
		sess.cancelKey = [4]byte(b[4:8])
		s.byPID[pid] = sess
		return
	}
}

// Minted backend PIDs lie above every real process ID (Linux's pid_max is at most 2^22) and
// within PostgreSQL's int4, so that SQL given one, such as pg_cancel_backend(pid), can never
// reach an unrelated backend, and the proxy can tell its own PIDs from real ones.
const (
	minMintedPID = 1 << 22
	maxMintedPID = 1<<31 - 1
)

// mintedPID maps a random number into [minMintedPID, maxMintedPID].
func mintedPID(r uint32) uint32 {
	return minMintedPID + r%(maxMintedPID-minMintedPID+1)
}

// isMintedPID reports whether pid is in the range of PIDs the proxy mints.
func isMintedPID(pid int64) bool { return pid >= minMintedPID && pid <= maxMintedPID }

// sessionByPID returns the logged-in session the proxy gave backend PID pid, or nil.
func (s *Server) sessionByPID(pid uint32) *session {
	s.cancelMu.Lock()
	defer s.cancelMu.Unlock()
	return s.byPID[pid]
}

func (s *Server) unregisterCancelKey(sess *session) {
	if sess.cancelPID == 0 {
		return
	}
	s.cancelMu.Lock()
	if s.byPID[sess.cancelPID] == sess {
		delete(s.byPID, sess.cancelPID)
	}
	s.cancelMu.Unlock()
}

// cancel forwards a client's CancelRequest to the server running that client's query. Requests
// with an unknown or wrong key are ignored, as PostgreSQL does.
func (s *Server) cancelQuery(ctx context.Context, pid uint32, key []byte) {
	s.cancelMu.Lock()
	sess := s.byPID[pid]
	s.cancelMu.Unlock()
	if sess == nil || subtle.ConstantTimeCompare(sess.cancelKey[:], key) != 1 {
		return
	}
	sess.cancelRunningQuery(ctx)
}

// Shutdown stops accepting, then waits for sessions to end until ctx is done, after which the
// remaining sessions are closed. Idle clients in transaction mode are told 57P01 first.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	s.draining.Store(true)
	s.closeListeners()
	s.acceptWG.Wait()

	done := make(chan struct{})
	go func() {
		s.sessWG.Wait()
		close(done)
	}()
	s.mu.Lock()
	for sess := range s.sessions {
		sess.shutdownIfIdle()
	}
	s.mu.Unlock()
	select {
	case <-done:
		s.cancel()
		s.relays.stop()
		s.sessionRuns.stop()
		s.parker.close()
		s.stopCertWatch()
		return nil
	case <-ctx.Done():
	}
	s.cancel()
	s.mu.Lock()
	for sess := range s.sessions {
		sess.abort(&pgconn.PgError{Severity: "FATAL", Code: retry.CodeAdminShutdown, Message: "terminating connection due to administrator command (pgsidecar shutdown deadline passed)"})
	}
	s.mu.Unlock()
	<-done
	s.relays.stop()
	s.sessionRuns.stop()
	s.parker.close()
	s.stopCertWatch()
	return fmt.Errorf("shutdown: sessions closed at deadline: %w", context.Cause(ctx))
}
