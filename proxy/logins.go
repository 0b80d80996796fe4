package proxy

import (
	"context"
	"net"
	"slices"
	"sync"
	"time"
)

// Logins in progress are bounded (max_logins_in_progress): a flood of connections that never
// finish logging in (slowloris) must not hold the proxy's memory, nor keep a legitimate client
// out. At the bound, the accept loop waits before it starts another login: for one in progress
// to end, or for the oldest to have taken loginEvictAge (a prompt client logs in within
// milliseconds), which is then closed to make room. Connections meanwhile wait in the kernel's
// listen backlog. So a flood cannot hold the slots for long, and a burst of clients that log in
// promptly, however large, is let in as fast as the logins go, never refused.

// loginEvictAge is how long a login must have been in progress before it may be closed to make
// room for a new one.
const loginEvictAge = time.Second

// loginQueue is the sessions still logging in, oldest first. Guarded by Server.mu.
type loginQueue []*session

// admitLogin (accept loop) waits until sess may start logging in, and records that it does;
// it closes the oldest login in progress to make room when that one is old enough. It reports
// false when the listeners are closing meanwhile.
func (s *Server) admitLogin(sess *session) bool {
	for {
		now := time.Now()
		s.mu.Lock()
		var victim *session
		if max := s.config().MaxLoginsInProgress; max > 0 && len(s.logins) >= max {
			age := now.Sub(s.timeOf(s.logins[0].loginStart))
			if age < loginEvictAge {
				s.mu.Unlock()
				if !s.awaitLoginRoom(loginEvictAge - age) {
					return false
				}
				continue
			}
			victim = s.logins[0]
			s.logins = slices.Delete(s.logins, 0, 1)
		}
		sess.loginStart = s.stampNow()
		s.logins = append(s.logins, sess)
		s.mu.Unlock()
		if victim != nil {
			s.metrics.loginEvicted()
			victim.closeLogin()
		}
		return true
	}
}

// awaitLoginRoom waits at most d for a login to end; false once the listeners are closing.
func (s *Server) awaitLoginRoom(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-s.loginEnded:
		return true
	case <-t.C:
		return true
	case <-s.acceptStop:
		return false
	}
}

// endLogin records that sess is no longer logging in.
func (s *Server) endLogin(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := slices.Index(s.logins, sess); i >= 0 {
		s.logins = slices.Delete(s.logins, i, i+1)
		select {
		case s.loginEnded <- struct{}{}:
		default: // the accept loop has been told already
		}
	}
}

// loginsInProgress returns how many connections are logging in.
func (s *Server) loginsInProgress() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.logins)
}

// closeLogin ends a login in progress from another goroutine: its reads fail.
func (s *session) closeLogin() {
	s.mu.Lock()
	conn := s.conn // the login may be switching it to TLS
	s.mu.Unlock()
	s.closeClient(conn) // the login may have just ended, and the client been parked
}

// Failed logins are throttled per client address: after failedLoginsFree failures within
// failedLoginWindow, each further failure is answered after a delay that grows with the count
// (up to failedLoginMaxDelay), so that guessing passwords is slow.
const (
	failedLoginsFree    = 3
	failedLoginWindow   = time.Minute
	failedLoginStep     = 200 * time.Millisecond
	failedLoginMaxDelay = 2 * time.Second
	// maxFailedLoginAddrs bounds the addresses remembered.
	maxFailedLoginAddrs = 4096
)

// failedLogins counts recent failed logins per client address.
type failedLogins struct {
	mu     sync.Mutex
	byAddr map[string]failedLogin
}

type failedLogin struct {
	count int
	last  time.Time
}

// failed records a failed login from addr and returns how long to wait before answering it.
func (f *failedLogins) failed(addr string, now time.Time) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.byAddr == nil {
		f.byAddr = make(map[string]failedLogin)
	}
	e := f.byAddr[addr]
	if now.Sub(e.last) > failedLoginWindow {
		e = failedLogin{}
	}
	e.count++
	e.last = now
	if _, known := f.byAddr[addr]; !known && len(f.byAddr) >= maxFailedLoginAddrs {
		// Full: forget the entries that are no longer throttled, or else all of them.
		for a, old := range f.byAddr {
			if now.Sub(old.last) > failedLoginWindow {
				delete(f.byAddr, a)
			}
		}
		if len(f.byAddr) >= maxFailedLoginAddrs {
			clear(f.byAddr)
		}
	}
	f.byAddr[addr] = e
	if e.count <= failedLoginsFree {
		return 0
	}
	return min(time.Duration(e.count-failedLoginsFree)*failedLoginStep, failedLoginMaxDelay)
}

// succeeded forgets addr's failures.
func (f *failedLogins) succeeded(addr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.byAddr, addr)
}

// clientHost is the address failed logins are counted by: the client's IP.
func clientHost(addr net.Addr) string {
	if tcp, ok := addr.(*net.TCPAddr); ok {
		return tcp.IP.String()
	}
	return addr.String()
}

// loginFailed counts a failed authentication of the session's client and waits the throttle
// delay for its address, or until the session ends.
func (s *session) loginFailed(ctx context.Context) {
	s.srv.metrics.authFailed()
	d := s.srv.failedLogins.failed(clientHost(s.conn.RemoteAddr()), time.Now())
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
