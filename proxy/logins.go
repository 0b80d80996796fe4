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
// out. At the bound, the oldest login in progress is closed to make room if it has taken
// longer than loginEvictAge (a prompt client logs in within milliseconds); otherwise the new
// connection is refused. So a flood cannot hold the slots for long, while a burst of clients
// that log in promptly is never cut.

// loginEvictAge is how long a login must have been in progress before it may be closed to make
// room for a new one.
const loginEvictAge = time.Second

// loginQueue is the sessions still logging in, oldest first. Guarded by Server.mu.
type loginQueue []*session

// beginLogin records that sess is logging in, making room at max_logins_in_progress by closing
// the oldest login in progress if it is old enough. It reports false, and records nothing, when
// there is no room: the caller refuses the connection.
func (s *Server) beginLogin(sess *session) bool {
	now := time.Now()
	s.mu.Lock()
	var victim *session
	if max := s.config().MaxLoginsInProgress; max > 0 && len(s.logins) >= max {
		if now.Sub(s.logins[0].loginStart) < loginEvictAge {
			s.mu.Unlock()
			s.metrics.loginEvicted()
			return false
		}
		victim = s.logins[0]
		s.logins = slices.Delete(s.logins, 0, 1)
	}
	sess.loginStart = now
	s.logins = append(s.logins, sess)
	s.mu.Unlock()
	if victim != nil {
		s.metrics.loginEvicted()
		victim.closeLogin()
	}
	return true
}

// endLogin records that sess is no longer logging in.
func (s *Server) endLogin(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := slices.Index(s.logins, sess); i >= 0 {
		s.logins = slices.Delete(s.logins, i, i+1)
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
	_ = conn.Close()
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
