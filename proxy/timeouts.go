package proxy

import (
	"fmt"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

// What holds a client's reads back: the bound on its requests in flight, and its idle timeouts.

// awaitRoom holds a transaction-mode client's reads while max_requests_in_flight of its
// requests and the proxy's own replies queued behind them await their answers, until half of
// them have drained: a client that pipelines without reading is read no further, rather than
// buffered without limit.
func (s *session) awaitRoom() error {
	limit := s.srv.config().MaxRequestsInFlight
	s.mu.Lock()
	defer s.mu.Unlock()
	if limit <= 0 || s.Queued() < limit || s.Partial {
		// A message partly sent must be finished first: the server waits for its rest.
		return nil
	}
	if srv := s.server; srv != nil && !s.writing {
		// The server holds replies back until a Sync or Flush, which the client may well
		// have sent, unread now: ask for them.
		s.writing = true
		s.mu.Unlock()
		_, err := srv.Write(wire.AppendFlush(nil))
		s.mu.Lock()
		s.writing = false
		s.wrote.Broadcast()
		if err != nil {
			return fmt.Errorf("write to server: %w", err)
		}
	}
	s.awaitingRoom = true
	for s.Queued() > limit/2 && s.server != nil && s.loopErr == nil && !s.closing {
		s.wrote.Wait(&s.mu)
	}
	s.awaitingRoom = false
	return nil
}

// armIdleTimeout sets the client read deadline for client_idle_timeout (no server attached)
// and reports whether either idle timeout is on. idle_transaction_timeout is armed by
// serverToClient when a transaction goes idle (armTxIdleLocked). With both off (the default)
// it costs nothing.
func (s *session) armIdleTimeout(f *wire.Frames) bool {
	idle, inTx := s.srv.config().ClientIdleTimeout, s.srv.config().IdleTransactionTimeout
	if idle <= 0 && inTx <= 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kicked = false // the deadline set here replaces the parker's
	switch {
	case idle > 0 && s.server == nil && f.R == f.W && f.Remaining == 0:
		// Kept over the reads of one idle period: a kick to park (park.go) must not give the
		// client its time again.
		if s.idleDeadline == 0 {
			s.idleDeadline = s.srv.stampAfter(idle)
		}
		_ = s.conn.SetReadDeadline(s.srv.timeOf(s.idleDeadline))
	case s.server != nil && inTx > 0:
		s.idleDeadline = 0
		s.armTxIdleLocked()
	default:
		s.idleDeadline = 0
		_ = s.conn.SetReadDeadline(time.Time{})
	}
	return true
}

// armIdleAfterRelease starts the client_idle_timeout clock once the client's server went back
// to the pool: clientToServer's read began while the server was attached, without it.
func (s *session) armIdleAfterRelease() {
	idle := s.srv.config().ClientIdleTimeout
	if idle <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.server == nil && !s.closing && s.idleDeadline == 0 {
		s.idleDeadline = s.srv.stampAfter(idle)
		if !s.kicked {
			// A kick's deadline stands (the read may have failed on it already): takeKick
			// sets this one after it.
			_ = s.conn.SetReadDeadline(s.srv.timeOf(s.idleDeadline))
		}
	}
}

// armTxIdleLocked starts or stops the idle_transaction_timeout clock on the client's reads:
// it runs while the client holds a server inside a transaction with nothing in flight.
func (s *session) armTxIdleLocked() {
	d := s.srv.config().IdleTransactionTimeout
	if d <= 0 {
		return
	}
	s.kicked = false // the deadline set here replaces the parker's
	if s.server != nil && (s.TxStatus == 'T' || s.TxStatus == 'E') && s.Pending == 0 && s.Queued() == 0 && !s.Unsynced {
		_ = s.conn.SetReadDeadline(time.Now().Add(d))
	} else {
		_ = s.conn.SetReadDeadline(time.Time{})
	}
}

// idleTimeoutError is what a client idle past its timeout is told, as PostgreSQL 14+ says it.
func (s *session) idleTimeoutError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.server != nil && (s.TxStatus == 'T' || s.TxStatus == 'E') {
		return &startupError{code: retry.CodeIdleInTransactionTimeout, msg: "terminating connection due to idle-in-transaction timeout (pgsidecar idle_transaction_timeout)"}
	}
	return &startupError{code: retry.CodeIdleSessionTimeout, msg: "terminating connection due to idle-session timeout (pgsidecar client_idle_timeout)"}
}
