package txmode

import (
	"bytes"
	"slices"

	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

// maxRetryBatch bounds the batches kept for a re-run after a schema change.
const maxRetryBatch = 16 << 10

// rememberedBatch is a batch kept to be sent again (rememberBatch), with how that went.
type rememberedBatch struct {
	// batch and entries are what was sent and the replies it expects (empty: nothing kept).
	batch   []byte
	entries []Entry
	// attempts counts how often it was sent again; replied is set once the server sent any
	// part of its results.
	attempts int
	replied  bool
	// reason is set with the Tracker's RetryNeeded: why the server refused the batch, as the
	// pgsidecar_retries_total reason (a retry.Reason). oldReady says the refusing server's
	// ReadyForQuery was already read (conflicts only: that server stays usable).
	reason   string
	oldReady bool
}

// remembered returns the remembered batch's entries (none when nothing is kept).
func (t *Tracker) remembered() []Entry {
	if t.rb == nil {
		return nil
	}
	return t.rb.entries
}

// rememberBatch keeps a copy of what a batch sent to the server when it could be sent
// again: it started a transaction with nothing in flight and is either one simple Query or an
// execution of prepared statements (Bind, Describe, Execute, Sync, and the proxy's own Parse of
// them). Whether it is sent again depends on how the first attempt failed (see
// rerunBatch and the proxy's re-send on another server), never on a guess that it did not run.
func (t *Tracker) rememberBatch(out []byte, startsIdle bool) {
	if rb := t.rb; rb != nil {
		rb.batch, rb.entries, rb.attempts, rb.replied = rb.batch[:0], rb.entries[:0], 0, false
	}
	if !startsIdle || len(out) > maxRetryBatch || t.resp.len() == 0 {
		return
	}
	entries := t.resp.e[t.resp.h:]
	for _, e := range entries {
		switch e.msg {
		case 'B', 'D', 'E', 'S':
			if e.swallow {
				return
			}
		case 'P':
			// The proxy's own Parse of a shared statement, or the client's unnamed one: both
			// only prepare.
			if !(e.swallow && e.stmt != nil) && !(e.unnamed && !e.swallow) {
				return
			}
		case 'Q':
			if len(entries) != 1 || e.swallow {
				return
			}
		default:
			return
		}
	}
	if last := entries[len(entries)-1].msg; last != 'S' && last != 'Q' {
		return
	}
	if t.rb == nil {
		t.rb = &rememberedBatch{}
	}
	t.rb.batch = append(t.rb.batch, out...)
	t.rb.entries = append(t.rb.entries, entries...)
}

// rerunBatch handles a failure of a shared statement on the first message of a
// remembered batch: 0A000 "cached plan must not change result type" after a schema change, or
// 26000 from a server that lost the statement. Nothing of the batch reached the client, so the
// proxy drops the error and the ReadyForQuery that follows it, prepares the statement afresh and
// sends the batch again. The client sees the result (its Describe of the portal tells it the
// shape), where PostgreSQL alone would have failed the statement once. It reports whether it did
// so; reason labels the retry.
func (t *Tracker) rerunBatch(ps *Stmt, st *ServerState, reason string) bool {
	n := len(t.remembered())
	if n == 0 || t.resp.len() != n {
		return false
	}
	rb := t.rb
	described, executes := 0, 0
	for _, e := range rb.entries {
		switch {
		case e.msg == 'P' || e.msg == 'Q':
			return false
		case e.msg == 'D' && e.portal:
			described++
		case e.msg == 'E':
			executes++
		}
	}
	if described < executes {
		// A client that does not describe its portals decodes the new rows with the old
		// types (pgx's cached statements ask for binary results by the old column types):
		// it must get the error, as from PostgreSQL, and prepare again itself.
		return false
	}
	// The failed Bind heads the queue and the batch's Sync ends it: the server skips to it.
	for h := t.resp.head(); h.msg != 'S'; h = t.resp.head() {
		t.resp.pop()
	}
	t.resp.head().swallow = true
	st.remove(ps)
	var buf []byte
	buf = wire.AppendClose(buf, 'S', ps.name)
	buf = append(buf, ps.parse...)
	buf = append(buf, rb.batch...)
	t.resp.push(Entry{msg: 'C', swallow: true})
	t.resp.push(Entry{msg: 'P', swallow: true, stmt: ps})
	for _, e := range rb.entries {
		t.resp.push(e)
	}
	st.add(ps)
	rb.batch, rb.entries = rb.batch[:0], rb.entries[:0]
	b := t.bufs()
	b.resend = append(b.resend, buf...)
	t.rerunReason = reason
	return true
}

// batchCommits reports whether the remembered batch holds a request that may commit on its
// own (CALL, DO, VACUUM, ...): once a server got it, it is never sent again.
func (t *Tracker) batchCommits() bool {
	for _, e := range t.remembered() {
		if e.commits {
			return true
		}
	}
	return false
}

// firstReply reports whether the server has not answered any part of the remembered
// batch yet (so no byte of its result has reached the client).
func (t *Tracker) firstReply() bool {
	n := len(t.remembered())
	if n == 0 || t.resp.len() != n || t.rb.replied {
		return false
	}
	for i, e := range t.rb.entries {
		h := t.resp.e[t.resp.h+i]
		if h.msg != e.msg || h.stmt != e.stmt {
			return false
		}
	}
	return true
}

// CanResend reports whether the remembered batch is what is in flight, and so could be sent to
// another server.
func (t *Tracker) CanResend() bool {
	n := len(t.remembered())
	return n > 0 && t.resp.len() == n
}

// RetriesLeft reports whether the remembered batch may be sent once more (retries).
func (t *Tracker) RetriesLeft() bool { return t.attempts() < t.lim.Retries }

// attempts returns how often the remembered batch was sent again.
func (t *Tracker) attempts() int {
	if t.rb == nil {
		return 0
	}
	return t.rb.attempts
}

// Resend is a remembered batch taken to be sent to another server.
type Resend struct {
	Reason       string // the retry reason (a retry.Reason)
	OldReady     bool   // the refusing server's ReadyForQuery was read already (conflicts)
	WroteNothing bool   // the batch never reached the old server: its write failed
	Attempt      int    // 1 for the first re-send
	batch        []byte
	entries      []Entry
}

// TakeResend takes the remembered batch for a re-send, counting the attempt (CanResend must
// have reported one).
func (t *Tracker) TakeResend() Resend {
	rb := t.rb
	rb.attempts++
	rb.replied = false
	t.RetryNeeded = false
	r := Resend{Reason: rb.reason, OldReady: rb.oldReady, Attempt: rb.attempts,
		batch: bytes.Clone(rb.batch), entries: slices.Clone(rb.entries)}
	rb.reason, rb.oldReady = "", false
	if r.Reason == "" {
		r.Reason, r.WroteNothing = retry.ReasonNetwork, true // the write failed: relayTracked saw no refusal
	}
	t.WriteFailed = false
	return r
}

// ResendOn returns what to send a new server, st, for the re-send of r, and queues its replies:
// the batch, preceded by the Parse of each shared statement the batch uses and st lacks.
func (t *Tracker) ResendOn(st *ServerState, r Resend) []byte {
	var buf []byte
	t.resp.reset()
	t.TxStatus = 'I'
	for _, e := range r.entries {
		if e.msg == 'P' && e.swallow && e.stmt != nil && st.has(e.stmt) {
			// The batch prepares it, and this server has it already: make room for the Parse.
			buf = wire.AppendClose(buf, 'S', e.stmt.name)
			t.resp.push(Entry{msg: 'C', swallow: true})
			st.remove(e.stmt)
		}
	}
	for _, e := range r.entries {
		if e.msg == 'P' && e.unnamed {
			st.unnamedBy, st.unnamedSeq = t, t.unnamedSeq
		}
		if e.msg == 'B' && e.stmt != nil && !st.has(e.stmt) && !preparedIn(r.entries, e.stmt) {
			// Closed first, as prepare does: the server may hold an older one.
			buf = wire.AppendClose(buf, 'S', e.stmt.name)
			t.resp.push(Entry{msg: 'C', swallow: true})
			buf = append(buf, e.stmt.parse...)
			t.resp.push(Entry{msg: 'P', swallow: true, stmt: e.stmt})
		}
		if e.msg == 'P' && e.stmt != nil || e.msg == 'B' && e.stmt != nil {
			st.add(e.stmt)
		}
	}
	buf = append(buf, r.batch...)
	for _, e := range r.entries {
		t.resp.push(e)
	}
	return buf
}

// preparedIn reports whether the batch itself prepares ps.
func preparedIn(entries []Entry, ps *Stmt) bool {
	for _, e := range entries {
		if e.msg == 'P' && e.stmt == ps {
			return true
		}
	}
	return false
}

// retryableServerError reports whether an ErrorResponse code, as the first reply to a batch,
// shows the batch did not take effect.
func retryableServerError(code string) bool {
	// The one classification of errors (internal/retry) decides, except that a protocol
	// violation is the request's own fault: sending it again would only fail again.
	return code != retry.CodeProtocolViolation && retry.ClassifyCode(code).Retryable
}

// shutdownError reports the codes of a server terminating the connection (admin or crash
// shutdown).
func shutdownError(code string) bool { return retry.ClassifyCode(code).Reason == retry.ReasonShutdown }
