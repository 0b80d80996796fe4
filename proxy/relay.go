package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy/txmode"
	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

// Relay buffers. A client goroutine borrows a small buffer while it runs (a parked client holds
// none, and a login need not allocate one); a large buffer is borrowed while a message is too
// big for the small one and returned as soon as the client's input is drained.
const (
	smallBufSize = 1 << 10
	largeBufSize = 64 << 10
)

var (
	smallBufs = sync.Pool{New: func() any { b := make([]byte, smallBufSize); return &b }}
	largeBufs = sync.Pool{New: func() any { b := make([]byte, largeBufSize); return &b }}
)

// clientToServer reads the client's messages and forwards them to the attached server, taking
// one from the pool when a message arrives and none is attached. It returns when the client
// leaves or breaks the protocol; the caller cleans up.
func (s *session) clientToServer() error {
	// Nothing keeps a reference to the buffers once this returns: a session parks only with
	// nothing buffered, and what is forwarded is written before the next read.
	smallp := smallBufs.Get().(*[]byte)
	small := *smallp
	f := wire.Frames{Buf: small}
	var large *[]byte
	defer func() {
		smallBufs.Put(smallp)
		if large != nil {
			largeBufs.Put(large)
		}
	}()
	for {
		// Switch buffers at message boundaries only, so no partial message is ever split. Back to
		// the small buffer then, whether the larger one was borrowed or made for one message
		// bigger than the large buffer (kept, it would pin that memory while the client idles).
		if f.R == f.W && f.Remaining == 0 && f.Need == 0 {
			f.R, f.W = 0, 0
			if large != nil {
				largeBufs.Put(large)
				large = nil
			}
			f.Buf = small
		} else if want := max(f.Need, f.W-f.R+1); len(f.Buf)-f.R < want {
			f.Compact()
			if len(f.Buf) < want {
				// Grow: the large buffer, or for a message larger than that, one of its size
				// that is dropped once the message has been handled.
				var nb []byte
				if want <= largeBufSize && large == nil {
					large = largeBufs.Get().(*[]byte)
					nb = *large
				} else {
					nb = make([]byte, max(want, largeBufSize))
				}
				n := copy(nb, f.Buf[f.R:f.W])
				f.Buf, f.R, f.W = nb, 0, n
			}
		}
		if s.txPooling {
			if err := s.awaitRoom(); err != nil {
				return err
			}
		}
		timeouts := s.armIdleTimeout(&f)
		s.reads.Add(1) // odd: reading (see waitingLong)
		n, err := s.cio.Read(f.Buf[f.W:])
		s.reads.Add(1)
		f.W += n
		if n > 0 {
			if timeouts {
				s.mu.Lock()
				s.idleDeadline = 0 // the client is not idle
				s.mu.Unlock()
			}
			s.bytesIn.Add(uint64(n))
			if ferr := s.forwardClient(&f); ferr != nil {
				return ferr
			}
		}
		if err != nil {
			if n == 0 && s.deadlineKick(err) {
				if f.R == f.W && f.Remaining == 0 && f.Need == 0 && s.park() {
					return errParked
				}
				continue
			}
			if timeouts && errors.Is(err, os.ErrDeadlineExceeded) {
				return s.idleTimeoutError()
			}
			return fmt.Errorf("read from client: %w", err)
		}
	}
}

// clientBatch summarises the client messages found by one scan.
type clientBatch struct {
	// requests counts messages that each end in one ReadyForQuery (Query, Sync, FunctionCall).
	requests int
	// unsynced is -1 when unchanged, 0 when a Sync ends the batch's extended-protocol
	// messages, 1 when extended-protocol messages follow the last Sync.
	unsynced int
	// terminate is set when the client sent Terminate; the scan stops before it.
	terminate bool
}

// scanClient advances f over the buffered client messages, validating each header, and stops at
// an incomplete header or at Terminate. Bodies stream: a message may be only partly buffered.
func scanClient(f *wire.Frames, maxMsg int) (clientBatch, error) {
	b := clientBatch{unsynced: -1}
	for f.R < f.W {
		if f.Advance(nil) {
			continue
		}
		typ, length, ok, err := f.Next(maxMsg)
		if err != nil {
			return b, wire.Errorf("%v", err)
		}
		if !ok {
			break
		}
		switch typ {
		case 'Q', 'F':
			b.requests++
		case 'S':
			b.requests++
			b.unsynced = 0
		case 'P', 'B', 'E', 'D', 'C', 'H':
			b.unsynced = 1
		case 'd', 'c', 'f':
		case 'X':
			b.terminate = true
			return b, nil
		default:
			return b, wire.Errorf("invalid frontend message type %d", typ)
		}
		f.R += 5
		f.Remaining = length - 4
	}
	return b, nil
}

// forwardClient forwards every complete buffered client message and the available part of a
// streamed one, and keeps an incomplete header for the next read. Transaction mode goes through
// forwardTracked; session mode relays bytes as they are.
func (s *session) forwardClient(f *wire.Frames) error {
	if h := s.srv.hooks.clientBatch; h != nil {
		h(s)
	}
	if s.txPooling {
		return s.forwardTracked(f)
	}
	start := f.R
	b, err := scanClient(f, int(s.maxMsg))
	if f.R > start {
		// Messages before a bad one run, as they would on PostgreSQL (a COMMIT among them
		// must not be lost); finish lets their results reach the client before the error.
		if serr := s.sendToServer(f.Buf[start:f.R], b.requests, b.unsynced, f.Remaining > 0); serr != nil {
			return serr
		}
	}
	if err != nil {
		return err
	}
	if b.terminate {
		// Terminate is the proxy's business: the server stays for the next client.
		return errTerminate
	}
	f.Compact()
	return nil
}

// sendToServer (session mode) writes client bytes to the attached server, attaching one first
// if needed. partial says b ends inside a message, whose rest must go to the same server.
func (s *session) sendToServer(b []byte, requests, unsynced int, partial bool) error {
	s.mu.Lock()
	if s.server == nil {
		s.mu.Unlock()
		if requests == 0 && unsynced != 1 {
			// Only CopyData/CopyDone/CopyFail outside COPY (which PostgreSQL drops, e.g. after
			// a failed COPY) or Flush: nothing needs a server, and attaching one for them
			// would hold it with nothing to release it on.
			return nil
		}
		if err := s.attach(); err != nil {
			return err
		}
		s.mu.Lock()
	}
	srv := s.server
	if srv == nil {
		// The server loop failed between attach and here; the client learns from it.
		s.mu.Unlock()
		return errServerLost
	}
	if s.Pending == 0 {
		s.noteRequestTextLocked(b)
	}
	s.addPendingLocked(requests)
	if unsynced >= 0 {
		s.Unsynced = unsynced == 1
	}
	s.Partial = partial
	s.writing = true
	s.mu.Unlock()

	_, err := srv.Write(b)

	s.mu.Lock()
	s.writing = false
	s.wrote.Broadcast()
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("write to server: %w", err)
	}
	return nil
}

var errServerLost = errors.New("server connection lost")

// attach takes a server connection from the pool and starts relaying its output to the client.
func (s *session) attach() error {
	// The parameters the client set in its last transaction are being read back from that
	// server; the next one must get them.
	s.mu.Lock()
	reread := s.rereading
	s.mu.Unlock()
	if reread != nil {
		<-reread
	}
	c, err := s.acquireServer()
	if err != nil {
		return err
	}
	s.attachConn(c)
	return nil
}

// attachConn attaches server c to the session and starts relaying its output to the client.
func (s *session) attachConn(c *pool.Conn) {
	done := make(chan struct{})
	s.mu.Lock()
	s.server = c
	s.Pending = 0
	s.ResetQueue()
	s.Skipping = false
	s.Unsynced = false
	s.Partial = false
	s.TxStatus = 'I'
	s.loopDone = done
	s.loopErr = nil
	s.mu.Unlock()
	s.srv.relays.start(relayTask{s: s, c: c, done: done})
}

// upstreamError is a failure to get a server connection; the client is shown it.
type upstreamError struct{ err error }

func (e *upstreamError) Error() string { return e.err.Error() }
func (e *upstreamError) Unwrap() error { return e.err }

// serverToClient relays srv's output to the client until the server can go back to the pool
// (transaction mode, ReadyForQuery idle with nothing in flight), the client leaves, or either
// side fails. It is the only writer to the client while it runs. l is its worker's relay
// state, kept between loops so that a transaction allocates none; the loop resets it.
func (s *session) serverToClient(srv *pool.Conn, done chan struct{}, l *relayState) {
	defer close(done)
	*l = relayState{f: wire.Frames{Buf: srv.ReadBuffer()}, s: s, srv: srv}
	// Let go of the server's buffer and the session once the loop ends: the server may be
	// closed by then, and the worker keeps l while it waits for its next loop.
	defer func() { *l = relayState{} }()
	var st *txmode.ServerState
	if s.txPooling {
		st = srv.Tag.(*txmode.ServerState)
		if !st.Relaying.CompareAndSwap(false, true) {
			panic("proxy: two relays on one server connection")
		}
		l.st = st
	}
	// On the paths that keep srv attached, the flag is cleared here; released clears it itself
	// before the pool can hand srv to another client.
	handedBack := false
	defer func() {
		if st != nil && !handedBack {
			st.Relaying.Store(false)
		}
	}()
	// Registered last, so it runs first: the read state still tells whether the client's
	// stream is between messages, and done is closed only once loopErr says the server's
	// state is unknown.
	defer func() {
		if v := recover(); v != nil {
			s.loopFailed(s.recovered("relay loop", v), l.f.Remaining == 0, false)
		}
	}()
	// The request was written just before this loop started, and the server needs a moment to
	// answer it. Reading now would almost always find nothing, park on the poller and cost
	// another wake-up; yielding first lets the other sessions' work run meanwhile, after which
	// the reply is usually there. Under pgbench -S this halved the proxy's context switches per
	// transaction and cut its CPU per transaction by a fifth at 64 and 256 clients.
	runtime.Gosched()
	for {
		// The reads and what can be done with each while the loop stays on srv are Handle's;
		// what ends the loop or moves it to another server is done here, once srv's poller
		// wait is over (closing srv inside it would wait for itself).
		l.next, l.err, l.perr, l.werr, l.reread = relayOn, nil, nil, nil, nil
		if err := srv.ReadEach(l); err != nil && l.err == nil {
			l.err = err
		}
		switch l.next {
		case relayWriteFailed:
			s.loopFailed(fmt.Errorf("write to client: %w", l.werr), false, false)
			return
		case relayProtocolFailed:
			s.loopFailed(l.perr, true, false)
			return
		case relayServerGone:
			// Already answered; the server is closing. Not released: destroyed.
			st.Relaying.Store(false)
			handedBack = true
			s.pool().Destroy(srv)
			return
		case relayRetry:
			c, cst, ok := s.retryOnNewServer(srv)
			if !ok {
				s.loopFailed(s.retryFailure(), true, false)
				return
			}
			srv, st = c, cst
			l.moveTo(srv, st)
			continue
		case relayRelease:
			handedBack = true
			s.released(srv, l.reread)
			return
		}
		err := l.err
		if err == nil {
			continue // not expected: ReadEach returns when Handle stops or with an error
		}
		f := &l.f
		boundary := f.R == f.W && f.Remaining == 0
		if st != nil && !deadlineErr(err) && connectionLost(err) && s.lostBeforeRequest() {
			if c, cst, ok := s.retryOnNewServer(srv); ok {
				srv, st = c, cst
				l.moveTo(srv, st)
				continue
			}
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// clientToServer's kick, unless finish is stopping this loop. The deadline is
			// cleared under mu, so a later kick is not lost.
			s.mu.Lock()
			closing := s.closing
			if !closing {
				_ = srv.SetReadDeadline(time.Time{})
			}
			release := !closing && boundary && s.server == srv && s.releasableLocked()
			var reread chan struct{}
			if release {
				reread = s.detachLocked()
			}
			s.mu.Unlock()
			if !closing {
				if release {
					handedBack = true
					s.released(srv, reread)
					return
				}
				continue
			}
		}
		s.loopFailed(fmt.Errorf("read from server: %w", err), true, boundary)
		return
	}
}

// relayState is a serverToClient loop's state. Its worker keeps it between loops, so that a
// loop allocates nothing, and it takes the loop's reads from the server (rawio.Reader).
type relayState struct {
	f   wire.Frames
	s   *session
	srv *pool.Conn
	st  *txmode.ServerState // transaction mode only

	// What Handle found that the loop must do once out of the server's poller wait.
	next       relayNext
	err        error // the read's
	perr, werr error // the reply's (protocol) and the client's (write)
	reread     chan struct{}
}

// relayNext is what the loop does after its reads stop.
type relayNext uint8

const (
	relayOn             relayNext = iota // read on (a read error, if any, is in err)
	relayWriteFailed                     // the client could not be written to: werr
	relayProtocolFailed                  // the server broke the protocol: perr
	relayServerGone                      // the server is closing, its reply relayed
	relayRetry                           // the server refused the batch retryably
	relayRelease                         // the server goes back to the pool (reread)
)

// moveTo points the state at the server a retry moved the client to.
func (l *relayState) moveTo(srv *pool.Conn, st *txmode.ServerState) {
	l.srv, l.st = srv, st
	l.f = wire.Frames{Buf: srv.ReadBuffer()}
}

// ReadBuffer is where the next read from the server goes (rawio.Reader).
func (l *relayState) ReadBuffer() []byte { return l.f.Buf[l.f.W:] }

// Handle relays what a read brought (rawio.Reader), and stops the reads for what the loop
// must do itself.
func (l *relayState) Handle(n int, err error) bool {
	l.f.W += n
	if n > 0 {
		if l.next = l.s.relayBatch(l); l.next != relayOn {
			return false
		}
	}
	if err != nil {
		l.err = err
		return false
	}
	return true
}

// relayBatch relays the server's messages read into l.f and says what the loop does next.
func (s *session) relayBatch(l *relayState) relayNext {
	f, srv, st := &l.f, l.srv, l.st
	if h := s.srv.hooks.serverBatch; h != nil {
		h(s)
	}
	var ready int
	var status byte
	if st != nil {
		s.checkDemotion(f, srv, st)
		ready, status, l.perr, l.werr = s.relayTrackedAndWrite(f, st)
	} else {
		start := f.R
		ready, status, l.perr = s.scanServer(f)
		if f.R > start {
			l.werr = s.writeClient(f.Buf[start:f.R])
		}
	}
	if l.werr != nil {
		return relayWriteFailed
	}
	if l.perr != nil {
		return relayProtocolFailed
	}
	if st != nil && s.dropGoneServer() {
		return relayServerGone
	}
	if st != nil && s.takeRetryNeeded() {
		return relayRetry
	}
	f.Compact()
	if ready > 0 {
		counted := 0 // relayTracked counts them itself
		if st == nil {
			counted = ready
		}
		if release, reread := s.readyForQuery(counted, ready, status, f.R == f.W && f.Remaining == 0); release {
			l.reread = reread
			return relayRelease
		}
	}
	return relayOn
}

// checkDemotion confirms, before the tracker sees it, that a read-only error (25006) from a
// route that wants a primary comes from a server that is no longer one, with a fresh
// connection to the server's address; a read-only transaction or session on a healthy
// primary is the client's own business. Done without the session's locks: it dials.
func (s *session) checkDemotion(f *wire.Frames, srv *pool.Conn, st *txmode.ServerState) {
	if !s.route.wantsPrimary || !wire.HasErrorCode(f.Buf[f.R:f.W], retry.CodeReadOnlySQLTransaction) {
		return
	}
	demoted := srv.Params["in_hot_standby"] == "on" || s.pool().Demoted(s.context(), srv.Addr())
	s.mu.Lock()
	st.Demoted = demoted
	s.mu.Unlock()
}

// relayTrackedAndWrite matches the server's buffered replies to requests and writes what the
// client gets, as one step under wmu, so that the proxy's own answers (emitSynths) cannot
// overtake relayed ones. The locks are released by defer: a panic leaves them free for the
// session's cleanup.
func (s *session) relayTrackedAndWrite(f *wire.Frames, st *txmode.ServerState) (ready int, status byte, perr, werr error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	for {
		out, n, last, needWrite, err := s.relayTrackedLocked(f, st)
		if n > 0 {
			ready, status = ready+n, last
		}
		if len(out) > 0 {
			s.bytesOut.Add(uint64(len(out)))
			if _, werr = s.cio.Write(out); werr != nil {
				return ready, status, err, werr
			}
		}
		if err != nil || !needWrite {
			return ready, status, err, nil
		}
		// Decisions on a failed request need clientToServer's write of it finished (the
		// reply can overtake its return).
		s.awaitWritten()
	}
}

// awaitWritten waits until clientToServer is not writing to the server.
func (s *session) awaitWritten() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.writing {
		s.wrote.Wait(&s.mu)
	}
}

// relayTrackedLocked runs the tracker's relayTracked under mu, and carries out what it decided.
func (s *session) relayTrackedLocked(f *wire.Frames, st *txmode.ServerState) (out []byte, ready int, status byte, needWrite bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out, ready, status, needWrite, err = s.Tracker.ScanServer(f, st, s.writing, s.closing)
	s.afterTrackLocked()
	if s.awaitingRoom {
		s.wrote.Broadcast()
	}
	return out, ready, status, needWrite, err
}

// afterTrackLocked carries out what the tracker decided in its last call, except the signals
// of other clients, which it returns (a copy) to be carried out without the lock.
func (s *session) afterTrackLocked() (signals []txmode.Signal) {
	e := s.Tracker.TakeEvents()
	if len(e.Signals) > 0 {
		signals = slices.Clone(e.Signals)
	}
	if e.Pinned != "" {
		s.pinnedAt = s.srv.stampNow()
		s.srv.metrics.pinned(string(e.Pinned))
		s.log.Info("client pinned to its server connection", "reason", string(e.Pinned))
	}
	if e.Retire {
		s.retireServerLocked()
	}
	if len(e.Resend) > 0 {
		// A batch the server refused whole, run again: written under the lock, as nothing
		// else writes to the server while its reply is being relayed.
		if _, err := s.server.Write(e.Resend); err != nil {
			// The loop's next read fails too and ends the session with a clear error.
			s.log.Info("re-run of a refused batch: write to server failed", "err", err)
		}
		s.srv.metrics.retried(e.RerunReason)
	}
	if e.Wake {
		s.wrote.Broadcast()
	}
	return signals
}

// detachLocked takes the server from the session after a transaction. When the client changed
// parameters with SQL, the returned channel is closed once they have been read back.
func (s *session) detachLocked() (reread chan struct{}) {
	s.server = nil
	s.loopDone = nil
	if !s.ParamsDirty {
		return nil
	}
	s.ParamsDirty = false
	reread = make(chan struct{})
	s.rereading = reread
	return reread
}

// released hands a detached server back to the pool after a transaction, reading back the
// client's parameters from it first when reread is set.
func (s *session) released(srv *pool.Conn, reread chan struct{}) {
	if st, ok := srv.Tag.(*txmode.ServerState); ok {
		st.Relaying.Store(false)
	}
	if reread != nil {
		err := s.rereadParams(srv)
		s.mu.Lock()
		s.rereading = nil
		s.mu.Unlock()
		close(reread)
		if err != nil {
			s.log.Warn("could not read back session parameters; closing the server connection", "err", err)
			s.pool().Destroy(srv)
			return
		}
	}
	s.awaitCancels()
	s.pool().Release(srv)
	if s.srv.draining.Load() {
		s.shutdownIfIdle()
	}
	s.armIdleAfterRelease()
}

// releasableLocked reports whether the attached server can go back to the pool now: transaction
// mode, not pinned, idle, and nothing in flight in either direction.
func (s *session) releasableLocked() bool {
	return s.txPooling && s.server != nil && s.Pinned == "" && s.TxStatus == 'I' &&
		s.Pending == 0 && s.Queued() == 0 && !s.Unsynced && !s.Partial && !s.writing && !s.closing
}

// kickIfReleasableLocked wakes serverToClient, with a read deadline in the past, when the
// attached server became releasable without a reply to wait for (the rest of a message arrived
// after the server's last ReadyForQuery, or the proxy answered a batch itself). Doing it under
// mu while the server is attached means the deadline cannot land on a server already released:
// every release clears it.
func (s *session) kickIfReleasableLocked() {
	if s.server != nil && s.releasableLocked() {
		_ = s.server.SetReadDeadline(time.Now())
	}
}

// inspectServerMsg lists the server message types session mode must see whole: ReadyForQuery
// for the transaction status. Everything else streams through without decoding.
func inspectServerMsg(typ byte) bool { return typ == 'Z' || typ == 'E' }

// scanServer advances over buffered server messages. It returns the number of ReadyForQuery
// messages seen and the last transaction status.
func (s *session) scanServer(f *wire.Frames) (ready int, status byte, err error) {
	for f.R < f.W {
		if f.Advance(nil) {
			continue
		}
		typ, length, ok, err := f.Next(int(s.maxMsg))
		if err != nil {
			return ready, status, fmt.Errorf("server sent %w", err)
		}
		if !ok {
			return ready, status, nil
		}
		if inspectServerMsg(typ) && 1+length <= len(f.Buf) {
			if f.W-f.R < 1+length {
				return ready, status, nil // wait for the rest of it
			}
			if typ == 'Z' && length == 5 {
				ready++
				status = f.Buf[f.R+5]
				if status == 'I' {
					s.idleReady.Add(1)
				}
			}
			if typ == 'E' {
				s.mu.Lock()
				s.ServerError(wire.ErrorCode(f.Buf[f.R+5 : f.R+1+length]))
				s.mu.Unlock()
			}
			f.R += 1 + length
			continue
		}
		f.R += 5
		f.Remaining = length - 4
	}
	return ready, status, nil
}

// readyForQuery records ReadyForQuery messages and reports whether the server is to be released
// now (clean is false when bytes after the last ReadyForQuery are buffered).
func (s *session) readyForQuery(n, ready int, status byte, clean bool) (release bool, reread chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Pending = max(s.Pending-n, 0)
	s.TxStatus = status
	s.accountLocked(ready, status)
	s.armTxIdleLocked()
	if s.Pending == 0 && s.drained != nil {
		close(s.drained)
		s.drained = nil
	}
	if !s.txPooling || s.Pending > 0 || s.Unsynced || status != 'I' || !clean {
		return false, nil
	}
	// The response can overtake clientToServer's return from writing its request. Waiting
	// cannot deadlock: with nothing pending, the server has read everything sent so far.
	for s.writing {
		s.wrote.Wait(&s.mu)
	}
	if !s.releasableLocked() {
		return false, nil
	}
	return true, s.detachLocked()
}

// accountLocked counts ready completed requests; when nothing is pending any more the request
// time, and when the server is out of a transaction the transaction: then the session's counts
// go to its pool, once per transaction, so that sessions share no counter while they run.
func (s *session) accountLocked(ready int, status byte) {
	u := &s.usage
	u.Queries += uint64(ready)
	// Every ReadyForQuery outside a transaction ends one, pipelined ones included.
	idle := s.idleReady.Swap(0)
	if s.txPooling {
		idle = uint64(s.Tracker.TakeIdleReady())
	}
	now := s.srv.stampNow()
	if s.Pending == 0 && s.reqStart != 0 {
		d := time.Duration(now - s.reqStart)
		u.QueryTime += d
		if o := s.obs.query; o != nil {
			o.Observe(d.Seconds())
		}
		s.reqStart = 0
		if limit := s.srv.config().SlowQueryThreshold; limit > 0 && d >= limit {
			s.logSlowLocked(d)
		}
		s.reqErr = ""
	}
	u.Transactions += idle
	if status != 'I' {
		return
	}
	if s.xactStart != 0 {
		d := time.Duration(now - s.xactStart)
		u.XactTime += d
		if o := s.obs.xact; o != nil {
			o.Observe(d.Seconds())
		}
		s.xactStart = 0
	}
	// Folded at each transaction's end, not later: a client that goes idle for an hour must
	// not keep its last transactions out of the metrics that long.
	s.foldUsageLocked()
}

// noteRequestTextLocked keeps the start of the SQL text of the request in msgs (whole client
// messages) that starts when nothing is pending, for the slow-query log.
func (s *session) noteRequestTextLocked(msgs []byte) {
	limit := s.srv.config().SlowQueryTextBytes
	if s.srv.config().SlowQueryThreshold <= 0 || limit <= 0 {
		return
	}
	var text []byte
	if s.txPooling {
		text = txmode.RequestText(msgs, s.Tracker.StatementText)
	} else {
		s.notePreparedLocked(msgs, limit)
		text = txmode.RequestText(msgs, func(name []byte) []byte { return s.prepared[string(name)] })
	}
	s.reqText = append(s.reqText[:0], text[:min(len(text), limit)]...)
}

// maxPreparedTexts bounds the statement texts a session-mode client has the proxy remember.
const maxPreparedTexts = 64

// notePreparedLocked remembers (session mode, slow-query log on) the start of the text of the
// statements msgs prepares, by name, so that a later Bind's request can be logged with it.
func (s *session) notePreparedLocked(msgs []byte, limit int) {
	for len(msgs) >= 5 {
		typ, length, ok := wire.HeaderOf(msgs)
		if !ok || length < 4 || len(msgs) < 1+length {
			return
		}
		if typ == 'P' {
			body := msgs[5 : 1+length]
			name, _, _ := wire.CString(body)
			text := txmode.ParseText(body)
			if s.prepared == nil || len(s.prepared) >= maxPreparedTexts {
				s.prepared = make(map[string][]byte)
			}
			s.prepared[string(name)] = bytes.Clone(text[:min(len(text), limit)])
		}
		msgs = msgs[1+length:]
	}
}

// logSlowLocked logs the request that just took d: once, with its text's start (cut at a
// character boundary) and never its parameter values.
func (s *session) logSlowLocked(d time.Duration) {
	text := s.reqText
	for len(text) > 0 && !utf8.Valid(text) {
		text = text[:len(text)-1]
	}
	attrs := []any{"duration_seconds", d.Seconds(), "sqlstate", s.reqErr}
	if s.srv.config().SlowQueryTextBytes > 0 {
		attrs = append(attrs, "query", string(text))
	}
	if p := s.pool(); p != nil {
		attrs = append(attrs, "pool", p.Key())
	}
	s.log.Warn("slow query", attrs...)
	s.reqText = s.reqText[:0]
}

// ServerError counts an error relayed to the client and remembers its SQLSTATE for the
// slow-query log; called under mu (by the tracker, in transaction mode).
func (s *session) ServerError(code string) {
	s.srv.metrics.clientError(code)
	s.reqErr = code
}

// foldUsageLocked adds the session's counts since the last fold to its pool and metrics.
func (s *session) foldUsageLocked() {
	s.usage.Received = s.bytesIn.Swap(0)
	s.usage.Sent = s.bytesOut.Swap(0)
	if s.txPooling {
		c := s.Tracker.TakeCacheUse()
		s.srv.metrics.statementCacheUse(c.Hits, c.Misses, c.Evictions)
		s.usage.StatementEvictions = c.Evictions
	}
	if p := s.pool(); p != nil {
		p.AddUsage(s.usage)
	}
	s.usage = pool.Usage{}
}

func (s *session) writeClient(b []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.bytesOut.Add(uint64(len(b)))
	_, err := s.cio.Write(b)
	return err
}

// loopFailed records why serverToClient stopped. When the session is ending (finish woke the
// loop with a deadline) and the loop stopped between messages, the server's state is still
// known and loopErr stays nil. Otherwise the client is told and disconnected, which ends
// clientToServer too; the server is left attached for the session owner to destroy.
func (s *session) loopFailed(err error, tellClient, atBoundary bool) {
	s.mu.Lock()
	closing := s.closing
	if !closing || !atBoundary || !errors.Is(err, os.ErrDeadlineExceeded) {
		s.loopErr = err
		s.wrote.Broadcast() // awaitRoom waits for replies that will not come
	}
	if s.abandoned {
		err = fmt.Errorf("the server answered neither the query within query_timeout (%s) nor its cancel request, and was disconnected", s.srv.config().QueryTimeout)
	}
	s.mu.Unlock()
	if closing {
		return
	}
	switch {
	case tellClient && errPanic(err):
		s.sendError(clientError(err))
	case tellClient:
		s.sendError(&pgconn.PgError{Severity: "FATAL", Code: retry.CodeConnectionFailure, Message: "pgsidecar: lost connection to the server: " + err.Error()})
	}
	_ = s.conn.Close()
}
