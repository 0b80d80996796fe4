package proxy

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

// The end of a session: stopping its relay loop, and giving its server back clean or closing
// it.

// finish ends the session: it stops serverToClient and returns the attached server to the pool
// when its state is known to be clean (rolling back an open transaction first), or closes it.
func (s *session) finish(cause error) {
	s.logEnd("client session ended", cause)
	defer func() {
		s.mu.Lock()
		s.DropStatements()
		s.stopQueryTimerLocked()
		s.foldUsageLocked() // what accountLocked has not folded yet
		s.mu.Unlock()
	}()
	// A clean end (Terminate, nil) skips the checks: each errors.As target is an allocation.
	var pe *wire.ProtocolError
	if cause != nil && errors.As(cause, &pe) {
		s.awaitResults(drainTimeout)
	}
	s.mu.Lock()
	s.closing = true
	srv, done := s.server, s.loopDone
	s.mu.Unlock()
	if srv != nil {
		// Wake serverToClient: it sees closing and returns without touching the server.
		_ = srv.SetReadDeadline(time.Now())
		_ = s.conn.SetWriteDeadline(time.Now())
		if done != nil {
			<-done
		}
	}
	// The client is told about its own protocol errors and about refusals (such as
	// query_wait_timeout), once nothing else writes to it.
	var se *startupError
	var ue *upstreamError
	var ce *pgconn.PgError // refused by the tracker (54000)
	if cause != nil && (errors.As(cause, &pe) || errors.As(cause, &se) || errors.As(cause, &ue) || errors.As(cause, &ce) || errPanic(cause)) {
		_ = s.conn.SetWriteDeadline(time.Time{})
		s.sendError(clientError(cause))
	}
	if srv == nil {
		return
	}
	s.mu.Lock()
	srv = s.server
	s.server = nil
	clean := s.loopErr == nil && s.Pending == 0 && s.Queued() == 0 && !s.Unsynced && !s.Partial && !s.panicked.Load()
	s.ResetQueue()
	status := s.TxStatus
	s.mu.Unlock()
	if srv == nil {
		return
	}
	_ = srv.SetReadDeadline(time.Time{})
	if clean {
		// A cancel landing on the reset would fail it and cost the connection.
		s.awaitCancels()
	}
	if !clean || !s.resetServer(srv, status) {
		s.pool().Destroy(srv)
		return
	}
	s.pool().Release(srv)
}

// resetServer makes a server that a client left fit for the next one: an open transaction is
// rolled back, and in session mode server_reset_query runs. It reports success.
func (s *session) resetServer(srv *pool.Conn, status byte) bool {
	ctx, cancel := context.WithTimeout(s.srv.ctx, 10*time.Second)
	defer cancel()
	if status != 'I' {
		if err := srv.Exec(ctx, "ROLLBACK"); err != nil {
			s.log.Debug("rollback after client left failed", "err", err)
			return false
		}
	}
	st := stateOf(srv)
	s.mu.Lock()
	pinned, dirty := s.Pinned != "", s.ParamsDirty
	s.mu.Unlock()
	reset := ""
	switch {
	case pinned:
		// A pinned client left state behind that only a full reset removes.
		reset = "DISCARD ALL"
	case !s.txPooling:
		reset = s.srv.config().ServerResetQuery
	case dirty:
		reset = "RESET ALL"
	}
	if reset != "" {
		if err := srv.Exec(ctx, reset); err != nil {
			s.log.Debug("server reset failed", "query", reset, "err", err)
			return false
		}
		st.Params, st.ParamsKey = nil, ""
		if reset != "RESET ALL" {
			st.Clear()
		}
	}
	return true
}

// drainTimeout bounds how long a session that is ending waits for results still in flight.
const drainTimeout = 5 * time.Second

// awaitResults waits until the server has answered every request sent so far, or timeout.
func (s *session) awaitResults(timeout time.Duration) {
	s.mu.Lock()
	if s.server == nil || s.Pending == 0 {
		s.mu.Unlock()
		return
	}
	ch := make(chan struct{})
	s.drained = ch
	done := s.loopDone
	s.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-ch:
	case <-done:
	case <-t.C:
	}
}
