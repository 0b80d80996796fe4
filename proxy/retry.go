package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy/txmode"
	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

// Transparent retry on another server (transaction mode). A batch the proxy remembered (see
// rememberBatch: the first request of a transaction, nothing else in flight) is sent to a
// new server when the first one failed it in a way that proves it did not run:
//   - the server's first reply to it is a shutdown or connection error (57P01, 57P02, 57P03,
//     class 08): a backend terminated before or during the statement rolls it back;
//   - the proxy could not write it to the server at all (the peer had already reset).
// A server that dies without saying why after receiving a request is not retried: it may have
// committed it, and nothing may run twice.

// connectionLost reports whether err is the server connection going away.
func connectionLost(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
}

// retryOnNewServer sends the remembered batch, which old failed, to another server and returns
// that server with its state; ok is false when the batch cannot be retried, and the caller
// fails the session as before. When ok, old has been destroyed, or released when it refused
// the batch for a conflict (serialization failure, deadlock) and is otherwise fine.
func (s *session) retryOnNewServer(old *pool.Conn) (c *pool.Conn, st *txmode.ServerState, ok bool) {
	s.mu.Lock()
	if !s.Tracker.CanResend() || !s.canRetryLocked() || s.server != old {
		s.mu.Unlock()
		return nil, nil, false
	}
	s.retrying = true
	r := s.Tracker.TakeResend()
	reason, oldReady, wroteNothing, attempt := r.Reason, r.OldReady, r.WroteNothing, r.Attempt
	s.mu.Unlock()
	finish := func() {
		s.mu.Lock()
		s.retrying = false
		s.wrote.Broadcast()
		s.mu.Unlock()
	}

	if ost, isState := old.Tag.(*txmode.ServerState); isState {
		ost.Relaying.Store(false)
	}
	conflict := reason == retry.ReasonSerialization || reason == retry.ReasonDeadlock
	if !conflict && reason != retry.ReasonReadOnly && !wroteNothing && !closesAfterFatal(old) {
		// A FATAL refusal that the connection's end does not follow came from something
		// other than the server ending the session: the request may have run.
		s.pool().Destroy(old)
		s.mu.Lock()
		s.server = nil
		s.retryErr = errFatalNotClosed
		s.mu.Unlock()
		finish()
		return nil, nil, false
	}
	switch reason {
	case retry.ReasonSerialization, retry.ReasonDeadlock:
		// The server is fine and back in an idle state once its ReadyForQuery is read; the
		// batch may well run on it again.
		if oldReady || s.awaitReadyForQuery(old) == nil {
			s.awaitCancels()
			s.pool().Release(old)
		} else {
			s.pool().Destroy(old)
		}
	case retry.ReasonReadOnly:
		// relayTracked retired the demoted server's connections already; the others are fine.
		s.pool().Destroy(old)
	default:
		s.pool().Destroy(old)
		// A server that shut down usually means the upstream restarted: its idle siblings are
		// dead too, and dropping them at once saves every other client a failed attempt.
		s.pool().DropIdle()
	}
	err := s.retryPause(attempt)
	if err == nil {
		c, err = s.acquireServer()
	}
	if err != nil {
		s.mu.Lock()
		s.server = nil
		s.retryErr = err
		if reason == retry.ReasonReadOnly {
			s.retryErr = fmt.Errorf("the server is read-only (SQLSTATE %s) and no writable one became available: %w", retry.CodeReadOnlySQLTransaction, err)
		}
		s.mu.Unlock()
		finish()
		return nil, nil, false
	}
	st = stateOf(c)

	var buf []byte
	s.mu.Lock()
	if s.closing {
		// The client left meanwhile; finish is waiting for this loop.
		s.server = nil
		s.retrying = false
		s.wrote.Broadcast()
		s.mu.Unlock()
		s.pool().Release(c)
		return nil, nil, false
	}
	st.Relaying.Store(true)
	s.server = c
	buf = s.Tracker.ResendOn(st, r)
	s.writing = true
	s.retrying = false
	s.wrote.Broadcast()
	s.mu.Unlock()

	_, werr := c.Write(buf)
	s.mu.Lock()
	s.writing = false
	s.wrote.Broadcast()
	s.mu.Unlock()
	if werr != nil {
		s.log.Info("retry on another server: write failed", "err", werr)
	}
	s.srv.metrics.retried(reason)
	return c, st, true
}

// errFatalNotClosed is why a request refused with FATAL is not sent again when the server
// connection did not end after the refusal.
var errFatalNotClosed = errors.New("the server refused the request with a FATAL error but did not close the connection")

// closeWait bounds how long a server that refused a request with FATAL may take to close.
const closeWait = 2 * time.Second

// closesAfterFatal reports whether c, whose last message was a FATAL error, ends without
// sending anything more, as PostgreSQL does after a FATAL.
func closesAfterFatal(c *pool.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(closeWait))
	var b [1]byte
	n, err := c.Read(b[:])
	return n == 0 && err != nil && !deadlineErr(err)
}

// acquireServer takes a server from the pool for this client, within query_wait_timeout, with
// the client's parameters applied.
func (s *session) acquireServer() (*pool.Conn, error) {
	if err := s.rebind(); err != nil {
		return nil, err
	}
	if err := s.srv.pauses.wait(s.context(), s.database); err != nil {
		return nil, &upstreamError{err: fmt.Errorf("wait for the admin console's RESUME: %w", err)}
	}
	if c := s.pool().TryAcquire(); c != nil {
		if err := s.syncParams(s.context(), c); err != nil {
			s.pool().Destroy(c)
			return nil, &upstreamError{err: fmt.Errorf("apply session parameters: %w", err)}
		}
		return c, nil
	}
	wait := s.srv.config().QueryWaitTimeout
	var notice *time.Timer
	if d := s.srv.config().QueryWaitNotice; d > 0 && (wait <= 0 || d < wait) {
		s.wmu.Lock()
		s.waitNotice = true
		s.wmu.Unlock()
		notice = time.AfterFunc(d, s.sendWaitNotice)
	}
	s.mu.Lock()
	s.waitingSince = s.srv.stampNow()
	s.mu.Unlock()
	c, err := s.pool().AcquireWithin(s.context(), wait)
	s.mu.Lock()
	s.waitingSince = 0
	s.mu.Unlock()
	if notice != nil {
		notice.Stop()
		// Under wmu: once this returns, no notice can be written after a reply has begun.
		s.wmu.Lock()
		s.waitNotice = false
		s.wmu.Unlock()
	}
	if err != nil {
		if errors.Is(err, pool.ErrWaitTimeout) {
			msg := fmt.Sprintf("pgsidecar: no server connection became free within query_wait_timeout (%s)", wait)
			if last := s.pool().LastError(); last != nil {
				msg += "; last connection attempt: " + last.Error()
			}
			return nil, &startupError{code: retry.CodeConnectionFailure, msg: msg}
		}
		return nil, &upstreamError{err: err}
	}
	if err := s.syncParams(s.context(), c); err != nil {
		s.pool().Destroy(c)
		return nil, &upstreamError{err: fmt.Errorf("apply session parameters: %w", err)}
	}
	return c, nil
}

// retryPause waits before the attempt'th re-send of a batch (1 for the first): not before the
// first, whose cure is another server or the conflicting transaction that has just ended, and
// with exponential backoff and full jitter from retry_delay before the later ones, so that
// clients refused together do not retry in lockstep.
func (s *session) retryPause(attempt int) error {
	if attempt < 2 {
		return nil
	}
	d := retry.Backoff{Initial: s.srv.config().RetryDelay, Max: s.srv.config().RetryMaxDelay}.Delay(attempt-2, nil)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-s.context().Done():
		return fmt.Errorf("retry: %w", context.Cause(s.context()))
	}
}

// awaitReadyForQuery reads and discards c's messages up to its next ReadyForQuery, for a server
// whose reply to a failed request the client is not shown. Only the rest of an error reply is
// expected, so the wait is short.
func (s *session) awaitReadyForQuery(c *pool.Conn) error {
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	f := wire.Frames{Buf: c.ReadBuffer()}
	for {
		n, err := c.Read(f.Buf[f.W:])
		f.W += n
		for {
			if f.Advance(nil) {
				continue
			}
			typ, length, ok, ferr := f.Next(int(s.maxMsg))
			if ferr != nil {
				return ferr
			}
			if !ok {
				break
			}
			if typ == 'Z' {
				switch {
				case f.W-f.R < 1+length:
					// The rest of it is still to come.
				case f.W-f.R > 1+length:
					return errors.New("server sent more after ReadyForQuery")
				default:
					return nil
				}
				break
			}
			f.R += 5
			f.Remaining = length - 4
		}
		if err != nil {
			return err
		}
		f.Compact()
	}
}

// sendWaitNotice tells a client that has waited query_wait_notice for a server that it is still
// waiting, and why. It runs on a timer while acquireServer waits: nothing else writes to the
// client then (no server is attached, or the one retrying the client's request is blocked
// getting another), and wmu keeps it from racing the end of the wait.
func (s *session) sendWaitNotice() {
	defer s.recoverInTimer("query_wait_notice timer")
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if !s.waitNotice {
		return
	}
	s.waitNotice = false
	st := s.pool().Stat()
	msg := fmt.Sprintf("pgsidecar: waiting for a server connection for %s: %d of %d in use, %d clients waiting (query_wait_timeout %s)",
		s.srv.config().QueryWaitNotice, st.InUse, st.Size, st.Waiting, s.srv.config().QueryWaitTimeout)
	if last := s.pool().LastError(); last != nil {
		msg += "; last connection attempt: " + last.Error()
	}
	buf, _ := (&pgproto3.NoticeResponse{Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: "00000", Message: msg}).Encode(nil)
	// A client that reads nothing must not hold wmu, and with it the session, forever. A
	// notice cut short would leave the client's stream broken, so then the client goes.
	_ = s.conn.SetWriteDeadline(time.Now().Add(time.Second))
	if _, err := s.cio.Write(buf); err != nil {
		s.log.Info("client does not read; closing it", "err", err)
		_ = s.conn.Close()
	}
	_ = s.conn.SetWriteDeadline(time.Time{})
}

// retireServerLocked retires every connection of the pool to the attached server's address:
// idle ones are closed now, the attached one and those other clients hold when released.
func (s *session) retireServerLocked() {
	if s.server == nil {
		return
	}
	if n := s.pool().RetireAddr(s.server.Addr()); n > 0 {
		s.log.Info("upstream server turned read-only; retiring its connections", "addr", s.server.Addr(), "connections", n)
	}
}

// deadlineErr reports whether err is a read deadline firing.
func deadlineErr(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// takeRetryNeeded reports relayTracked's finding that the server refused the remembered batch
// retryably (retryOnNewServer clears it).
func (s *session) takeRetryNeeded() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.RetryNeeded
}

// lostBeforeRequest reports whether the server connection was lost before the remembered
// batch reached it (clientToServer's write failed), so that sending it elsewhere is safe.
func (s *session) lostBeforeRequest() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.WriteFailed && s.Tracker.CanResend()
}

// canRetryLocked reports whether the remembered batch may be sent once more.
func (s *session) canRetryLocked() bool {
	return !s.writing && !s.closing && s.Tracker.RetriesLeft()
}

// retryFailure is the error for a client whose request could not be moved to another server.
func (s *session) retryFailure() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if errors.Is(s.retryErr, errFatalNotClosed) {
		return s.retryErr
	}
	if s.retryErr != nil {
		return fmt.Errorf("the server went away and no other became available: %w", s.retryErr)
	}
	return errors.New("the server went away during the request")
}

// addPendingLocked counts requests sent to the server and starts the query_timeout clock when
// the first of them goes out.
func (s *session) addPendingLocked(requests int) {
	if requests > 0 && s.Pending == 0 {
		s.queryCancelled = nil
		now := s.srv.stampNow()
		s.queryStart, s.reqStart = now, now
		if s.TxStatus != 'T' && s.TxStatus != 'E' {
			s.xactStart = now
		}
		if d := s.srv.config().QueryTimeout; d > 0 && s.queryTimerAt == 0 {
			s.armQueryTimerLocked(d)
		}
	}
	s.Pending += requests
}

// armQueryTimerLocked makes the query timer fire in d.
func (s *session) armQueryTimerLocked(d time.Duration) {
	s.queryTimerAt = s.srv.stampAfter(d)
	if s.queryTimer == nil {
		s.queryTimer = time.AfterFunc(d, s.queryTimedOut)
		return
	}
	s.queryTimer.Reset(d)
}

// stopQueryTimerLocked stops the query timer for good (the session is ending).
func (s *session) stopQueryTimerLocked() {
	if s.queryTimer != nil {
		s.queryTimer.Stop()
	}
	s.queryTimerAt = 0
}

// queryTimedOut cancels the running query like a client's CancelRequest would: PostgreSQL
// then fails it with 57014, which reaches the client as usual, and the server stays usable. A
// server that still has not answered a grace period later is unreachable (a silent network, a hung
// host): its connection is closed, so the client gets 08006 instead of waiting forever.
func (s *session) queryTimedOut() {
	defer s.recoverInTimer("query_timeout timer")
	if h := s.srv.hooks.queryTimer; h != nil {
		h(s)
	}
	srv, cancelled := s.queryTimerFired()
	if srv == nil {
		return
	}
	if cancelled {
		s.mu.Lock()
		s.abandoned = true
		s.mu.Unlock()
		// Aborted, not closed: closing would wait for the relay loop's read, whose loop may be
		// stuck in a write to the client below.
		_ = srv.Abort()
		if s.wmu.TryLock() {
			s.wmu.Unlock()
			s.log.Warn("server did not answer a cancelled query; closing its connection")
			return
		}
		// A write to the client holds wmu: the client is not reading its result, which is
		// why the reply never arrived. It is closed, so that the write fails, the session
		// ends and the server's slot is freed now, not when the client reads again.
		s.log.Warn("client does not read its result; closing it and its server connection")
		_ = s.conn.SetWriteDeadline(time.Now())
		_ = s.conn.Close()
		return
	}
	s.log.Info("query_timeout reached: cancelling the server query", "query_timeout", s.srv.config().QueryTimeout)
	ctx, cancel := context.WithTimeout(s.context(), cancelTimeout)
	defer cancel()
	s.cancelRunningQuery(ctx)
}

// queryTimerFired decides what the query timer does now: nothing (srv nil: the request ended,
// or has time left and the timer is re-armed), cancel srv's query, or close srv (cancelled: its
// query was cancelled a grace period ago and it has not answered).
func (s *session) queryTimerFired() (srv *pool.Conn, cancelled bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing || s.queryTimerAt == 0 {
		return nil, false // stopped meanwhile
	}
	s.queryTimerAt = 0
	srv = s.server
	if srv == nil || s.Pending == 0 && !s.Unsynced {
		// Armed for a request that has ended; the next one arms it again.
		return nil, false
	}
	// The hard stage is for the server that was sent the cancel, and only that one.
	cancelled = s.queryCancelled == srv
	d := s.srv.config().QueryTimeout
	if ran := s.srv.since(s.queryStart); !cancelled && ran < d {
		// Armed for an earlier request; this one has time left.
		s.armQueryTimerLocked(d - ran)
		return nil, false
	}
	if !cancelled {
		s.queryCancelled = srv
		s.armQueryTimerLocked(min(max(d, time.Second), maxCancelGrace))
	}
	return srv, cancelled
}

// maxCancelGrace bounds how long a server may take to end a query after its cancel request
// (query_timeout itself, at least a second).
const maxCancelGrace = 5 * time.Second

// cancelTimeout bounds the delivery of a cancel request to a server.
const cancelTimeout = 3 * time.Second

// dropGoneServer detaches a server that announced its shutdown after relayTracked finished the
// client's exchange (serverGone). clientToServer waits for this before it sends more.
func (s *session) dropGoneServer() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ServerGone {
		return false
	}
	s.ServerGone = false
	s.server = nil
	s.loopDone = nil
	s.TxStatus = 'I'
	s.wrote.Broadcast()
	return true
}
