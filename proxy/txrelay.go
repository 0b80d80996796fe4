package proxy

import (
	"fmt"

	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy/txmode"
	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

// The session's side of transaction mode: it feeds the client's messages to its tracker under
// its lock, attaches a server when they need one, writes what the tracker decided to send, and
// holds a Bind while the tracker reads a statement's shape back.

// forwardTracked is forwardClient for transaction mode: besides relaying, it keeps each
// client's prepared statements on whichever server it has, pins clients that leave state
// behind, and queues what each message expects back so that serverToClient can match replies.
func (s *session) forwardTracked(f *wire.Frames) error {
	f.Need = 0
	if err := s.answerLocally(f); err != nil {
		return err
	}
	for {
		b, attach := s.scanTracked(f)
		if attach {
			if err := s.attach(); err != nil {
				return err
			}
			continue
		}
		// PostgreSQL answers pg_cancel_backend once the signal is sent: before anything
		// the server answers can release the tracker's reply.
		s.carryOutSignals(b.signals)
		if len(b.out) > 0 && b.srv != nil {
			_, werr := b.srv.Write(b.out)
			if werr = s.wroteTracked(werr); werr != nil {
				return fmt.Errorf("write to server: %w", werr)
			}
		}
		if b.synthAtHead {
			if werr := s.emitSynths(); werr != nil {
				return werr
			}
			// A batch the proxy answered entirely leaves nothing to release the server on.
			s.kickIfReleasable()
		}
		if b.err != nil {
			return b.err
		}
		if b.terminate {
			return errTerminate
		}
		if !b.hold {
			break
		}
		s.awaitShape()
	}
	f.Compact()
	return nil
}

// awaitShape waits until the shape of the statement being verified has been read back from
// the server, or the server loop has ended (the next scan then finds out).
//
// verifyShape: a client that described a named statement chose the formats of its Binds, and
// decodes their rows, by the shape it was told. A server that prepares the statement afresh
// (it never had it, or the statement changed generation) may find another shape, after a
// schema change; PostgreSQL itself would fail the client's Bind with 0A000. So before such a
// Bind, the proxy prepares and describes the statement, holds the Bind until the reply is in,
// and sends it only if the shape is the client's (scanTracked, trackBind).
func (s *session) awaitShape() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for !s.VerifyDone && s.server != nil && s.loopErr == nil && !s.closing {
		s.wrote.Wait(&s.mu)
	}
}

// trackedBatch is what scanTracked found in the client's buffered messages.
type trackedBatch struct {
	out         []byte          // to write to srv
	srv         *pool.Conn      // the attached server (nil: nothing to write)
	err         error           // a protocol error after the messages before it
	terminate   bool            // the client sent Terminate
	synthAtHead bool            // replies the proxy makes itself are next in line
	hold        bool            // the scan stopped at a Bind that waits for verifyShape
	signals     []txmode.Signal // SQL signals of other clients to carry out before answering
}

// scanTracked scans the client's buffered messages for forwardTracked under the session lock
// (released by defer, so that a panic in the scan leaves it free for the session's cleanup).
// attach asks for a server first: the messages need one and none is attached. The check is made
// under the same lock as the scan, as the server may be released in between.
func (s *session) scanTracked(f *wire.Frames) (b trackedBatch, attach bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.retrying || s.ServerGone {
		// serverToClient is moving the last batch to another server, or dropping one that
		// is shutting down.
		s.wrote.Wait(&s.mu)
	}
	if s.server == nil && txmode.NeedsServer(f) {
		return b, true
	}
	var st *txmode.ServerState
	if s.server != nil {
		st = stateOf(s.server)
	}
	if s.Pending == 0 {
		s.noteRequestTextLocked(f.Buf[f.R:f.W])
	}
	c := s.Tracker.ScanClient(f, st)
	b = trackedBatch{err: c.Err, terminate: c.Terminate, synthAtHead: c.SynthAtHead, hold: c.Hold, signals: s.afterTrackLocked()}
	if len(c.Out) > 0 {
		b.out, b.srv = c.Out, s.server
		s.addPendingLocked(c.Requests)
		if c.Unsynced >= 0 {
			s.Unsynced = c.Unsynced == 1
		}
		s.Partial = c.Partial
		s.writing = true
	}
	return b, false
}

// wroteTracked records the end of forwardTracked's write to the server, which failed with err
// (nil: it did not), and returns the error the client loop should end with.
func (s *session) wroteTracked(err error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writing = false
	s.wrote.Broadcast()
	if err == nil {
		s.kickIfReleasableLocked()
		return nil
	}
	if connectionLost(err) && s.Tracker.CanResend() {
		// The server was gone before the batch reached it; serverToClient sees the
		// connection fail too and sends the batch to another server.
		s.WriteFailed = true
		return nil
	}
	return err
}

// kickIfReleasable is kickIfReleasableLocked for a caller without the lock.
func (s *session) kickIfReleasable() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kickIfReleasableLocked()
}

// emitSynths sends the responses the proxy answers itself that are next in line. The lock
// order is wmu, then mu, as in serverToClient.
func (s *session) emitSynths() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	out := s.takeSynths()
	if len(out) == 0 {
		return nil
	}
	if _, err := s.cio.Write(out); err != nil {
		return fmt.Errorf("write to client: %w", err)
	}
	return nil
}

// takeSynths takes the replies the proxy makes itself that are next in line.
func (s *session) takeSynths() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Tracker.PopSynths()
}

// answerLocally answers, without a server, what an idle client sends that the proxy can answer
// as PostgreSQL would: Parse of a statement text a server has already accepted, Close of a
// statement, and the Sync after them. Drivers prepare statements this way before using them
// (pgbench -M prepared does, one blocking round trip per statement), and needing a server for
// it would make such a client wait for one, or deadlock with its siblings holding them.
func (s *session) answerLocally(f *wire.Frames) error {
	out := s.localAnswers(f)
	if len(out) == 0 {
		return nil
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if _, err := s.cio.Write(out); err != nil {
		return fmt.Errorf("write to client: %w", err)
	}
	return nil
}

// localAnswers consumes the run of messages answerLocally can answer, if there is one, and
// returns the answers.
func (s *session) localAnswers(f *wire.Frames) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.server != nil {
		return nil
	}
	out := s.Tracker.AnswerIdle(f)
	s.afterTrackLocked()
	return out
}
