package txmode

import (
	"fmt"
	"strings"
	"unsafe"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/pgsidecar/pgsidecar/proxy/classify"
	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

// maxNameMessage is the largest Describe or Close accepted in transaction mode, which buffers
// them whole: they carry only a statement or portal name.
const maxNameMessage = 4 << 10

// maxStmtName is the longest prepared statement name accepted in transaction mode, where the
// proxy keeps each client's names.
const maxStmtName = 1 << 10

// maxInspect is the largest Query or Parse the proxy buffers whole to inspect it in transaction
// mode. A larger Query streams through unclassified and pins its client.
const maxInspect = 1 << 20

// reasonUnclassified pins a client whose Query was too large to classify.
const reasonUnclassified classify.Reason = "unclassified"

// bytesString views b as a string without copying; the string must not outlive b's contents.
func bytesString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// maxScratch is the largest rewrite buffer a session keeps between batches.
const maxScratch = 64 << 10

// keepScratch returns b emptied for reuse, or nil when it grew past maxScratch for a rare large
// batch: an idle session should not hold it.
func keepScratch(b []byte) []byte {
	if cap(b) > maxScratch {
		return nil
	}
	return b[:0]
}

// NeedsServer reports whether the buffered client messages need a server connection: anything
// but Flush and COPY messages outside COPY (which PostgreSQL ignores) does.
func NeedsServer(f *wire.Frames) bool {
	r := f.R
	if f.Remaining > 0 {
		if !f.Dropping {
			return true
		}
		r += f.Remaining // the rest of a message being dropped
	}
	for {
		if r >= f.W {
			return false // the rest of a dropped message, or nothing, is all that is buffered
		}
		typ, length, ok := wire.HeaderOf(f.Buf[r:f.W])
		if !ok {
			return false
		}
		switch typ {
		case 'd', 'c', 'f', 'H':
		case 'X':
			return false
		default:
			return true
		}
		r += 1 + length
	}
}

// ClientScan is what the tracker found in one scan of the client's buffered messages.
type ClientScan struct {
	Out         []byte // to send to the server (nil without one)
	Requests    int    // Query, Sync and FunctionCall messages in out: each ends in ReadyForQuery
	Unsynced    int    // -1 unchanged, 0 a Sync ends out's extended-protocol messages, 1 they follow it
	Partial     bool   // out ends inside a message, whose rest must go to the same server
	Err         error  // a protocol error after the messages before it
	Terminate   bool   // the client sent Terminate
	SynthAtHead bool   // replies the tracker makes itself are next in line
	Hold        bool   // the scan stopped at a Bind that waits for the statement's shape
}

// ScanClient scans the client's buffered messages: it keeps each client's prepared statements
// on whichever server it has (st; nil when none is attached and the messages need none, which
// are dropped), pins clients that leave state behind, queues what each message expects back,
// and returns what to send on.
func (t *Tracker) ScanClient(f *wire.Frames, st *ServerState) (c ClientScan) {
	// A batch that starts a transaction with nothing in flight can be re-run if a schema change
	// fails it before any of its results reached the client (see rerunBatch).
	startsIdle := t.resp.len() == 0 && t.Pending == 0 && t.TxStatus != 'T' && t.TxStatus != 'E'
	b := t.bufs()
	w := wire.Batch{F: f, Out: b.cout[:0], RunStart: f.R}
	requests, unsynced := 0, -1
	var err error
	terminate := false
scan:
	for f.R < f.W {
		if f.Advance(&w) {
			continue
		}
		typ, length, ok, herr := f.Next(t.lim.MaxMessage)
		if herr != nil {
			err = wire.Errorf("%v", herr)
			break
		}
		if !ok {
			break
		}
		total := 1 + length
		whole := f.W-f.R >= total
		// With no server, only messages needsServer lets through get here. After an error the
		// proxy raised itself, PostgreSQL would ignore messages until Sync. Both are dropped.
		if st == nil && typ != 'X' || t.Skipping && typ != 'S' && typ != 'X' {
			w.Cut(f.R)
			if !whole {
				f.Dropping = true
				f.Remaining = length - 4
				f.R += 5
			} else {
				f.R += total
			}
			w.RunStart = f.R
			continue
		}
		if (typ == 'D' || typ == 'C') && total > maxNameMessage {
			// Real ones name a statement or portal; only a broken or hostile client sends
			// more, and buffering it whole would hold up to max_message_size.
			err = wire.Errorf("%c message of %d bytes is larger than the %d bytes a Describe or Close may have", typ, total, maxNameMessage)
			break
		}
		switch typ {
		case 'Q', 'P', 'D', 'C':
			if !whole {
				if total <= maxInspect || typ == 'D' || typ == 'C' {
					f.Need = total
					break scan
				}
				if typ == 'Q' {
					t.pin(reasonUnclassified)
					t.resp.push(Entry{msg: 'Q', commits: true})
					st.unnamedBy = nil
					requests++
					f.R += 5
					f.Remaining = length - 4
					continue
				}
				err = &pgconn.PgError{Severity: "FATAL", Code: retry.CodeProgramLimitExceeded, Message: fmt.Sprintf("pgsidecar: %c message of %d bytes is too large to track in transaction mode (limit %d)", typ, total, maxInspect)}
				break scan
			}
		}
		body := f.Buf[f.R+5 : min(f.R+total, f.W)]
		switch typ {
		case 'Q':
			if t.trackQuery(body, st, &w, total) {
				requests++
			}
		case 'P':
			unsynced = 1
			if perr := t.trackParse(body, st, &w, total); perr != nil {
				err = perr
				break scan
			}
		case 'B':
			unsynced = 1
			need, hold, berr := t.trackBind(body, st, &w, total)
			if berr != nil {
				err = berr
				break scan
			}
			if need > 0 {
				f.Need = need
				break scan
			}
			if hold {
				// The Bind waits, unconsumed, for the statement's shape on this server.
				c.Hold = true
				break scan
			}
		case 'D':
			unsynced = 1
			if derr := t.trackDescribe(body, st, &w, total); derr != nil {
				err = derr
				break scan
			}
		case 'C':
			unsynced = 1
			t.trackClose(body, &w, total)
		case 'E':
			unsynced = 1
			if c := t.call; c != nil && whole {
				if portal, _, ok := wire.CString(body); ok && string(portal) == c.portal {
					var reply []byte
					if !c.result {
						reply = signalWarning(reply, c.pid)
					}
					w.Cut(f.R + total)
					t.resp.push(Entry{synth: signalReply(reply, c.fn, c.result, false, true, resultFormat(c.formats))})
					break
				}
			}
			t.resp.push(Entry{msg: 'E'})
		case 'S':
			t.call = nil
			t.resp.push(Entry{msg: 'S'})
			requests++
			unsynced = 0
			t.Skipping = false
		case 'F':
			t.resp.push(Entry{msg: 'F'})
			requests++
		case 'H', 'd', 'c', 'f':
		case 'X':
			terminate = true
			break scan
		default:
			err = wire.Errorf("invalid frontend message type %d", typ)
			break scan
		}
		if w.RunStart > f.R {
			// The handler consumed the message, or its head, itself (dropped or rewrote it);
			// whatever is left of it streams through.
			consumed := w.RunStart - f.R
			f.R = w.RunStart
			f.Remaining = total - consumed
			continue
		}
		f.R += 5
		f.Remaining = length - 4
	}
	out := w.Bytes()
	if w.Used {
		b.cout = keepScratch(w.Out)
	}
	c.SynthAtHead = t.resp.len() > 0 && t.resp.head().msg == 0
	if len(out) > 0 {
		t.rememberBatch(out, startsIdle && f.Remaining == 0)
	}
	if st != nil {
		c.Out = out
	}
	c.Requests, c.Unsynced = requests, unsynced
	c.Partial = f.Remaining > 0 && !f.Dropping
	c.Err, c.Terminate = err, terminate
	return c
}

// trackQuery inspects a simple Query: what it leaves on the session decides pinning. It
// reports whether the Query goes to the server (DEALLOCATE of the client's own statements is
// answered by the proxy: the server knows them under other names).
func (t *Tracker) trackQuery(body []byte, st *ServerState, w *wire.Batch, total int) (forward bool) {
	sql := body
	if len(sql) > 0 && sql[len(sql)-1] == 0 {
		sql = sql[:len(sql)-1]
	}
	res := classify.Classify(bytesString(sql), t.classifier())
	if res.Statements == 1 && len(res.Deallocate) == 1 && t.TxStatus != 'E' {
		if t.dropStmt(res.Deallocate[0]) {
			w.Cut(w.F.R + total)
			t.resp.push(Entry{synth: wire.AppendCommandComplete(nil, "DEALLOCATE"), ready: true})
			return false
		}
	}
	if sig := res.Signal; sig.Param == 0 && t.answersSignal(sig, sig.PID) {
		// pg_cancel_backend of a PID the proxy minted: answered here (signal.go).
		ok := t.signal(sig.Func, sig.PID)
		w.Cut(w.F.R + total)
		var reply []byte
		if !ok {
			reply = signalWarning(reply, sig.PID)
		}
		t.resp.push(Entry{synth: signalReply(reply, sig.Func, ok, true, true, 0), ready: true})
		return false
	}
	if name, foreign := t.foreignDeallocate(res.Deallocate); foreign {
		// Another client's shared statement: the server must not lose it. The server raises
		// PostgreSQL's error itself, so that a transaction block is aborted as it would be.
		w.Cut(w.F.R + total)
		w.Out = wire.AppendQuery(w.Out, raiseSQL(retry.CodeInvalidStatementName, fmt.Sprintf("prepared statement %q does not exist", name)))
		w.Used = true
		t.resp.push(Entry{msg: 'Q'})
		return true
	}
	if res.Pin != classify.None && t.Pinned == "" && t.refusesState() {
		// session_state = refuse: the server itself raises the error, so that an explicit
		// transaction is aborted exactly as PostgreSQL would abort it.
		w.Cut(w.F.R + total)
		w.Add(refusalQuery(res.Pin))
		t.resp.push(Entry{msg: 'Q'})
		return true
	}
	if res.Pin != classify.None {
		t.pin(res.Pin)
	}
	if res.DiscardAll {
		// DISCARD ALL / DEALLOCATE ALL drop the shared statements on this server as well.
		t.DropStatements()
		st.clearPrepared()
	}
	for _, name := range res.Deallocate {
		t.dropStmt(name)
	}
	if res.SetsTracked {
		t.ParamsDirty = true
	}
	// A simple Query destroys the unnamed statement, on the server and so for the client.
	st.unnamedBy = nil
	t.forgetUnnamed()
	t.resp.push(Entry{msg: 'Q', single: res.Statements == 1, plain: res.Plain, commits: res.CommitsAlone})
	return true
}

// trackParse handles Parse: a named statement is mapped to its shared server-side statement,
// prepared on this server unless it already is; the unnamed one is remembered for replay.
func (t *Tracker) trackParse(body []byte, st *ServerState, w *wire.Batch, total int) error {
	name, rest, ok := wire.CString(body)
	if !ok {
		return wire.Errorf("malformed Parse message")
	}
	query, paramTypes, ok := wire.CString(rest)
	if !ok {
		return wire.Errorf("malformed Parse message")
	}
	res := classify.Classify(bytesString(query), t.classifier())
	// What executing the statement does to prepared statements, applied at its Bind. A
	// DEALLOCATE names the client's statement, which the server knows by its shared name, or
	// another client's shared statement, which it must keep: the text is rewritten for both.
	var effect Effect
	effect.discardAll = res.DiscardAll
	rewritten := false
	if n := res.Deallocate; len(n) == 1 && res.Statements == 1 {
		if target, own := t.stmts[n[0]]; own {
			query, rewritten = []byte("DEALLOCATE "+target.ps.name), true
			effect.dealloc = target.ps
		} else if _, foreign := t.foreignDeallocate(n); foreign {
			query, rewritten = []byte(raiseSQL(retry.CodeInvalidStatementName, fmt.Sprintf("prepared statement %q does not exist", n[0]))), true
		}
	}
	if res.Pin != classify.None {
		if t.Pinned == "" && t.refusesState() {
			t.resp.push(Entry{synth: t.errorReply(retry.CodeFeatureNotSupported, refusalMessage(res.Pin))})
			t.Skipping = true
			w.Cut(w.F.R + total)
			return nil
		}
		t.pin(res.Pin)
	} else if res.SetsTracked {
		t.ParamsDirty = true
	}
	if len(name) == 0 {
		if rewritten {
			w.Cut(w.F.R + total)
			t.unnamedParse = appendParse(t.unnamedParse[:0], "", query, paramTypes)
			w.Add(t.unnamedParse)
		} else {
			t.unnamedParse = append(t.unnamedParse[:0], w.F.Buf[w.F.R:w.F.R+total]...)
		}
		t.unnamedCommits = res.CommitsAlone
		t.unnamedEffect = effect
		t.unnamedSignal = nil
		if res.Signal.Func != "" {
			sig := res.Signal
			t.unnamedSignal = &sig
		}
		t.unnamedSeq++
		st.unnamedBy, st.unnamedSeq = t, t.unnamedSeq
		t.resp.push(Entry{msg: 'P', unnamed: true})
		return nil
	}
	if _, dup := t.stmts[string(name)]; dup {
		t.refuse(w, total, retry.CodeDuplicatePreparedStmt, fmt.Sprintf("prepared statement %q already exists", name))
		return nil
	}
	if len(name) > maxStmtName {
		t.refuse(w, total, retry.CodeNameTooLong, fmt.Sprintf("pgsidecar: prepared statement name of %d bytes is longer than %d", len(name), maxStmtName))
		return nil
	}
	if limit := t.lim.ClientStatements; limit > 0 && len(t.stmts) >= limit {
		t.refuse(w, total, retry.CodeConfigurationLimitExceeded, fmt.Sprintf("pgsidecar: too many prepared statements: this client holds %d (max_client_prepared_statements); close or deallocate some first", len(t.stmts)))
		return nil
	}
	ps := t.reg.get(query, paramTypes, effect)
	if ps == nil {
		t.refuse(w, total, retry.CodeConfigurationLimitExceeded, fmt.Sprintf("pgsidecar: the shared prepared statement registry is full (max_prepared_statement_bytes=%d)", t.lim.RegistryBytes))
		return nil
	}
	t.addStmt(string(name), &ClientStmt{ps: ps})
	w.Cut(w.F.R + total)
	// The Bind that follows uses what this Parse counted.
	t.justParsed = ps
	if st.has(ps) {
		t.cache.Hits++
		t.resp.push(Entry{synth: wire.AppendParseComplete(nil)})
		return nil
	}
	t.prepare(ps, st, w, false)
	return nil
}

// foreignDeallocate returns the first of names that is a shared statement name (the proxy's
// prefix) the client does not hold itself: DEALLOCATE of it would take another client's
// statement from the server.
func (t *Tracker) foreignDeallocate(names []string) (string, bool) {
	for _, n := range names {
		if _, own := t.stmts[n]; !own && strings.HasPrefix(n, ServerStmtPrefix) {
			return n, true
		}
	}
	return "", false
}

// applyEffect does what executing a statement with effect e does to the client's and the
// server's prepared statements, when the client binds it: the server runs it right after.
// Should the Bind fail instead, the server keeps statements the proxy forgot, which costs
// nothing: prepare closes a name before it prepares it.
func (t *Tracker) applyEffect(e Effect, st *ServerState) {
	if e.discardAll {
		t.dropNamedStmts()
		st.clearPrepared()
	}
	if e.dealloc != nil {
		st.remove(e.dealloc)
		for name, cs := range t.stmts {
			if cs.ps == e.dealloc {
				t.dropStmt(name)
			}
		}
	}
}

// refuse answers the client message at the scan position (of total bytes) with an ERROR
// of the proxy's own, and skips the client's messages up to its next Sync, as PostgreSQL does
// after an error in the extended protocol.
func (t *Tracker) refuse(w *wire.Batch, total int, code, msg string) {
	t.resp.push(Entry{synth: t.errorReply(code, msg)})
	t.Skipping = true
	w.Cut(w.F.R + total)
}

// prepare sends ps's Parse to the server, making room in its statement cache first.
//
// The name is closed first (closing a statement a server does not have is no error): the server
// may hold it at an older generation, or still hold it after a DISCARD ALL the proxy counted on
// failed. Statements are prepared once per server, so this costs little.
func (t *Tracker) prepare(ps *Stmt, st *ServerState, w *wire.Batch, swallow bool) {
	w.Out = wire.AppendClose(w.Out, 'S', ps.name)
	w.Used = true
	t.resp.push(Entry{msg: 'C', swallow: true})
	st.remove(ps)
	t.cache.Misses++
	if old := st.evict(t.lim.ServerStatements); old != nil {
		t.cache.Evictions++
		w.Out = wire.AppendClose(w.Out, 'S', old.name)
		w.Used = true
		t.resp.push(Entry{msg: 'C', swallow: true})
	}
	st.add(ps)
	w.Add(ps.parse)
	t.resp.push(Entry{msg: 'P', swallow: swallow, stmt: ps})
}

// ensureUnnamed replays the client's last unnamed Parse when the server holds another
// client's unnamed statement.
func (t *Tracker) ensureUnnamed(st *ServerState, w *wire.Batch) {
	if len(t.unnamedParse) == 0 || (st.unnamedBy == t && st.unnamedSeq == t.unnamedSeq) {
		return
	}
	w.Cut(w.F.R)
	w.Add(t.unnamedParse)
	st.unnamedBy, st.unnamedSeq = t, t.unnamedSeq
	t.resp.push(Entry{msg: 'P', swallow: true, unnamed: true})
}

// dropNamedStmts forgets the client's named statements, as DEALLOCATE ALL does.
func (t *Tracker) dropNamedStmts() {
	for name := range t.stmts {
		t.dropStmt(name)
	}
}

// dropStmt forgets the client's statement name, reporting whether it had one.
func (t *Tracker) dropStmt(name string) bool {
	cs, ok := t.stmts[name]
	if ok {
		delete(t.stmts, name)
		t.reg.put(cs.ps)
	}
	return ok
}

// DropStatements forgets every statement the client prepared.
func (t *Tracker) DropStatements() {
	t.dropNamedStmts()
	t.forgetUnnamed()
}

// pin keeps the client on its current server for the rest of its session.
func (t *Tracker) pin(reason classify.Reason) {
	if t.Pinned != "" {
		return
	}
	t.Pinned = reason
	t.newPin = reason
}

// readyStatus is the transaction status for a ReadyForQuery the proxy makes up: the
// server's last one, as every earlier reply has been relayed when it is sent.
func (t *Tracker) readyStatus() byte {
	if t.TxStatus == 0 {
		return 'I'
	}
	return t.TxStatus
}
