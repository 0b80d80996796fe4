package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/internal/rawio"
	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy/admin"
	"github.com/pgsidecar/pgsidecar/proxy/auth"
	"github.com/pgsidecar/pgsidecar/proxy/classify"
	"github.com/pgsidecar/pgsidecar/proxy/txmode"
	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

// session is one client connection. Its goroutine (run, then clientToServer) owns the client's
// reads and the session's cleanup; while a server connection is attached, a serverToClient
// goroutine owns that server's reads and is the only writer to the client, except for the
// errors clientToServer sends when no server is attached.
type session struct {
	srv  *Server
	id   uint64
	conn net.Conn
	// cio does the relay's I/O on conn; raw is the same when conn is plain TCP (nil otherwise).
	cio    io.ReadWriter
	raw    *rawio.Conn
	remote net.Addr
	log    sessionLog
	// sctx is the session's context (see context); nil until first used, and again while
	// parked; the Server's endedCtx once the session ended.
	sctx atomic.Pointer[sessionCtx]

	user, database string
	// console answers an admin console client (nil for others); adminCancel cancels the
	// command it runs (a CancelRequest for this session). Guarded by mu.
	console     *admin.Console
	adminCancel context.CancelFunc
	// connected is when the login finished; waitingSince when the client began to wait for a
	// server (zero when not waiting); pinnedAt when it was pinned. Guarded by mu.
	connected, waitingSince, pinnedAt stamp
	// poolRef is the client's pool; a reload may move the client to another (rebind).
	poolRef atomic.Pointer[pool.Pool]
	// routeGen is the Server's routeGen the client's pool was bound at.
	routeGen  atomic.Uint64
	txPooling bool
	// loopback is set when the client came over a loopback address. maxMsg is
	// max_message_size, at most what a message's int32 length can say.
	loopback bool
	maxMsg   int32

	cancelPID uint32
	cancelKey [4]byte

	// txmode.Tracker is the session's protocol bookkeeping (transaction mode's in full), guarded by mu.
	txmode.Tracker

	// mu guards the attachment state below. clientToServer and serverToClient both hold it only
	// for short, non-blocking sections (except cancelRunningQuery, which is rare).
	mu sync.Mutex
	// server is the attached server connection; nil between transactions in transaction mode.
	// Whoever sets it to nil owns the connection and must release or destroy it.
	server *pool.Conn
	// writing is set while clientToServer writes to server outside the lock, so that the server
	// is not released in the middle of that write.
	writing bool
	// wrote is signalled (with mu) when writing is cleared.
	wrote lazyCond
	// cancelling counts cancel requests being delivered to the attached server (or to the one
	// just released, which waits for them in awaitCancels).
	cancelling int
	// awaitingRoom is set while clientToServer waits for queued replies to drain (awaitRoom);
	// serverToClient then signals wrote as it relays.
	awaitingRoom bool
	// closing is set once the client is gone; serverToClient then stops quietly.
	closing bool
	// loopDone is closed when the current serverToClient goroutine has returned.
	loopDone chan struct{}
	// drained, when set, is closed once pending drops to zero (see awaitResults).
	drained chan struct{}
	// loopErr is why the last serverToClient goroutine stopped while still attached (nil after
	// a clean release). A non-nil loopErr means the attached server is in an unknown state.
	loopErr error

	// route is what the session needs of its resolved route (config.Upstream, which holds the
	// upstream password, is not kept: an idle client should hold little).
	route sessionRoute
	// rereading is closed once the parameters the client changed have been read back.
	rereading chan struct{}
	// loggedIn is set once the login is over (see shutdownIfIdle); loginStart is when it began
	// (guarded by Server.mu, see admitLogin).
	loggedIn   bool
	loginStart stamp
	// retrying holds off clientToServer while the last batch moves to a new server.
	retrying bool
	// retryErr is why a retry could not get another server; the client is told.
	retryErr error
	// queryTimer cancels the server's query when a request runs past query_timeout. It is
	// created once and not touched per request: queryStart records when the current request
	// went out, and a timer that fires early (armed for an earlier request) re-arms itself for
	// the rest, so a transaction costs no timer operation. queryTimerAt is when it fires (zero:
	// not armed). queryCancelled is the server whose request it cancelled (the current
	// request's): firing again for that server closes its connection.
	queryTimer     *time.Timer
	queryTimerAt   stamp
	queryStart     stamp
	queryCancelled *pool.Conn
	// reqStart and xactStart are when the current requests and transaction began, for the
	// metrics (zero once counted); usage counts what the client did since its last
	// transaction ended (accountLocked); bytesIn and bytesOut count the bytes relayed from and
	// to the client meanwhile, by the goroutines that move them. obs are the histograms of
	// the client's pool.
	reqStart  stamp
	xactStart stamp
	// reqText is the start of the SQL text of the requests being timed and reqErr the SQLSTATE
	// of their last error, for the slow-query log.
	reqText           []byte
	reqErr            string
	prepared          map[string][]byte // session mode: statement texts (notePreparedLocked)
	usage             pool.Usage
	bytesIn, bytesOut atomic.Uint64
	idleReady         atomic.Uint64 // session mode: ReadyForQuery 'I' seen since the last count
	obs               sessionObservers
	// abandoned is set when the proxy closed a server that answered neither its query nor the
	// cancel of it; the client is told that instead of the socket error.
	abandoned bool
	// wmu serialises writes to the client.
	wmu sync.Mutex
	// waitNotice is set, under wmu, while the client waits for a server with a
	// query_wait_notice pending; the notice is sent only while it is set.
	waitNotice bool
	// sentError is set once an ErrorResponse was sent; closeConn then lingers.
	sentError atomic.Bool
	// panicked is set once a panic was recovered in one of the session's goroutines: its
	// server connection is then destroyed, not reused.
	panicked atomic.Bool

	// Parking (park.go). parked is set while the session has no goroutine. reads counts the
	// client goroutine's reads, odd while one is in progress; readsSeen is its value at the
	// parker's last round (parker goroutine only). Under mu: kicked is set while a read
	// deadline in the past is the parker's; idleTimer ends a parked client at its
	// client_idle_timeout; idleDeadline is when the client's client_idle_timeout ends (zero:
	// not running).
	parked       atomic.Bool
	reads        atomic.Uint32
	readsSeen    uint32
	kicked       bool
	idleTimer    *time.Timer
	idleDeadline stamp
}

// closeConn closes the client connection. After an error was sent it first half-closes and
// drains what the client still sends, so that the kernel does not answer unread bytes with a
// reset that could destroy the error before the client reads it.
func (s *session) closeConn() {
	if tc, ok := s.conn.(*net.TCPConn); ok && s.sentError.Load() {
		_ = tc.CloseWrite()
		_ = tc.SetReadDeadline(time.Now().Add(time.Second))
		_, _ = io.CopyN(io.Discard, tc, 256<<10)
	}
	_ = s.conn.Close()
}

func (s *session) run() {
	s.srv.metrics.clientConnected()
	err := s.protect("login", func() error {
		ok, err := s.startup()
		if err != nil {
			s.logEnd("login failed", err)
		}
		if !ok {
			s.srv.metrics.clientClosed(closeReason(false, err))
		}
		if ok {
			s.srv.endLogin(s)
			return nil
		}
		return errNotLoggedIn
	})
	if err == nil {
		s.startRelay()
		return
	}
	if errPanic(err) {
		s.sendError(clientError(err))
	}
	s.end()
	// Only now: a refused client's connection lingers in end until its error is read, and
	// counts as a login in progress meanwhile, so that a flood of bad logins stays bounded.
	s.srv.endLogin(s)
}

// errNotLoggedIn ends a session whose login did not succeed (already logged and answered).
var errNotLoggedIn = errors.New("not logged in")

// startRelay starts serving a client that just logged in. A transaction-mode client is parked
// at once (park.go), so that its first request starts its goroutine; the others are served on
// this goroutine, a kept worker's (see workers).
func (s *session) startRelay() {
	if !s.srv.draining.Load() {
		if d := s.srv.config().ClientIdleTimeout; d > 0 {
			s.idleDeadline = s.srv.stampAfter(d)
		}
		if s.park() {
			return
		}
	}
	s.relay()
}

// relay serves a logged-in client until it leaves, then cleans up.
// It also resumes a parked session (park.go), on the goroutine its wake-up started.
func (s *session) relay() {
	if s.srv.draining.Load() {
		// Logged in while the proxy began shutting down, after it told the idle clients.
		s.shutdownIfIdle()
	}
	loop := s.clientToServer
	if s.console != nil {
		loop = s.adminLoop
	}
	cause := s.protect("client loop", loop)
	if cause == errParked {
		return // the session lives on without a goroutine; a wake-up resumes it
	}
	s.srv.metrics.clientClosed(closeReason(true, cause))
	if err := s.protect("session cleanup", func() error { s.finish(cause); return nil }); err != nil {
		s.destroyServerAfterPanic()
	}
	s.srv.unregisterCancelKey(s)
	s.srv.clients.Add(-1)
	s.end()
}

// destroyServerAfterPanic closes the attached server connection after a panic in the session's
// cleanup, if the session lock can be had (a panic may have left it taken).
func (s *session) destroyServerAfterPanic() {
	if !s.mu.TryLock() {
		return
	}
	srv := s.server
	s.server = nil
	s.mu.Unlock()
	if srv != nil {
		s.pool().Destroy(srv)
	}
}

// leavePool ends the session's use of its pool, if it has one.
func (s *session) leavePool() {
	if p := s.pool(); p != nil {
		s.setPool(nil)
		s.srv.pools.Leave(p)
	}
}

// pool returns the client's pool (nil before login bound one).
func (s *session) pool() *pool.Pool { return s.poolRef.Load() }

func (s *session) setPool(p *pool.Pool) { s.poolRef.Store(p) }

// end releases what the session holds on the server side of the proxy.
func (s *session) end() {
	s.closeConn()
	s.dropContext(true)
	// After finish: the session holds none of the pool's connections any more.
	s.leavePool()
	s.srv.metrics.clientDisconnected()
	s.srv.removeSession(s)
}

// logEnd logs why a session ended: hang-ups at debug, everything else at info, once.
func (s *session) logEnd(msg string, err error) {
	s.mu.Lock()
	connected := s.connected
	s.mu.Unlock()
	attrs := make([]any, 0, 8)
	if connected != 0 {
		attrs = append(attrs, "duration_seconds", time.Since(s.srv.timeOf(connected)).Seconds())
	}
	if p := s.pool(); p != nil {
		attrs = append(attrs, "pool", p.Key())
	}
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, errTerminate) {
		s.log.Debug("client disconnected", append(attrs, "reason", errString(err))...)
		return
	}
	s.log.Info(msg, append(attrs, "sqlstate", clientError(err).Code, "err", err)...)
}

func errString(err error) string {
	if err == nil {
		return "eof"
	}
	return err.Error()
}

var errTerminate = errors.New("client sent Terminate")

// startup runs the startup phase: encryption negotiation, cancel requests, authentication and
// the initial server parameters. ok reports whether the client is logged in.
func (s *session) startup() (ok bool, err error) {
	if timeout := s.srv.config().ClientLoginTimeout; timeout > 0 {
		_ = s.conn.SetDeadline(time.Now().Add(timeout))
	}
	s.raw = rawio.New(s.conn)
	var st *startup
	// Like PostgreSQL, accept at most one SSLRequest and one GSSENCRequest before the startup.
	sslAsked, gssAsked := false, false
	for {
		st, err = readStartup(s.loginIO())
		if err != nil {
			s.sendStartupError(err)
			return false, err
		}
		switch st.code {
		case codeSSLRequest:
			if sslAsked {
				err := wire.Errorf("duplicate SSLRequest")
				s.sendStartupError(err)
				return false, err
			}
			sslAsked = true
			if s.srv.tls == nil {
				if _, err := s.loginIO().Write([]byte{'N'}); err != nil {
					return false, fmt.Errorf("answer SSLRequest: %w", err)
				}
				continue
			}
			if _, err := s.loginIO().Write([]byte{'S'}); err != nil {
				return false, fmt.Errorf("answer SSLRequest: %w", err)
			}
			tc := tls.Server(s.conn, s.srv.tls)
			if err := tc.HandshakeContext(s.context()); err != nil {
				return false, fmt.Errorf("tls handshake: %w", err)
			}
			// Under the lock: Shutdown may abort a session still logging in.
			s.mu.Lock()
			s.conn = tc
			s.raw = nil // TLS from here on
			s.mu.Unlock()
			continue
		case codeGSSENCRequest:
			if gssAsked {
				err := wire.Errorf("duplicate GSSENCRequest")
				s.sendStartupError(err)
				return false, err
			}
			gssAsked = true
			if _, err := s.loginIO().Write([]byte{'N'}); err != nil {
				return false, fmt.Errorf("answer GSSENCRequest: %w", err)
			}
			continue
		case codeCancelRequest:
			ctx, cancel := context.WithTimeout(s.context(), cancelTimeout)
			s.srv.cancelQuery(ctx, st.cancelPID, st.cancelKey)
			cancel()
			return false, nil
		}
		break
	}

	if s.srv.tlsRequired {
		s.mu.Lock()
		_, secure := s.conn.(*tls.Conn)
		s.mu.Unlock()
		if !secure {
			// As PostgreSQL's hostssl: no entry for an unencrypted connection.
			err := &startupError{code: retry.CodeInvalidAuthorization, msg: fmt.Sprintf("pgsidecar: connections of user %q must use TLS (tls.mode=require), no encryption", st.get("user"))}
			s.sendStartupError(err)
			return false, err
		}
	}
	if n := s.srv.clients.Add(1); n > int64(s.srv.config().MaxClientConn) {
		s.srv.clients.Add(-1)
		err := &startupError{code: retry.CodeTooManyConnections, msg: fmt.Sprintf("sorry, too many clients already (max_client_conn=%d)", s.srv.config().MaxClientConn)}
		s.sendStartupError(err)
		return false, err
	}
	loggedIn := false
	defer func() {
		if !loggedIn {
			s.srv.clients.Add(-1)
		}
	}()

	s.user = st.get("user")
	s.database = st.get("database")
	if s.database == "" {
		s.database = s.user
	}

	if len(st.unknownOptions) > 0 || st.code&0xffff > 0 {
		// We speak 3.0 and no protocol options; a newer client downgrades on this reply, which
		// PostgreSQL sends before authentication.
		if err := s.writeMsg(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: st.unknownOptions}); err != nil {
			return false, err
		}
	}
	method, err := auth.ParseMethod(s.srv.config().AuthType)
	if err != nil {
		return false, err
	}
	if method == auth.Trust && !s.loopback && !s.srv.config().AuthTrustRemote {
		err := &startupError{code: retry.CodeInvalidAuthorization, msg: "pgsidecar: trust authentication is only allowed on loopback listeners (set auth_trust_remote to force it)"}
		s.sendStartupError(err)
		return false, err
	}
	secret, found := s.srv.config().UserSecret(s.user)
	if err := auth.AuthenticateWith(s.loginIO(), method, s.user, secret, found, &s.srv.creds); err != nil {
		if authFailure(err) {
			s.loginFailed(s.context())
		}
		s.sendStartupError(err)
		return false, fmt.Errorf("authenticate %q: %w", s.user, err)
	}

	if method != auth.Trust {
		s.srv.failedLogins.succeeded(clientHost(s.conn.RemoteAddr()))
	}
	if isAdminDatabase(s.database, s.srv.config().AdminPgBouncer) {
		if err := s.adminLogin(); err != nil {
			s.sendStartupError(err)
			return false, err
		}
		if err := s.finishLogin(appendParameterStatus(nil, adminParams()), nil); err != nil {
			return false, err
		}
		loggedIn = true
		return true, nil
	}
	if s.srv.pauses.isDisabled(s.database) {
		err := &startupError{code: retry.CodeCannotConnectNow, msg: fmt.Sprintf("pgsidecar: database %q is disabled by the admin console (ENABLE)", s.database)}
		s.sendStartupError(err)
		return false, err
	}
	up, err := s.bindPool()
	if err != nil {
		s.sendStartupError(err)
		return false, err
	}
	// The upstream may be down; the pool retries its dial for as long as a query would wait.
	// The wait's context is made only if the pool must reach the upstream: usually the pool
	// knows its server's parameters and the route's settable ones, and a login makes none.
	wait := loginWait{s: s}
	p := s.pool()
	params := p.KnownServerParams()
	if params == nil {
		params, err = p.ServerParams(wait.context())
	}
	if err == nil && s.txPooling {
		s.useSettableParams(&wait, params)
	}
	wait.done()
	if err != nil {
		if up.User != "" && !up.HasPassword && authFailure(err) {
			// The upstream wants a password pgsidecar does not have: say which setting is
			// missing rather than pass on a password failure the client cannot fix.
			err = &startupError{code: retry.CodeInvalidAuthorization, msg: fmt.Sprintf(
				"pgsidecar: the upstream asks for a password for user %q and pgsidecar has none: set it in database_url (for that URL's user), in a route's password, or as a plain password in a users entry",
				up.User)}
		}
		// Left before the client hears of it: a refused pool is gone by its next attempt.
		s.leavePool()
		s.sendStartupError(err)
		return false, err
	}
	s.Params, s.ParamsKey = s.srv.clientParams.intern(clientParams(st, params))
	if v, ok := s.Params["standard_conforming_strings"]; ok && !strings.EqualFold(v, "on") {
		// The SQL classifier reads strings as PostgreSQL does with this on; it cannot vouch
		// for this client's SQL, so the client keeps its server.
		s.Pinned, s.pinnedAt = classify.SetUntracked, s.srv.stampNow()
		s.srv.metrics.pinned(string(s.Pinned))
	}
	if s.Pinned == "" && classify.UnsafeEncoding(s.Params["client_encoding"]) {
		// In these encodings a character's second byte can be a quote or a backslash, so the
		// classifier cannot tell where a string ends: the client keeps its server.
		s.Pinned, s.pinnedAt = classify.ClientEncoding, s.srv.stampNow()
		s.srv.metrics.pinned(string(s.Pinned))
	}
	var sessionServer *pool.Conn
	if !s.txPooling {
		// Session mode: the client's server for good, given at login, so that the client can
		// be told its real PID.
		c, err := s.loginServer()
		if err != nil {
			s.sendStartupError(err)
			return false, err
		}
		sessionServer = c
	}
	if err := s.finishLogin(s.srv.welcomes.get(p, params, s.Params, s.ParamsKey), sessionServer); err != nil {
		return false, err
	}
	loggedIn = true
	return true, nil
}

// loginWait is the context of a login's waits for its pool, made when first needed: bounded by
// query_wait_timeout, and derived from the Server's context, not the session's (the login
// runs on the session's goroutine, so the session cannot end meanwhile).
type loginWait struct {
	s      *session
	ctx    context.Context
	cancel context.CancelFunc
}

// context returns the waits' context, making it on the first call.
func (w *loginWait) context() context.Context {
	if w.ctx == nil {
		w.ctx, w.cancel = w.s.srv.ctx, func() {}
		if d := w.s.srv.config().QueryWaitTimeout; d > 0 {
			w.ctx, w.cancel = context.WithTimeout(w.s.srv.ctx, d)
		}
	}
	return w.ctx
}

// done ends the waits' context, if one was made.
func (w *loginWait) done() {
	if w.cancel != nil {
		w.cancel()
	}
}

// finishLogin tells the client it is in (its ParameterStatus messages, its cancel key) and
// readies the session to relay; sessionServer, in session mode, is the client's server for
// good.
func (s *session) finishLogin(paramStatus []byte, sessionServer *pool.Conn) error {
	var serverPID uint32
	if sessionServer != nil {
		serverPID = sessionServer.PID
	}
	s.srv.registerCancelKey(s, serverPID)
	if err := s.sendWelcome(paramStatus); err != nil {
		s.srv.unregisterCancelKey(s)
		if sessionServer != nil {
			s.pool().Release(sessionServer)
		}
		return fmt.Errorf("send login response: %w", err)
	}
	_ = s.conn.SetDeadline(time.Time{})
	s.cio = s.conn
	if s.raw != nil {
		s.raw.SetWriteTimeout(s.srv.config().ClientWriteTimeout)
		s.cio = s.raw
	} else if d := s.srv.config().ClientWriteTimeout; d > 0 {
		s.cio = &writeTimeoutConn{Conn: s.conn, timeout: d}
	}
	s.mu.Lock()
	s.loggedIn = true
	s.connected = s.srv.stampNow()
	s.mu.Unlock()
	if sessionServer != nil {
		s.attachConn(sessionServer)
	}
	s.log.Debug("client logged in")
	return nil
}

// bindPool resolves the client's route and finds or creates its pool; it returns the route.
func (s *session) bindPool() (config.Upstream, error) {
	s.routeGen.Store(s.srv.routeGen.Load())
	up, err := s.srv.routes.resolve(s.srv.config(), s.database, s.user)
	if err != nil {
		return up, &startupError{code: retry.CodeInvalidCatalogName, msg: fmt.Sprintf("pgsidecar: no upstream for database %q and user %q: %v", s.database, s.user, err)}
	}
	s.txPooling = up.PoolMode != "session"
	s.Tracker.Init(&s.srv.stmts, s.srv.trackerLimits(s.srv.config(), up))
	s.Tracker.SetSignalTarget(s, isMintedPID)
	s.Tracker.SetErrorHook(s)
	s.route = routeOf(up)
	s.maxMsg = int32(min(s.srv.config().MaxMessageSize, math.MaxInt32))
	p, err := s.srv.pools.Join(up.Key, func() (pool.Config, error) { return s.srv.poolConfig(up) })
	if err != nil {
		return up, joinError(err, s.database, s.user)
	}
	s.srv.routes.used(up.Key, s.database, s.user, s.srv.poolExists)
	s.setPool(p)
	s.obs = s.srv.metrics.sessionObserversFor(up.Database, up.User)
	return up, nil
}

// sessionRoute is what a session keeps of its route (config.Upstream).
type sessionRoute struct {
	// key is the route's pool key; wantsPrimary whether target_session_attrs asks for a
	// primary.
	key          string
	wantsPrimary bool
}

func routeOf(up config.Upstream) sessionRoute {
	return sessionRoute{key: up.Key, wantsPrimary: up.WantsPrimary}
}

// poolConfig is the configuration of up's pool.
func (srv *Server) poolConfig(up config.Upstream) (pool.Config, error) {
	cc, err := pgconn.ParseConfig(up.ConnString)
	if err != nil {
		return pool.Config{}, &startupError{code: retry.CodeConnectionFailure, msg: fmt.Sprintf("pgsidecar: invalid upstream connection string for %s: %v", up.Key, redactedParseError(err))}
	}
	obs := srv.metrics.observersFor(up.Database, up.User)
	return pool.Config{
		Key:            up.Key,
		Database:       up.Database,
		User:           up.User,
		ConnConfig:     cc,
		Size:           up.PoolSize,
		MinSize:        up.MinPoolSize,
		IdleTimeout:    srv.config().ServerIdleTimeout,
		Lifetime:       srv.config().ServerLifetime,
		ConnectTimeout: srv.config().ConnectTimeout,
		// While the upstream is down, dials are retried with backoff for as long as the client
		// is willing to wait (query_wait_timeout), so clients ride through restarts.
		Retry:      retry.Backoff{Initial: srv.config().RetryDelay, Max: srv.config().RetryMaxDelay},
		CheckDelay: srv.config().ServerCheckDelay,
		// Keepalive and TCP_USER_TIMEOUT on server sockets, as on client sockets.
		TCP: new(srv.config().TCPOptions()),
		// libpq's load_balance_hosts, which Resolve took out of ConnString for pgconn.
		LoadBalanceHosts: up.LoadBalanceHosts == "random",
		DNSMaxTTL:        srv.config().DNSMaxTTL,
		Keep:             up.Configured,
		WaitObserver:     obs.wait,
		DialObserver:     obs.connect,
	}, nil
}

// redactedParseError drops pgconn's copy of the connection string, which holds the password.
func redactedParseError(err error) string {
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) {
		if pe.Unwrap() != nil {
			return pe.Unwrap().Error()
		}
		return "cannot parse"
	}
	return "cannot parse"
}

func (s *session) sendWelcome(paramStatus []byte) error {
	buf := make([]byte, 0, 9+len(paramStatus)+13+6)
	buf, _ = (&pgproto3.AuthenticationOk{}).Encode(buf)
	buf = append(buf, paramStatus...)
	buf, _ = (&pgproto3.BackendKeyData{ProcessID: s.cancelPID, SecretKey: s.cancelKey[:]}).Encode(buf)
	buf, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(buf)
	_, err := s.loginIO().Write(buf)
	return err
}

func (s *session) writeMsg(m pgproto3.BackendMessage) error {
	buf, err := m.Encode(nil)
	if err != nil {
		return err
	}
	_, err = s.loginIO().Write(buf)
	return err
}

// loginIO is what the login reads and writes the client with: raw socket calls on plain TCP
// (rawio), as the relay, so that a login makes no blocking system call the runtime must hand
// its thread over for (which kept the runtime's monitor waking every 20 us under a connection
// per transaction, a sixth of the proxy's CPU); the TLS connection once there is one.
func (s *session) loginIO() io.ReadWriter {
	if s.raw != nil {
		return s.raw
	}
	return s.conn
}

// sendStartupError tells the client why it is refused, if the error is one a client should see.
func (s *session) sendStartupError(err error) {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, net.ErrClosed) {
		return
	}
	s.sendError(clientError(err))
}

// sendError writes an ErrorResponse, bounded in time so a client that does not read cannot
// block the session's cleanup.
func (s *session) sendError(e *pgconn.PgError) {
	buf := wire.AppendErrorResponse(nil, e)
	s.srv.metrics.clientError(e.Code)
	s.sentError.Store(true)
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_ = s.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = s.conn.Write(buf)
	_ = s.conn.SetWriteDeadline(time.Time{})
}

// cancelRunningQuery forwards a cancel to the attached server, if it is running something of
// this client's. The server is not handed to another client until the cancel has been
// delivered (awaitCancels): PostgreSQL would otherwise cancel that client's query.
func (s *session) cancelRunningQuery(ctx context.Context) {
	s.mu.Lock()
	if s.adminCancel != nil {
		s.adminCancel() // a PAUSE waiting for transactions gives up
		s.mu.Unlock()
		return
	}
	srv := s.server
	if srv == nil || s.Pending == 0 && !s.Unsynced {
		s.mu.Unlock()
		return
	}
	s.cancelling++
	s.mu.Unlock()
	// Given back even if the delivery panics: awaitCancels would otherwise wait for ever.
	defer func() {
		s.mu.Lock()
		s.cancelling--
		if s.cancelling == 0 {
			s.wrote.Broadcast()
		}
		s.mu.Unlock()
	}()
	// The lock is not held over the network: an unreachable server must not stall the session.
	err := srv.CancelRequest(ctx)
	if err != nil {
		s.log.Info("forward cancel request", "err", err)
	}
}

// awaitCancels waits until no cancel of this session's is being delivered, before a server it
// used goes back to the pool. Once PostgreSQL has taken the cancel request, a cancel that
// arrives after the query ended finds the backend idle, where it is ignored. The wait is
// bounded by the cancel's own timeout (cancelTimeout).
func (s *session) awaitCancels() {
	s.mu.Lock()
	for s.cancelling > 0 {
		s.wrote.Wait(&s.mu)
	}
	s.mu.Unlock()
}

// shutdownIfIdle tells an idle transaction-mode client that the proxy is going away and closes
// it; busy clients finish their transaction first.
func (s *session) shutdownIfIdle() {
	s.mu.Lock()
	// A login in progress writes txPooling and pool without the lock: they are read only once
	// loggedIn, set under it after them, says the login is over.
	idle := s.loggedIn && s.server == nil && (s.txPooling || s.console != nil)
	s.mu.Unlock()
	if !idle {
		return
	}
	s.sendError(&pgconn.PgError{Severity: "FATAL", Code: retry.CodeAdminShutdown, Message: "terminating connection due to administrator command (pgsidecar is shutting down)"})
	s.closeClient(s.conn)
}

// abort tells the client why and closes its connection at once; a client that does not read
// gets only a moment to take the error.
func (s *session) abort(e *pgconn.PgError) {
	s.mu.Lock()
	conn := s.conn // a login in progress may be switching it to TLS
	s.mu.Unlock()
	// The deadline unblocks a relay write that holds wmu; set again once wmu is had, as that
	// write may have cleared it (client_write_timeout).
	_ = conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	buf := wire.AppendErrorResponse(nil, e)
	s.srv.metrics.clientError(e.Code)
	s.wmu.Lock()
	_ = conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = conn.Write(buf)
	s.wmu.Unlock()
	s.closeClient(conn)
}

// trackerLimits returns the limits of cfg for a client of route up, shared by the clients of
// the same configuration (a copy per client cost an idle client 56 bytes).
func (srv *Server) trackerLimits(cfg *config.Config, up config.Upstream) *txmode.Limits {
	c := srv.limits.Load()
	if c == nil || c.cfg != cfg {
		primary, other := trackerLimitsOf(cfg, config.Upstream{WantsPrimary: true}), trackerLimitsOf(cfg, config.Upstream{})
		c = &limitsCache{cfg: cfg, primary: &primary, other: &other}
		srv.limits.Store(c)
	}
	if up.WantsPrimary {
		return c.primary
	}
	return c.other
}

// limitsCache holds the tracker limits of one configuration (see trackerLimits).
type limitsCache struct {
	cfg            *config.Config
	primary, other *txmode.Limits
}

// trackerLimitsOf returns the limits of cfg for a client of route up.
func trackerLimitsOf(cfg *config.Config, up config.Upstream) txmode.Limits {
	return txmode.Limits{
		MaxMessage:       cfg.MaxMessageSize,
		ClientStatements: cfg.MaxClientPreparedStatements,
		ServerStatements: cfg.MaxPreparedStatements,
		RegistryBytes:    cfg.MaxPreparedStatementBytes,
		RefuseState:      cfg.SessionState == config.SessionStateRefuse,
		Retries:          cfg.Retries,
		// A server answering 25006 to a route that wants a primary has been demoted.
		WantsPrimary: up.WantsPrimary,
	}
}

// MaySignal reports whether this client may cancel or terminate, by SQL, the client the proxy
// gave backend PID pid: one of the same user, as PostgreSQL allows for a role's own backends.
// It is called under s.mu and takes only the server's cancel-key lock.
func (s *session) MaySignal(pid int64) bool {
	target := s.srv.sessionByPID(uint32(pid))
	return target != nil && target.user == s.user
}

// carryOutSignals does what the client's SQL calls of pg_cancel_backend and
// pg_terminate_backend of minted PIDs asked for (the tracker answered them): cancel the target
// client's running query, as its own CancelRequest would, or end that client with FATAL 57P01,
// as PostgreSQL ends a terminated backend.
func (s *session) carryOutSignals(signals []txmode.Signal) {
	for _, sig := range signals {
		target := s.srv.sessionByPID(uint32(sig.PID))
		if target == nil || target.user != s.user {
			continue // gone meanwhile
		}
		ctx, cancel := context.WithTimeout(s.context(), cancelTimeout)
		target.cancelRunningQuery(ctx)
		cancel()
		if sig.Terminate {
			target.abort(&pgconn.PgError{Severity: "FATAL", Code: retry.CodeAdminShutdown, Message: "terminating connection due to administrator command"})
		}
	}
}

// writeTimeoutConn is a client connection that is not plain TCP (TLS) with client_write_timeout:
// every write gets the deadline.
type writeTimeoutConn struct {
	net.Conn
	timeout time.Duration
}

func (c *writeTimeoutConn) Write(b []byte) (int, error) {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
	n, err := c.Conn.Write(b)
	_ = c.Conn.SetWriteDeadline(time.Time{})
	return n, err
}

// loginServer takes a session-mode client's server at login, within query_wait_timeout, with
// the client's parameters applied.
func (s *session) loginServer() (*pool.Conn, error) {
	if err := s.srv.pauses.wait(s.context(), s.database); err != nil {
		return nil, &upstreamError{err: fmt.Errorf("wait for the admin console's RESUME: %w", err)}
	}
	c, err := s.pool().AcquireWithin(s.context(), s.srv.config().QueryWaitTimeout)
	if err != nil {
		if errors.Is(err, pool.ErrWaitTimeout) {
			return nil, &startupError{code: retry.CodeConnectionFailure, msg: fmt.Sprintf("pgsidecar: no server connection became free within query_wait_timeout (%s)", s.srv.config().QueryWaitTimeout)}
		}
		return nil, &upstreamError{err: err}
	}
	if err := s.syncParams(s.context(), c); err != nil {
		s.pool().Destroy(c)
		return nil, &upstreamError{err: fmt.Errorf("apply session parameters: %w", err)}
	}
	return c, nil
}

// sessionLog writes a session's log records with its identifying attributes (conn_id, client,
// and user and database once known). They are added when a record is written, not kept in a
// logger of the session's own: most sessions log nothing, and an idle client should hold as
// little memory as possible.
type sessionLog struct{ s *session }

// Debug logs at debug level.
func (l sessionLog) Debug(msg string, args ...any) { l.log(slog.LevelDebug, msg, args) }

// Info logs at info level.
func (l sessionLog) Info(msg string, args ...any) { l.log(slog.LevelInfo, msg, args) }

// Warn logs at warn level.
func (l sessionLog) Warn(msg string, args ...any) { l.log(slog.LevelWarn, msg, args) }

// Error logs at error level.
func (l sessionLog) Error(msg string, args ...any) { l.log(slog.LevelError, msg, args) }

func (l sessionLog) log(level slog.Level, msg string, args []any) {
	s := l.s
	lg := s.srv.log
	ctx := context.Background()
	if !lg.Enabled(ctx, level) {
		return
	}
	attrs := make([]any, 0, 8+len(args))
	attrs = append(attrs, "conn_id", s.id)
	if s.remote != nil {
		attrs = append(attrs, "client", s.remote.String())
	}
	if s.user != "" {
		attrs = append(attrs, "user", s.user, "database", s.database)
	}
	lg.Log(ctx, level, msg, append(attrs, args...)...)
}

// lazyCond is a condition variable on a session's mu, made at its first Wait: most sessions
// never wait, and a sync.Cond is 56 bytes. Every call must hold the mutex.
type lazyCond struct{ c *sync.Cond }

// Wait waits as sync.Cond's Wait does, with mu the mutex held.
func (l *lazyCond) Wait(mu *sync.Mutex) {
	if l.c == nil {
		l.c = sync.NewCond(mu)
	}
	l.c.Wait()
}

// Broadcast wakes every waiter (none before the first Wait).
func (l *lazyCond) Broadcast() {
	if l.c != nil {
		l.c.Broadcast()
	}
}

// sessionCtx is a session's context and its cancel.
type sessionCtx struct {
	ctx    context.Context
	cancel context.CancelFunc
}

// context returns the session's context, a child of the Server's, which is cancelled when the
// session ends, so that what waits on the session's behalf (a server, a retry) stops. It is
// made when first needed, and dropped when the session is parked with nothing in flight:
// with the entry it takes in its parent, a context costs an idle client about 170 bytes.
func (s *session) context() context.Context {
	for {
		if c := s.sctx.Load(); c != nil {
			return c.ctx
		}
		ctx, cancel := context.WithCancel(s.srv.ctx)
		if s.sctx.CompareAndSwap(nil, &sessionCtx{ctx: ctx, cancel: cancel}) {
			return ctx
		}
		cancel()
	}
}

// dropContext cancels the session's context; the next call of context makes another, unless
// ended says the session has ended, when it returns a cancelled one.
func (s *session) dropContext(ended bool) {
	var next *sessionCtx
	if ended {
		next = s.srv.endedCtx
	}
	if c := s.sctx.Swap(next); c != nil && c != s.srv.endedCtx {
		c.cancel()
	}
}

// stamp is a time as nanoseconds since the Server's epoch (monotonic), 0 for none: 8 bytes
// where a time.Time takes 24, for the timestamps every session keeps.
type stamp int64

// stampNow returns the stamp of now. (time.Since of a monotonic time reads one clock where
// time.Now reads two.)
func (srv *Server) stampNow() stamp { return stamp(time.Since(srv.epoch)) + 1 }

// stampAfter returns the stamp of d from now.
func (srv *Server) stampAfter(d time.Duration) stamp { return srv.stampNow() + stamp(d) }

// since returns how long ago st was (st not zero).
func (srv *Server) since(st stamp) time.Duration { return time.Duration(srv.stampNow() - st) }

// timeOf returns the time of st, the zero time for none.
func (srv *Server) timeOf(st stamp) time.Time {
	if st == 0 {
		return time.Time{}
	}
	return srv.epoch.Add(time.Duration(st - 1))
}
