package proxy

import (
	"fmt"
	"strings"
)

// debugState describes every session's relay state, for diagnosing a stuck test.
func (s *Server) debugState() string {
	var b strings.Builder
	s.mu.Lock()
	defer s.mu.Unlock()
	for sess := range s.sessions {
		sess.mu.Lock()
		var pid uint32
		local := ""
		if sess.server != nil {
			pid = sess.server.PID
			local = sess.server.LocalAddr().String()
		}
		fmt.Fprintf(&b, "conn %d: server=%v pid=%d local=%s pending=%d resp=%d unsynced=%v partial=%v writing=%v tx=%q pinned=%q closing=%v\n",
			sess.id, sess.server != nil, pid, local, sess.Pending, sess.Queued(), sess.Unsynced, sess.Partial, sess.writing, sess.TxStatus, sess.Pinned, sess.closing)
		sess.Tracker.Describe(&b)
		sess.mu.Unlock()
	}
	return b.String()
}
