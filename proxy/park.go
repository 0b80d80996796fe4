package proxy

import (
	"errors"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/rawio"
)

// Idle clients hold no goroutine. A transaction-mode client that has no server and nothing
// buffered, and that has sent nothing for a while, is parked: its socket is handed to the
// Server's rawio.Watcher (one epoll set for every parked client), its client goroutine ends
// and its read buffer goes with it; when the socket becomes readable, a new goroutine resumes
// the session where it stopped. A parked client then costs its session struct and its socket,
// not a goroutine stack of 2 to 8 KB and a buffer of 1 KB.
//
// Clients are not parked the moment they go idle, which would add a system call and a
// goroutine start to every transaction of a busy client: the client goroutine waits in the
// runtime's poller as before, and the parker goroutine, every parkInterval, kicks the ones
// that have waited since its last round with no server attached (a read deadline in the
// past). So a client is parked between parkInterval and twice that after it fell idle.
//
// TLS clients, session-mode clients and admin console clients are not parked.

// parkInterval is how often the parker looks for clients to park.
const parkInterval = 500 * time.Millisecond

// errParked ends a client goroutine whose session is parked: it must not clean up.
var errParked = errors.New("session parked")

// parker parks idle sessions (see above); it owns the Watcher and the goroutine that kicks.
type parker struct {
	w        *rawio.Watcher
	stop     chan struct{}
	wg       sync.WaitGroup
	stopOnce sync.Once
	// The kick loop's, for trimAfterBurst: the number of sessions at the last trim and at the
	// last round, and when it last trimmed.
	sessionsAtTrim    int
	sessionsLastRound int
	trimmedAt         time.Time
}

// startParker starts parking idle sessions of s; nil when the system offers no Watcher (the
// clients then keep their goroutines).
func (s *Server) startParker() *parker {
	w, err := rawio.NewWatcher()
	if err != nil {
		s.log.Debug("idle clients will keep a goroutine each", "err", err)
		return nil
	}
	p := &parker{w: w, stop: make(chan struct{})}
	p.wg.Add(1)
	go p.kickLoop(s)
	return p
}

// close stops kicking and the Watcher; a second call does nothing. Called once no session is
// left (a parked session left behind would be woken by the Watcher's Close, to read a closed
// socket).
func (p *parker) close() {
	if p == nil {
		return
	}
	p.stopOnce.Do(func() {
		close(p.stop)
		p.wg.Wait()
		_ = p.w.Close()
	})
}

func (p *parker) kickLoop(s *Server) {
	defer p.wg.Done()
	t := time.NewTicker(parkInterval)
	defer t.Stop()
	var batch []*session
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		batch = batch[:0]
		s.mu.Lock()
		for sess := range s.sessions {
			if sess.waitingLong() {
				batch = append(batch, sess)
			}
		}
		sessions := len(s.sessions)
		s.mu.Unlock()
		for i, sess := range batch {
			sess.kickToPark()
			batch[i] = nil
		}
		p.trimAfterBurst(s, sessions)
	}
}

// Trimming after a burst: a burst of logins (an application's pods restarting, a connection
// storm) leaves the heap at twice what the clients that stay need, and a burst of departures
// leaves it as large as before; the runtime gives that back to the system only slowly. Once
// the number of sessions has moved by at least trimMinSessions since the last trim and has
// held still for a round, the parker returns what is free at once, at most every
// trimInterval: a full collection, a few milliseconds of CPU. The goroutines kept for logins
// and relay loops (workers) beyond a few end first, as a burst leaves up to maxIdleWorkers of
// each with a grown stack.
const (
	trimMinSessions = 256
	trimInterval    = time.Second
)

// keptAfterBurst is how many idle workers of each kind a trim keeps.
const keptAfterBurst = 16

// trimAfterBurst returns free heap memory to the system after a burst of logins or departures
// (above), and ends the idle workers beyond keptAfterBurst; sessions is the number of srv's
// sessions now.
func (p *parker) trimAfterBurst(srv *Server, sessions int) {
	moved, quiet := abs(sessions-p.sessionsAtTrim), sessions == p.sessionsLastRound
	p.sessionsLastRound = sessions
	if moved < trimMinSessions || !quiet || time.Since(p.trimmedAt) < trimInterval {
		return
	}
	p.sessionsAtTrim = sessions
	p.trimmedAt = time.Now()
	// The workers a burst of logins needed end first, so that their stacks are returned too.
	srv.sessionRuns.trim(keptAfterBurst)
	srv.relays.trim(keptAfterBurst)
	// Not conditioned on the runtime's count of free heap: right after a burst the garbage
	// is mostly unswept and counted as in use.
	debug.FreeOSMemory()
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}

// waitingLong reports (parker goroutine only) whether the client goroutine has been waiting
// for the client in one read since the parker's last round.
func (s *session) waitingLong() bool {
	reads := s.reads.Load()
	long := reads&1 == 1 && reads == s.readsSeen
	s.readsSeen = reads
	return long
}

// kickToPark wakes the client goroutine from its read, with a deadline in the past, if it can
// be parked: the goroutine then parks (clientToServer).
func (s *session) kickToPark() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.parkableLocked() || s.reads.Load()&1 == 0 {
		return
	}
	s.kicked = true
	_ = s.conn.SetReadDeadline(time.Now())
}

// parkableLocked reports whether the session may be parked now, apart from its buffered input.
func (s *session) parkableLocked() bool {
	return s.loggedIn && s.srv.parker != nil && s.raw != nil && s.txPooling && s.console == nil &&
		s.server == nil && s.rereading == nil && !s.closing
}

// takeKick reports, after a read ended with a deadline error, whether the parker caused it,
// and clears the kick. The idle timeout's deadline is set again for the rest of its time.
func (s *session) takeKick() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.kicked {
		return false
	}
	s.kicked = false
	if s.idleDeadline != 0 && s.srv.stampNow() >= s.idleDeadline {
		return false // the client_idle_timeout passed too: that is the error
	}
	_ = s.conn.SetReadDeadline(s.srv.timeOf(s.idleDeadline))
	return true
}

// park hands the idle client's socket to the Watcher and reports whether the session is now
// parked, in which case the calling goroutine must return errParked at once and touch the
// session no more: a wake-up may already be running it on another goroutine.
func (s *session) park() bool {
	s.mu.Lock()
	if !s.parkableLocked() {
		s.mu.Unlock()
		return false
	}
	if s.idleDeadline != 0 {
		d := -s.srv.since(s.idleDeadline)
		if s.idleTimer == nil {
			s.idleTimer = time.AfterFunc(d, s.idleTimerFired)
		} else {
			s.idleTimer.Reset(d)
		}
	}
	s.Tracker.Shed()
	if s.Pending == 0 && !s.retrying {
		s.dropContext(false) // nothing waits on it: the next request makes another
	}
	s.parked.Store(true)
	s.mu.Unlock()
	if err := s.srv.parker.w.Watch(s.raw, s.id, s); err != nil {
		// The client keeps its goroutine, unless a wake-up (Close, the idle timer) won.
		if s.parked.CompareAndSwap(true, false) {
			s.mu.Lock()
			s.stopIdleTimerLocked()
			s.mu.Unlock()
			s.log.Debug("could not park an idle client", "err", err)
			return false
		}
	}
	return true
}

// stopIdleTimerLocked stops the timer of a parked client's client_idle_timeout.
func (s *session) stopIdleTimerLocked() {
	if s.idleTimer != nil {
		s.idleTimer.Stop()
	}
}

// Wake resumes a parked session (rawio.Waker): its socket is readable or hung up. Runs on the
// Watcher's goroutine.
func (s *session) Wake() { s.unpark(false) }

// unpark resumes the session on a new goroutine if it is parked; byOther says it was woken
// by something other than its Watcher, which then forgets its watch.
func (s *session) unpark(byOther bool) {
	if !s.parked.CompareAndSwap(true, false) {
		return
	}
	if byOther {
		s.srv.parker.w.Forget(s.id)
	}
	s.srv.sessionRuns.start(sessionTask{s: s, resume: true})
}

// idleTimerFired resumes a parked client whose client_idle_timeout passed: its read then
// fails with the deadline, and it is told.
func (s *session) idleTimerFired() {
	defer s.recoverInTimer("client idle timer")
	s.unpark(true)
}

// closeClient closes the client's connection from another goroutine, resuming the session if
// it is parked, so that it sees the close and cleans up.
func (s *session) closeClient(conn interface{ Close() error }) {
	_ = conn.Close()
	s.unpark(true)
}

// deadlineKick reports whether err, from a client read, is a kick to park (see kickToPark).
func (s *session) deadlineKick(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded) && s.takeKick()
}
