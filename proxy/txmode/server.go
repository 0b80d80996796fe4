package txmode

import (
	"bytes"
	"fmt"

	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

// PopSynths takes the replies the tracker makes itself that are next in line.
func (t *Tracker) PopSynths() []byte {
	var out []byte
	for h := t.resp.head(); h != nil && h.msg == 0; h = t.resp.head() {
		out = append(out, h.synth...)
		if h.ready {
			out = wire.AppendReadyForQuery(out, t.readyStatus())
		}
		t.resp.pop()
	}
	return out
}

// ScanServer scans the server's buffered messages (f, from the server st): it matches each to
// the request it answers, drops replies to the tracker's own requests, inserts the replies it
// makes itself, and keeps the statement caches right when a request fails. It returns what to
// write to the client, how many ReadyForQuery messages it saw and the last status. writing
// says the client's last batch is still being written to the server: a failed request cannot
// be judged before its write ended, so the scan stops at an ErrorResponse with needWrite set,
// to be called again once the write is done. closing says the client is gone (nothing is sent
// again for it).
func (t *Tracker) ScanServer(f *wire.Frames, st *ServerState, writing, closing bool) (out []byte, ready int, status byte, needWrite bool, err error) {
	b := t.bufs()
	w := wire.Batch{F: f, Out: b.sout[:0], RunStart: f.R}
	defer func() {
		if w.Used {
			b.sout = keepScratch(w.Out)
		}
	}()
	for f.R < f.W {
		if f.Advance(&w) {
			continue
		}
		typ, length, ok, herr := f.Next(t.lim.MaxMessage)
		if herr != nil {
			return w.Bytes(), ready, status, false, fmt.Errorf("server sent %w", herr)
		}
		if !ok {
			break
		}
		total := 1 + length
		t.synthsBefore(&w)
		h := t.resp.head()
		shape := h != nil && (h.described != nil || h.verify) && (typ == 't' || typ == 'T' || typ == 'n')
		if (typ == 'Z' || typ == 'E' || shape) && total <= len(f.Buf) && f.W-f.R < total {
			break // inspected whole: wait for the rest
		}
		if shape {
			t.captureShape(h, typ, f.Buf[f.R:min(f.R+total, f.W)], f.W-f.R >= total)
		}
		drop := false
		if typ != 'E' && typ != 'N' && typ != 'S' && typ != 'A' && h != nil && !h.swallow {
			// Part of a result: from now on the batch may have run.
			if t.rb != nil {
				t.rb.replied = true
			}
		}
		switch typ {
		case 'N', 'S', 'A':
			// Notices, parameter reports and notifications belong to no request; those caused
			// by the proxy's own statements are not the client's business.
			drop = h != nil && h.swallow && h.msg == 'Q'
		case 'E':
			// Decisions on a failed request need the write of it finished (the reply can
			// overtake the write's return).
			if writing {
				return w.Bytes(), ready, status, true, nil
			}
			var code string
			fatal := false
			if f.W-f.R >= total {
				body := f.Buf[f.R+5 : f.R+total]
				code, fatal = wire.ErrorCode(body), wire.ErrorFatal(body)
			}
			if h == nil {
				if fatal && t.TxStatus != 'T' && t.TxStatus != 'E' && shutdownError(code) {
					// An idle server announcing its end (terminated, or the upstream shutting
					// down) concerns no request: the client gets another server instead.
					w.Cut(f.W)
					f.R = f.W
					t.ServerGone = true
					return w.Bytes(), ready, status, false, nil
				}
				break
			}
			readOnly := t.lim.WantsPrimary && code == retry.CodeReadOnlySQLTransaction && st.Demoted
			if readOnly {
				// The route wants a primary and this server refuses writes, and a fresh
				// connection confirmed it is not one any more: it was demoted.
				// Every connection to it goes (this one when released), and new ones are
				// dialled to whichever host target_session_attrs accepts now.
				t.retire = true
			}
			// A serialization failure or deadlock of a plain statement that ran alone in an
			// implicit transaction rolled it back whole: running it again is what the client
			// would do.
			conflict := (code == retry.CodeSerializationFailure || code == retry.CodeDeadlockDetected) && h.msg == 'Q' && h.single && h.plain
			// A server that refuses a request with a FATAL connection or shutdown error ends the
			// connection and rolls back what the request did, unless the request could commit
			// on its own. An ERROR with the same code (a statement can raise any code) proves
			// nothing, and neither does a FATAL followed by anything but the connection's end.
			refused := fatal && retryableServerError(code) && f.R+total == f.W
			if code != "" && (readOnly || conflict || refused) && t.firstReply() && !closing && t.rb.attempts < t.lim.Retries && !t.batchCommits() {
				// Send the batch again instead of failing it. Nothing after this error
				// matters to the client.
				t.RetryNeeded = true
				t.rb.reason = retry.ClassifyCode(code).Reason
				if readOnly {
					t.rb.reason = retry.ReasonReadOnly
				}
				t.rb.oldReady = conflict && wire.HasReadyForQuery(f.Buf[f.R+total:f.W])
				w.Cut(f.W)
				f.R = f.W
				return w.Bytes(), ready, status, false, nil
			}
			if h.msg == 'Q' && h.single && h.done && !h.swallow && t.resp.len() == 1 && fatal &&
				t.TxStatus != 'T' && t.TxStatus != 'E' && shutdownError(code) {
				// The server was shut down right after completing a one-statement Query in an
				// implicit transaction, which it had committed before reporting completion:
				// finish the exchange for the client instead of failing a statement that took
				// effect. The connection is dropped quietly when it closes.
				w.Cut(f.W)
				w.Out = wire.AppendReadyForQuery(w.Out, 'I')
				w.Used = true
				f.R = f.W
				t.resp.pop()
				t.Pending = max(t.Pending-1, 0)
				t.ServerGone = true
				return w.Bytes(), ready, status, false, nil
			}
			if !extended(h.msg) {
				drop = h.swallow
				break
			}
			// A schema change invalidated a shared statement's result type: every server must
			// prepare it afresh (the client sees this error once, as it would directly).
			if h.msg == 'B' && h.stmt != nil && code == retry.CodeFeatureNotSupported {
				h.stmt.gen.Add(1)
				if t.rerunBatch(h.stmt, st, retry.ReasonSchemaChange) {
					drop = true
					break
				}
			}
			// A server that lost a shared statement the proxy counted on (DEALLOCATE or
			// DISCARD ALL run where the classifier cannot see it, in a function or DO
			// block): it is forgotten there and prepared again, the batch re-run if it can
			// be.
			if (h.msg == 'B' || h.msg == 'D') && h.stmt != nil && code == retry.CodeInvalidStatementName {
				st.remove(h.stmt)
				if t.rerunBatch(h.stmt, st, retry.ReasonStatementMissing) {
					drop = true
					break
				}
			}
			// The failed request, and everything up to the next Sync, which the server skips.
			t.failEntry(h, st)
			t.resp.pop()
			for h = t.resp.head(); h != nil && h.msg != 'S'; h = t.resp.head() {
				t.failEntry(h, st)
				t.resp.pop()
			}
		case 'Z':
			for h != nil && h.msg != 'Q' && h.msg != 'F' && h.msg != 'S' {
				t.resp.pop() // out of step: should not happen
				h = t.resp.head()
			}
			if f.W-f.R >= 6 {
				status = f.Buf[f.R+5]
			}
			if h != nil {
				drop = h.swallow
				if !h.swallow {
					ready++
				}
				t.resp.pop()
			} else {
				ready++
			}
			if !drop {
				// Counted here, under the same lock as the queue, not after the write to the
				// client: the client may answer that ReadyForQuery at once, and its next
				// request must find the session idle.
				t.Pending = max(t.Pending-1, 0)
				t.TxStatus = status
				if status == 'I' {
					t.idleReady++
				}
			}
		default:
			if h != nil {
				drop = h.swallow
				if typ == 'C' && h.msg == 'Q' {
					h.done = true
				}
				if completes(h.msg, typ) {
					if typ == '1' && h.stmt != nil {
						h.stmt.valid.Store(true)
					}
					t.resp.pop()
				}
			}
		}
		if drop {
			if f.W-f.R >= total {
				w.Cut(f.R + total)
				f.R += total
			} else {
				w.Cut(f.W)
				f.Dropping = true
				f.Remaining = total - (f.W - f.R)
				f.R = f.W
			}
			continue
		}
		if typ == 'E' && f.W-f.R >= total {
			// Relayed to the client: counted by class (ErrorClasses).
			t.countError(wire.ErrorCode(f.Buf[f.R+5 : f.R+total]))
		}
		if f.W-f.R >= total {
			f.R += total
		} else {
			f.R += 5
			f.Remaining = length - 4
		}
	}
	if f.Remaining == 0 {
		t.synthsBefore(&w)
	}
	return w.Bytes(), ready, status, false, nil
}

// captureShape adds a message of a Describe reply (ParameterDescription, then
// RowDescription or NoData) to the shape being read for entry h; msg is the message, whole
// unless too large for the buffer, when the shape cannot be known. The last message completes
// the shape: the client's statement remembers it, or the verification is done.
func (t *Tracker) captureShape(h *Entry, typ byte, msg []byte, whole bool) {
	b := t.bufs()
	if !whole {
		b.shapeBuf = nil
		return
	}
	if typ == 't' {
		b.shapeBuf = append(b.shapeBuf[:0], msg...)
	} else {
		b.shapeBuf = append(b.shapeBuf, msg...)
	}
	if typ == 't' {
		return
	}
	// An unknowable shape (nil buffer) matches none, and makes the client prepare again.
	shape := bytes.Clone(b.shapeBuf)
	if shape == nil {
		shape = []byte{}
	}
	b.shapeBuf = keepScratch(b.shapeBuf)
	if h.described != nil {
		h.described.shape = shape
		return
	}
	b.verifyShape, t.VerifyDone = shape, true
	t.wake = true
}

// synthsBefore inserts the proxy's own responses that are next in line at the current position.
func (t *Tracker) synthsBefore(w *wire.Batch) {
	for h := t.resp.head(); h != nil && h.msg == 0; h = t.resp.head() {
		w.Cut(w.F.R)
		w.Add(h.synth)
		if h.ready {
			w.Out = wire.AppendReadyForQuery(w.Out, t.readyStatus())
			w.Used = true
		}
		t.resp.pop()
	}
}

// failEntry undoes what the proxy assumed of a request that failed or was skipped: a
// statement it meant to prepare is not prepared, and a client's new statement is forgotten.
func (t *Tracker) failEntry(e *Entry, st *ServerState) {
	if e.verify {
		// The statement's prepare failed: the server skips the held Bind, and the client
		// gets the prepare's error.
		t.verifyFailed, t.VerifyDone = true, true
		t.wake = true
	}
	if e.msg != 'P' {
		return
	}
	if e.unnamed {
		if st.unnamedBy == t {
			st.unnamedBy = nil
		}
		if !e.swallow {
			// The client's own Parse failed: like PostgreSQL, it has no unnamed statement now.
			t.forgetUnnamed()
		}
		return
	}
	if e.stmt == nil {
		return
	}
	st.remove(e.stmt)
	if e.swallow {
		return
	}
	for name, cs := range t.stmts {
		if cs.ps == e.stmt {
			t.dropStmt(name)
		}
	}
}

// refuseUnknown answers a Bind or Describe naming a statement the client does not have but
// whose name is the proxy's (another client's shared statement) with the error PostgreSQL
// gives for a missing statement; the server would run it. It reports whether it did. The rest
// of the message (for a large Bind) is dropped with it.
func (t *Tracker) refuseUnknown(name []byte, w *wire.Batch, total int) bool {
	if !bytes.HasPrefix(name, []byte(ServerStmtPrefix)) {
		return false
	}
	t.refuseMessage(w, total, retry.CodeInvalidStatementName, fmt.Sprintf("prepared statement %q does not exist", name))
	return true
}

// refuseMessage answers the client message at the scan position, of total bytes and
// perhaps not all buffered, with an ERROR of the proxy's own, dropping the message, and skips
// to the client's next Sync as PostgreSQL does after an error.
func (t *Tracker) refuseMessage(w *wire.Batch, total int, code, msg string) {
	t.resp.push(Entry{synth: t.errorReply(code, msg)})
	t.Skipping = true
	w.Cut(w.F.R)
	if avail := w.F.W - w.F.R; avail < total {
		w.F.Dropping = true
		w.RunStart = w.F.W
	} else {
		w.RunStart = w.F.R + total
	}
}
