package proxy

import (
	"bytes"
	"fmt"
	"slices"
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

// trackedParams are the parameters the proxy replays when a client moves between servers;
// a session-level SET of any other parameter pins the client.
var trackedParams = map[string]bool{
	"application_name": true, "client_encoding": true, "datestyle": true, "intervalstyle": true,
	"timezone": true, "search_path": true, "extra_float_digits": true, "statement_timeout": true,
	"lock_timeout": true, "idle_in_transaction_session_timeout": true, "bytea_output": true,
	"default_transaction_isolation": true,
	"default_transaction_read_only": true, "default_transaction_deferrable": true,
	"xmloption": true, "work_mem": true, "jit": true, "enable_seqscan": true,
}

func isTracked(name string) bool { return trackedParams[name] }

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

// needsServer reports whether the buffered client messages need a server connection: anything
// but Flush and COPY messages outside COPY (which PostgreSQL ignores) does.
func needsServer(f *wire.Frames) bool {
	r := f.R
	if f.Remaining > 0 {
		if !f.Dropping {
			return true
		}
		r += f.Remaining // the rest of a message being dropped
	}
	for {
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

// clientScan is what the tracker found in one scan of the client's buffered messages.
type clientScan struct {
	out         []byte // to send to the server (nil without one)
	requests    int    // Query, Sync and FunctionCall messages in out: each ends in ReadyForQuery
	unsynced    int    // -1 unchanged, 0 a Sync ends out's extended-protocol messages, 1 they follow it
	partial     bool   // out ends inside a message, whose rest must go to the same server
	err         error  // a protocol error after the messages before it
	terminate   bool   // the client sent Terminate
	synthAtHead bool   // replies the tracker makes itself are next in line
	hold        bool   // the scan stopped at a Bind that waits for the statement's shape
}

// scanClient scans the client's buffered messages: it keeps each client's prepared statements
// on whichever server it has (st; nil when none is attached and the messages need none, which
// are dropped), pins clients that leave state behind, queues what each message expects back,
// and returns what to send on.
func (t *tracker) scanClient(f *wire.Frames, st *serverState) (c clientScan) {
	// A batch that starts a transaction with nothing in flight can be re-run if a schema change
	// fails it before any of its results reached the client (see rerunBatchLocked).
	startsIdle := t.resp.len() == 0 && t.pending == 0 && t.txStatus != 'T' && t.txStatus != 'E'
	w := wire.Batch{F: f, Out: t.cout[:0], RunStart: f.R}
	requests, unsynced := 0, -1
	var err error
	terminate := false
scan:
	for f.R < f.W {
		if f.Advance(&w) {
			continue
		}
		typ, length, ok, herr := f.Next(t.lim.maxMsg)
		if herr != nil {
			err = protocolErrorf("%v", herr)
			break
		}
		if !ok {
			break
		}
		total := 1 + length
		whole := f.W-f.R >= total
		// With no server, only messages needsServer lets through get here. After an error the
		// proxy raised itself, PostgreSQL would ignore messages until Sync. Both are dropped.
		if st == nil && typ != 'X' || t.skipping && typ != 'S' && typ != 'X' {
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
			err = protocolErrorf("%c message of %d bytes is larger than the %d bytes a Describe or Close may have", typ, total, maxNameMessage)
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
					t.pinLocked(reasonUnclassified)
					t.resp.push(respEntry{msg: 'Q', commits: true})
					st.unnamedBy = nil
					requests++
					f.R += 5
					f.Remaining = length - 4
					continue
				}
				err = &startupError{code: retry.CodeProgramLimitExceeded, msg: fmt.Sprintf("pgsidecar: %c message of %d bytes is too large to track in transaction mode (limit %d)", typ, total, maxInspect)}
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
				c.hold = true
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
			t.resp.push(respEntry{msg: 'E'})
		case 'S':
			t.resp.push(respEntry{msg: 'S'})
			requests++
			unsynced = 0
			t.skipping = false
		case 'F':
			t.resp.push(respEntry{msg: 'F'})
			requests++
		case 'H', 'd', 'c', 'f':
		case 'X':
			terminate = true
			break scan
		default:
			err = protocolErrorf("invalid frontend message type %d", typ)
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
		t.cout = keepScratch(w.Out)
	}
	c.synthAtHead = t.resp.len() > 0 && t.resp.head().msg == 0
	if len(out) > 0 {
		t.rememberBatchLocked(out, startsIdle && f.Remaining == 0)
	}
	if st != nil {
		c.out = out
	}
	c.requests, c.unsynced = requests, unsynced
	c.partial = f.Remaining > 0 && !f.Dropping
	c.err, c.terminate = err, terminate
	return c
}

// trackQuery inspects a simple Query: what it leaves on the session decides pinning. It
// reports whether the Query goes to the server (DEALLOCATE of the client's own statements is
// answered by the proxy: the server knows them under other names).
func (t *tracker) trackQuery(body []byte, st *serverState, w *wire.Batch, total int) (forward bool) {
	sql := body
	if len(sql) > 0 && sql[len(sql)-1] == 0 {
		sql = sql[:len(sql)-1]
	}
	res := classify.Classify(bytesString(sql), isTracked)
	if res.Statements == 1 && len(res.Deallocate) == 1 && t.txStatus != 'E' {
		if t.dropStmtLocked(res.Deallocate[0]) {
			w.Cut(w.F.R + total)
			t.resp.push(respEntry{synth: wire.AppendCommandComplete(nil, "DEALLOCATE"), ready: true})
			return false
		}
	}
	if name, foreign := t.foreignDeallocate(res.Deallocate); foreign {
		// Another client's shared statement: the server must not lose it. The server raises
		// PostgreSQL's error itself, so that a transaction block is aborted as it would be.
		w.Cut(w.F.R + total)
		w.Out = wire.AppendQuery(w.Out, raiseSQL(retry.CodeInvalidStatementName, fmt.Sprintf("prepared statement %q does not exist", name)))
		w.Used = true
		t.resp.push(respEntry{msg: 'Q'})
		return true
	}
	if res.Pin != classify.None && t.pinned == "" && t.refusesState() {
		// session_state = refuse: the server itself raises the error, so that an explicit
		// transaction is aborted exactly as PostgreSQL would abort it.
		w.Cut(w.F.R + total)
		w.Add(refusalQuery(res.Pin))
		t.resp.push(respEntry{msg: 'Q'})
		return true
	}
	if res.Pin != classify.None {
		t.pinLocked(res.Pin)
	}
	if res.DiscardAll {
		// DISCARD ALL / DEALLOCATE ALL drop the shared statements on this server as well.
		t.dropAllStmtsLocked()
		st.clearPrepared()
	}
	for _, name := range res.Deallocate {
		t.dropStmtLocked(name)
	}
	if res.SetsTracked {
		t.paramsDirty = true
	}
	// A simple Query destroys the unnamed statement, on the server and so for the client.
	st.unnamedBy = nil
	t.unnamedParse = t.unnamedParse[:0]
	t.resp.push(respEntry{msg: 'Q', single: res.Statements == 1, plain: res.Plain, commits: res.CommitsAlone})
	return true
}

// trackParse handles Parse: a named statement is mapped to its shared server-side statement,
// prepared on this server unless it already is; the unnamed one is remembered for replay.
func (t *tracker) trackParse(body []byte, st *serverState, w *wire.Batch, total int) error {
	name, rest, ok := wire.CString(body)
	if !ok {
		return protocolErrorf("malformed Parse message")
	}
	query, paramTypes, ok := wire.CString(rest)
	if !ok {
		return protocolErrorf("malformed Parse message")
	}
	res := classify.Classify(bytesString(query), isTracked)
	// What executing the statement does to prepared statements, applied at its Bind. A
	// DEALLOCATE names the client's statement, which the server knows by its shared name, or
	// another client's shared statement, which it must keep: the text is rewritten for both.
	var effect stmtEffect
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
		if t.pinned == "" && t.refusesState() {
			e := &pgconn.PgError{Severity: "ERROR", Code: retry.CodeFeatureNotSupported, Message: refusalMessage(res.Pin)}
			t.resp.push(respEntry{synth: wire.AppendErrorResponse(nil, e)})
			t.skipping = true
			w.Cut(w.F.R + total)
			return nil
		}
		t.pinLocked(res.Pin)
	} else if res.SetsTracked {
		t.paramsDirty = true
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
		t.unnamedSeq++
		st.unnamedBy, st.unnamedSeq = t, t.unnamedSeq
		t.resp.push(respEntry{msg: 'P', unnamed: true})
		return nil
	}
	if _, dup := t.stmts[string(name)]; dup {
		t.refuseLocked(w, total, retry.CodeDuplicatePreparedStmt, fmt.Sprintf("prepared statement %q already exists", name))
		return nil
	}
	if len(name) > maxStmtName {
		t.refuseLocked(w, total, retry.CodeNameTooLong, fmt.Sprintf("pgsidecar: prepared statement name of %d bytes is longer than %d", len(name), maxStmtName))
		return nil
	}
	if limit := t.lim.clientStatements; limit > 0 && len(t.stmts) >= limit {
		t.refuseLocked(w, total, retry.CodeConfigurationLimitExceeded, fmt.Sprintf("pgsidecar: too many prepared statements: this client holds %d (max_client_prepared_statements); close or deallocate some first", len(t.stmts)))
		return nil
	}
	ps := t.reg.get(query, paramTypes, effect)
	if ps == nil {
		t.refuseLocked(w, total, retry.CodeConfigurationLimitExceeded, fmt.Sprintf("pgsidecar: the shared prepared statement registry is full (max_prepared_statement_bytes=%d)", t.lim.registryBytes))
		return nil
	}
	t.stmts[string(name)] = &clientStmt{ps: ps}
	w.Cut(w.F.R + total)
	if st.has(ps) {
		t.resp.push(respEntry{synth: wire.AppendParseComplete(nil)})
		return nil
	}
	t.prepareLocked(ps, st, w, false)
	return nil
}

// foreignDeallocate returns the first of names that is a shared statement name (the proxy's
// prefix) the client does not hold itself: DEALLOCATE of it would take another client's
// statement from the server.
func (t *tracker) foreignDeallocate(names []string) (string, bool) {
	for _, n := range names {
		if _, own := t.stmts[n]; !own && strings.HasPrefix(n, serverStmtPrefix) {
			return n, true
		}
	}
	return "", false
}

// applyEffectLocked does what executing a statement with effect e does to the client's and the
// server's prepared statements, when the client binds it: the server runs it right after.
// Should the Bind fail instead, the server keeps statements the proxy forgot, which costs
// nothing: prepareLocked closes a name before it prepares it.
func (t *tracker) applyEffectLocked(e stmtEffect, st *serverState) {
	if e.discardAll {
		t.dropNamedStmtsLocked()
		st.clearPrepared()
	}
	if e.dealloc != nil {
		st.remove(e.dealloc)
		for name, cs := range t.stmts {
			if cs.ps == e.dealloc {
				t.dropStmtLocked(name)
			}
		}
	}
}

// appendDescribe appends a Describe of a statement ('S') or portal ('P').
func appendDescribe(b []byte, kind byte, name string) []byte {
	n := 4 + 1 + len(name) + 1
	b = append(b, 'D', byte(n>>24), byte(n>>16), byte(n>>8), byte(n), kind)
	b = append(b, name...)
	return append(b, 0)
}

// appendParse appends a Parse message.
func appendParse(b []byte, name string, query, paramTypes []byte) []byte {
	n := 4 + len(name) + 1 + len(query) + 1 + len(paramTypes)
	b = append(b, 'P', byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	b = append(b, name...)
	b = append(b, 0)
	b = append(b, query...)
	b = append(b, 0)
	return append(b, paramTypes...)
}

// refuseLocked answers the client message at the scan position (of total bytes) with an ERROR
// of the proxy's own, and skips the client's messages up to its next Sync, as PostgreSQL does
// after an error in the extended protocol.
func (t *tracker) refuseLocked(w *wire.Batch, total int, code, msg string) {
	e := &pgconn.PgError{Severity: "ERROR", Code: code, Message: msg}
	t.resp.push(respEntry{synth: wire.AppendErrorResponse(nil, e)})
	t.skipping = true
	w.Cut(w.F.R + total)
}

// prepareLocked sends ps's Parse to the server, making room in its statement cache first.
//
// The name is closed first (closing a statement a server does not have is no error): the server
// may hold it at an older generation, or still hold it after a DISCARD ALL the proxy counted on
// failed. Statements are prepared once per server, so this costs little.
func (t *tracker) prepareLocked(ps *preparedStmt, st *serverState, w *wire.Batch, swallow bool) {
	w.Out = wire.AppendClose(w.Out, 'S', ps.name)
	w.Used = true
	t.resp.push(respEntry{msg: 'C', swallow: true})
	st.remove(ps)
	if old := st.evict(t.lim.serverStatements); old != nil {
		w.Out = wire.AppendClose(w.Out, 'S', old.name)
		w.Used = true
		t.resp.push(respEntry{msg: 'C', swallow: true})
	}
	st.add(ps)
	w.Add(ps.parse)
	t.resp.push(respEntry{msg: 'P', swallow: swallow, stmt: ps})
}

// ensureUnnamedLocked replays the client's last unnamed Parse when the server holds another
// client's unnamed statement.
func (t *tracker) ensureUnnamedLocked(st *serverState, w *wire.Batch) {
	if len(t.unnamedParse) == 0 || (st.unnamedBy == t && st.unnamedSeq == t.unnamedSeq) {
		return
	}
	w.Cut(w.F.R)
	w.Add(t.unnamedParse)
	st.unnamedBy, st.unnamedSeq = t, t.unnamedSeq
	t.resp.push(respEntry{msg: 'P', swallow: true, unnamed: true})
}

// maxBindNames bounds the head of a Bind (portal and statement names) the proxy waits for.
const maxBindNames = 4096

// trackBind rewrites a Bind of a named statement to its server-side name, preparing it first
// if this server does not have it. body may hold only the start of a large Bind: only the names
// are needed, and the parameters stream through. need > 0 asks for that many bytes buffered.
func (t *tracker) trackBind(body []byte, st *serverState, w *wire.Batch, total int) (need int, hold bool, err error) {
	portal, rest, ok := wire.CString(body)
	var name []byte
	if ok {
		name, _, ok = wire.CString(rest)
	}
	if !ok {
		if len(body) < total-5 && len(body) < maxBindNames {
			return min(total, 5+maxBindNames), false, nil
		}
		return 0, false, protocolErrorf("malformed Bind message")
	}
	if len(name) == 0 {
		t.ensureUnnamedLocked(st, w)
		t.resp.push(respEntry{msg: 'B', commits: t.unnamedCommits})
		t.applyEffectLocked(t.unnamedEffect, st)
		return 0, false, nil
	}
	cs, ok := t.stmts[string(name)]
	if !ok {
		if t.refuseUnknownLocked(name, w, total) {
			return 0, false, nil
		}
		// The server has no statement by the client's name either, so it answers with the
		// error PostgreSQL would give.
		t.resp.push(respEntry{msg: 'B'})
		return 0, false, nil
	}
	ps := cs.ps
	if t.verifying == ps {
		// The statement was prepared for this Bind, its shape read back.
		t.verifying = nil
		if !t.verifyFailed && !bytes.Equal(t.verifyShape, cs.shape) {
			// The client chose its formats, and decodes the rows, by the shape it was told;
			// the statement has another one now (its columns' types changed). PostgreSQL
			// fails such a Bind, and drivers prepare again when it does.
			t.refuseMessageLocked(w, total, retry.CodeFeatureNotSupported, "cached plan must not change result type")
			return 0, false, nil
		}
	} else if !st.has(ps) && cs.shape != nil {
		// The client knows the statement's shape, and this server is about to prepare it
		// afresh: read its shape back first, and hold the Bind until then.
		w.Cut(w.F.R)
		t.prepareLocked(ps, st, w, true)
		w.Out = appendDescribe(w.Out, 'S', ps.name)
		w.Out = wire.AppendFlush(w.Out)
		t.resp.push(respEntry{msg: 'D', swallow: true, verify: true, stmt: ps})
		t.verifying, t.verifyDone, t.verifyFailed, t.verifyShape = ps, false, false, t.verifyShape[:0]
		return 0, true, nil
	}
	head := 5 + len(portal) + 1 + len(name) + 1
	w.Cut(w.F.R + head)
	if !st.has(ps) {
		t.prepareLocked(ps, st, w, true)
	}
	n := total - 1 - len(name) + len(ps.name)
	w.Add([]byte{'B', byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
	w.Add(portal)
	w.AddByte(0)
	w.AddString(ps.name)
	w.AddByte(0)
	t.resp.push(respEntry{msg: 'B', stmt: ps, commits: ps.commits})
	t.applyEffectLocked(ps.effect, st)
	return 0, false, nil
}

// trackDescribe rewrites a Describe of a named statement like trackBind.
func (t *tracker) trackDescribe(body []byte, st *serverState, w *wire.Batch, total int) error {
	if len(body) < 2 {
		return protocolErrorf("malformed Describe message")
	}
	name, _, ok := wire.CString(body[1:])
	if !ok {
		return protocolErrorf("malformed Describe message")
	}
	if body[0] != 'S' {
		t.resp.push(respEntry{msg: 'D', portal: true})
		return nil
	}
	if len(name) == 0 {
		t.ensureUnnamedLocked(st, w)
		t.resp.push(respEntry{msg: 'D'})
		return nil
	}
	cs, ok := t.stmts[string(name)]
	if !ok {
		if !t.refuseUnknownLocked(name, w, total) {
			t.resp.push(respEntry{msg: 'D'})
		}
		return nil
	}
	ps := cs.ps
	w.Cut(w.F.R + total)
	if !st.has(ps) {
		t.prepareLocked(ps, st, w, true)
	}
	w.Out = appendDescribe(w.Out, 'S', ps.name)
	w.Used = true
	t.resp.push(respEntry{msg: 'D', stmt: ps, described: cs})
	return nil
}

// trackClose answers Close of a named statement itself: the shared server-side statement may
// serve other clients and stays until evicted.
func (t *tracker) trackClose(body []byte, w *wire.Batch, total int) {
	if len(body) < 2 || body[0] != 'S' {
		t.resp.push(respEntry{msg: 'C'})
		return
	}
	name, _, _ := wire.CString(body[1:])
	if len(name) == 0 {
		t.unnamedParse = t.unnamedParse[:0]
		t.resp.push(respEntry{msg: 'C'})
		return
	}
	t.dropStmtLocked(string(name))
	w.Cut(w.F.R + total)
	t.resp.push(respEntry{synth: wire.AppendCloseComplete(nil)})
}

// dropNamedStmtsLocked forgets the client's named statements, as DEALLOCATE ALL does.
func (t *tracker) dropNamedStmtsLocked() {
	for name := range t.stmts {
		t.dropStmtLocked(name)
	}
}

// dropStmtLocked forgets the client's statement name, reporting whether it had one.
func (t *tracker) dropStmtLocked(name string) bool {
	cs, ok := t.stmts[name]
	if ok {
		delete(t.stmts, name)
		t.reg.put(cs.ps)
	}
	return ok
}

// dropAllStmtsLocked forgets every statement the client prepared.
func (t *tracker) dropAllStmtsLocked() {
	t.dropNamedStmtsLocked()
	t.unnamedParse = t.unnamedParse[:0]
}

// pinLocked keeps the client on its current server for the rest of its session.
func (t *tracker) pinLocked(reason classify.Reason) {
	if t.pinned != "" {
		return
	}
	t.pinned = reason
	t.newPin = reason
}

// popSynths takes the replies the tracker makes itself that are next in line.
func (t *tracker) popSynths() []byte {
	var out []byte
	for h := t.resp.head(); h != nil && h.msg == 0; h = t.resp.head() {
		out = append(out, h.synth...)
		if h.ready {
			out = wire.AppendReadyForQuery(out, t.readyStatusLocked())
		}
		t.resp.pop()
	}
	return out
}

// relayTracked is scanServer for transaction mode: it matches each server message to the
// request it answers, drops replies to the proxy's own requests, inserts the replies the proxy
// makes itself, and keeps the statement caches right when a request fails. Called with wmu
// and mu held; it returns what to write to the client.
func (t *tracker) relayTracked(f *wire.Frames, st *serverState, writing, closing bool) (out []byte, ready int, status byte, needWrite bool, err error) {
	w := wire.Batch{F: f, Out: t.sout[:0], RunStart: f.R}
	defer func() {
		if w.Used {
			t.sout = keepScratch(w.Out)
		}
	}()
	for f.R < f.W {
		if f.Advance(&w) {
			continue
		}
		typ, length, ok, herr := f.Next(t.lim.maxMsg)
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
			t.captureShapeLocked(h, typ, f.Buf[f.R:min(f.R+total, f.W)], f.W-f.R >= total)
		}
		drop := false
		if typ != 'E' && typ != 'N' && typ != 'S' && typ != 'A' && h != nil && !h.swallow {
			// Part of a result: from now on the batch may have run.
			t.replied = true
		}
		switch typ {
		case 'N', 'S', 'A':
			// Notices, parameter reports and notifications belong to no request; those caused
			// by the proxy's own statements are not the client's business.
			drop = h != nil && h.swallow && h.msg == 'Q'
		case 'E':
			// Decisions on a failed request need clientToServer's write of it finished (the
			// reply can overtake its return); the queue may change meanwhile, so look again.
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
				if fatal && t.txStatus != 'T' && t.txStatus != 'E' && shutdownError(code) {
					// An idle server announcing its end (terminated, or the upstream shutting
					// down) concerns no request: the client gets another server instead.
					w.Cut(f.W)
					f.R = f.W
					t.serverGone = true
					return w.Bytes(), ready, status, false, nil
				}
				break
			}
			readOnly := t.lim.wantsPrimary && code == retry.CodeReadOnlySQLTransaction
			if readOnly {
				// The route wants a primary and this server refuses writes: it was demoted.
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
			if code != "" && (readOnly || conflict || refused) && t.firstReplyLocked() && !closing && t.retryAttempts < t.lim.retries && !t.batchCommitsLocked() {
				// Send the batch again instead of failing it. Nothing after this error
				// matters to the client.
				t.retryNeeded = true
				t.retryReason = retry.ClassifyCode(code).Reason
				if readOnly {
					t.retryReason = retry.ReasonReadOnly
				}
				t.retryOldReady = conflict && wire.HasReadyForQuery(f.Buf[f.R+total:f.W])
				w.Cut(f.W)
				f.R = f.W
				return w.Bytes(), ready, status, false, nil
			}
			if h.msg == 'Q' && h.single && h.done && !h.swallow && t.resp.len() == 1 && fatal &&
				t.txStatus != 'T' && t.txStatus != 'E' && shutdownError(code) {
				// The server was shut down right after completing a one-statement Query in an
				// implicit transaction, which it had committed before reporting completion:
				// finish the exchange for the client instead of failing a statement that took
				// effect. The connection is dropped quietly when it closes.
				w.Cut(f.W)
				w.Out = wire.AppendReadyForQuery(w.Out, 'I')
				w.Used = true
				f.R = f.W
				t.resp.pop()
				t.pending = max(t.pending-1, 0)
				t.serverGone = true
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
				if t.rerunBatchLocked(h.stmt, st, retry.ReasonSchemaChange) {
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
				if t.rerunBatchLocked(h.stmt, st, retry.ReasonStatementMissing) {
					drop = true
					break
				}
			}
			// The failed request, and everything up to the next Sync, which the server skips.
			t.failEntryLocked(h, st)
			t.resp.pop()
			for h = t.resp.head(); h != nil && h.msg != 'S'; h = t.resp.head() {
				t.failEntryLocked(h, st)
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
				t.pending = max(t.pending-1, 0)
				t.txStatus = status
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

// captureShapeLocked adds a message of a Describe reply (ParameterDescription, then
// RowDescription or NoData) to the shape being read for entry h; msg is the message, whole
// unless too large for the buffer, when the shape cannot be known. The last message completes
// the shape: the client's statement remembers it, or the verification is done.
func (t *tracker) captureShapeLocked(h *respEntry, typ byte, msg []byte, whole bool) {
	if !whole {
		t.shapeBuf = nil
		return
	}
	if typ == 't' {
		t.shapeBuf = append(t.shapeBuf[:0], msg...)
	} else {
		t.shapeBuf = append(t.shapeBuf, msg...)
	}
	if typ == 't' {
		return
	}
	// An unknowable shape (nil buffer) matches none, and makes the client prepare again.
	shape := bytes.Clone(t.shapeBuf)
	if shape == nil {
		shape = []byte{}
	}
	t.shapeBuf = keepScratch(t.shapeBuf)
	if h.described != nil {
		h.described.shape = shape
		return
	}
	t.verifyShape, t.verifyDone = shape, true
	t.wake = true
}

// synthsBefore inserts the proxy's own responses that are next in line at the current position.
func (t *tracker) synthsBefore(w *wire.Batch) {
	for h := t.resp.head(); h != nil && h.msg == 0; h = t.resp.head() {
		w.Cut(w.F.R)
		w.Add(h.synth)
		if h.ready {
			w.Out = wire.AppendReadyForQuery(w.Out, t.readyStatusLocked())
			w.Used = true
		}
		t.resp.pop()
	}
}

// failEntryLocked undoes what the proxy assumed of a request that failed or was skipped: a
// statement it meant to prepare is not prepared, and a client's new statement is forgotten.
func (t *tracker) failEntryLocked(e *respEntry, st *serverState) {
	if e.verify {
		// The statement's prepare failed: the server skips the held Bind, and the client
		// gets the prepare's error.
		t.verifyFailed, t.verifyDone = true, true
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
			t.unnamedParse = t.unnamedParse[:0]
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
			t.dropStmtLocked(name)
		}
	}
}

// refuseUnknownLocked answers a Bind or Describe naming a statement the client does not have but
// whose name is the proxy's (another client's shared statement) with the error PostgreSQL
// gives for a missing statement; the server would run it. It reports whether it did. The rest
// of the message (for a large Bind) is dropped with it.
func (t *tracker) refuseUnknownLocked(name []byte, w *wire.Batch, total int) bool {
	if !bytes.HasPrefix(name, []byte(serverStmtPrefix)) {
		return false
	}
	t.refuseMessageLocked(w, total, retry.CodeInvalidStatementName, fmt.Sprintf("prepared statement %q does not exist", name))
	return true
}

// refuseMessageLocked answers the client message at the scan position, of total bytes and
// perhaps not all buffered, with an ERROR of the proxy's own, dropping the message, and skips
// to the client's next Sync as PostgreSQL does after an error.
func (t *tracker) refuseMessageLocked(w *wire.Batch, total int, code, msg string) {
	e := &pgconn.PgError{Severity: "ERROR", Code: code, Message: msg}
	t.resp.push(respEntry{synth: wire.AppendErrorResponse(nil, e)})
	t.skipping = true
	w.Cut(w.F.R)
	if avail := w.F.W - w.F.R; avail < total {
		w.F.Dropping = true
		w.RunStart = w.F.W
	} else {
		w.RunStart = w.F.R + total
	}
}

// answerIdle answers, for a client with no server attached, the run of Parse of known
// statements, Close and Sync at the head of f, if there is one, and consumes it.
func (t *tracker) answerIdle(f *wire.Frames) []byte {
	if t.skipping || f.Remaining > 0 {
		return nil
	}
	// Find a run of such messages ending in Sync, all buffered whole.
	end := -1
	for r := f.R; ; {
		typ, length, ok := wire.HeaderOf(f.Buf[r:f.W])
		if !ok || length < 4 || length-4 > t.lim.maxMsg || f.W-r < 1+length {
			break
		}
		body := f.Buf[r+5 : r+1+length]
		ok = false
		switch typ {
		case 'P':
			ok = t.knownParseLocked(body)
		case 'C':
			ok = len(body) >= 2 && body[0] == 'S' && body[1] != 0
		case 'S':
			end = r + 1 + length
		}
		if typ == 'S' || !ok {
			break
		}
		r += 1 + length
	}
	if end < 0 {
		return nil
	}
	var out []byte
	failed := false // after an error, like PostgreSQL, skip to the Sync
	for f.R < end {
		typ, length, _ := f.Header()
		body := f.Buf[f.R+5 : f.R+1+length]
		if failed && typ != 'S' {
			f.R += 1 + length
			continue
		}
		switch typ {
		case 'P':
			name, rest, _ := wire.CString(body)
			query, paramTypes, _ := wire.CString(rest)
			var ps *preparedStmt
			if limit := t.lim.clientStatements; limit <= 0 || len(t.stmts) < limit {
				// nil if the statement was forgotten since knownParseLocked and the registry
				// is full.
				ps = t.reg.get(query, paramTypes, stmtEffect{}) // knownParseLocked: no effect
			}
			if ps == nil {
				e := &pgconn.PgError{Severity: "ERROR", Code: retry.CodeConfigurationLimitExceeded, Message: "pgsidecar: too many prepared statements (max_client_prepared_statements or max_prepared_statement_bytes)"}
				out = wire.AppendErrorResponse(out, e)
				failed = true
				break
			}
			if res := classify.Classify(bytesString(query), isTracked); res.Pin != classify.None {
				t.pinLocked(res.Pin)
			}
			t.stmts[string(name)] = &clientStmt{ps: ps}
			out = wire.AppendParseComplete(out)
		case 'C':
			name, _, _ := wire.CString(body[1:])
			t.dropStmtLocked(string(name))
			out = wire.AppendCloseComplete(out)
		case 'S':
			out = wire.AppendReadyForQuery(out, 'I')
		}
		f.R += 1 + length
	}
	return out
}

// knownParseLocked reports whether a Parse names a new statement whose text and parameter types
// a server has already accepted.
func (t *tracker) knownParseLocked(body []byte) bool {
	name, rest, ok := wire.CString(body)
	if !ok || len(name) == 0 {
		return false
	}
	if _, dup := t.stmts[string(name)]; dup {
		return false
	}
	if limit := t.lim.clientStatements; len(name) > maxStmtName || limit > 0 && len(t.stmts) >= limit {
		return false // the normal path refuses it
	}
	query, paramTypes, ok := wire.CString(rest)
	if !ok {
		return false
	}
	res := classify.Classify(bytesString(query), isTracked)
	if res.Pin != classify.None && t.refusesState() {
		return false // the normal path refuses it
	}
	if res.DiscardAll || len(res.Deallocate) > 0 {
		return false // the normal path works out what it does to prepared statements
	}
	return t.reg.valid(query, paramTypes)
}

// refusesState reports whether SQL that would pin is refused instead (session_state).
func (t *tracker) refusesState() bool {
	return t.lim.refuseState
}

func refusalMessage(reason classify.Reason) string {
	return fmt.Sprintf("pgsidecar: this statement leaves session state on the server (%s), which transaction pooling cannot carry; it is refused because session_state is \"refuse\"", reason)
}

// refusalQuery is a simple Query that fails on the server with the refusal's error.
func refusalQuery(reason classify.Reason) []byte {
	return wire.AppendQuery(nil, raiseSQL(retry.CodeFeatureNotSupported, refusalMessage(reason)))
}

// raiseSQL is a statement that fails on the server with an ERROR of code and msg: the proxy
// sends it instead of a statement it refuses inside what may be a transaction block, which the
// server then aborts as PostgreSQL would. The message is dollar-quoted, so no setting of
// standard_conforming_strings changes it.
func raiseSQL(code, msg string) string {
	tag := "$pgsidecar$"
	for strings.Contains(msg, tag) {
		tag = "$pgsidecar" + tag[1:]
	}
	return "DO $pgsidecar_do$ BEGIN RAISE EXCEPTION USING ERRCODE = '" + code + "', MESSAGE = " + tag + msg + tag + "; END $pgsidecar_do$"
}

// readyStatusLocked is the transaction status for a ReadyForQuery the proxy makes up: the
// server's last one, as every earlier reply has been relayed when it is sent.
func (t *tracker) readyStatusLocked() byte {
	if t.txStatus == 0 {
		return 'I'
	}
	return t.txStatus
}

// maxRetryBatch bounds the batches kept for a re-run after a schema change.
const maxRetryBatch = 16 << 10

// rememberBatchLocked keeps a copy of what a batch sent to the server when it could be sent
// again: it started a transaction with nothing in flight and is either one simple Query or an
// execution of prepared statements (Bind, Describe, Execute, Sync, and the proxy's own Parse of
// them). Whether it is sent again depends on how the first attempt failed (see
// retrySchemaChangeLocked and retryOnNewServer), never on a guess that it did not run.
func (t *tracker) rememberBatchLocked(out []byte, startsIdle bool) {
	t.retryBatch = t.retryBatch[:0]
	t.retryEntries = t.retryEntries[:0]
	t.retryAttempts = 0
	t.replied = false
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
	t.retryBatch = append(t.retryBatch, out...)
	t.retryEntries = append(t.retryEntries, entries...)
}

// rerunBatchLocked handles a failure of a shared statement on the first message of a
// remembered batch: 0A000 "cached plan must not change result type" after a schema change, or
// 26000 from a server that lost the statement. Nothing of the batch reached the client, so the
// proxy drops the error and the ReadyForQuery that follows it, prepares the statement afresh and
// sends the batch again. The client sees the result (its Describe of the portal tells it the
// shape), where PostgreSQL alone would have failed the statement once. It reports whether it did
// so; reason labels the retry.
func (t *tracker) rerunBatchLocked(ps *preparedStmt, st *serverState, reason string) bool {
	n := len(t.retryEntries)
	if n == 0 || t.resp.len() != n {
		return false
	}
	described, executes := 0, 0
	for _, e := range t.retryEntries {
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
	buf = append(buf, t.retryBatch...)
	t.resp.push(respEntry{msg: 'C', swallow: true})
	t.resp.push(respEntry{msg: 'P', swallow: true, stmt: ps})
	for _, e := range t.retryEntries {
		t.resp.push(e)
	}
	st.add(ps)
	t.retryBatch = t.retryBatch[:0]
	t.retryEntries = t.retryEntries[:0]
	t.resend = append(t.resend, buf...)
	t.rerunReason = reason
	return true
}

// batchCommitsLocked reports whether the remembered batch holds a request that may commit on its
// own (CALL, DO, VACUUM, ...): once a server got it, it is never sent again.
func (t *tracker) batchCommitsLocked() bool {
	for _, e := range t.retryEntries {
		if e.commits {
			return true
		}
	}
	return false
}

// firstReplyLocked reports whether the server has not answered any part of the remembered
// batch yet (so no byte of its result has reached the client).
func (t *tracker) firstReplyLocked() bool {
	n := len(t.retryEntries)
	if n == 0 || t.resp.len() != n || t.replied {
		return false
	}
	for i, e := range t.retryEntries {
		h := t.resp.e[t.resp.h+i]
		if h.msg != e.msg || h.stmt != e.stmt {
			return false
		}
	}
	return true
}

// canResend reports whether the remembered batch is what is in flight, and so could be sent to
// another server.
func (t *tracker) canResend() bool {
	n := len(t.retryEntries)
	return n > 0 && t.resp.len() == n
}

// retriesLeft reports whether the remembered batch may be sent once more (retries).
func (t *tracker) retriesLeft() bool { return t.retryAttempts < t.lim.retries }

// resend is a remembered batch taken to be sent to another server.
type resend struct {
	reason       string // the retry reason (a retry.Reason)
	oldReady     bool   // the refusing server's ReadyForQuery was read already (conflicts)
	wroteNothing bool   // the batch never reached the old server: its write failed
	attempt      int    // 1 for the first re-send
	batch        []byte
	entries      []respEntry
}

// takeResend takes the remembered batch for a re-send, counting the attempt.
func (t *tracker) takeResend() resend {
	t.retryAttempts++
	t.replied = false
	t.retryNeeded = false
	r := resend{reason: t.retryReason, oldReady: t.retryOldReady, attempt: t.retryAttempts,
		batch: bytes.Clone(t.retryBatch), entries: slices.Clone(t.retryEntries)}
	t.retryReason, t.retryOldReady = "", false
	if r.reason == "" {
		r.reason, r.wroteNothing = retry.ReasonNetwork, true // the write failed: relayTracked saw no refusal
	}
	t.writeFailed = false
	return r
}

// resendOn returns what to send a new server, st, for the re-send of r, and queues its replies:
// the batch, preceded by the Parse of each shared statement the batch uses and st lacks.
func (t *tracker) resendOn(st *serverState, r resend) []byte {
	var buf []byte
	t.resp.reset()
	t.txStatus = 'I'
	for _, e := range r.entries {
		if e.msg == 'P' && e.swallow && e.stmt != nil && st.has(e.stmt) {
			// The batch prepares it, and this server has it already: make room for the Parse.
			buf = wire.AppendClose(buf, 'S', e.stmt.name)
			t.resp.push(respEntry{msg: 'C', swallow: true})
			st.remove(e.stmt)
		}
	}
	for _, e := range r.entries {
		if e.msg == 'P' && e.unnamed {
			st.unnamedBy, st.unnamedSeq = t, t.unnamedSeq
		}
		if e.msg == 'B' && e.stmt != nil && !st.has(e.stmt) && !preparedIn(r.entries, e.stmt) {
			// Closed first, as prepareLocked does: the server may hold an older one.
			buf = wire.AppendClose(buf, 'S', e.stmt.name)
			t.resp.push(respEntry{msg: 'C', swallow: true})
			buf = append(buf, e.stmt.parse...)
			t.resp.push(respEntry{msg: 'P', swallow: true, stmt: e.stmt})
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
func preparedIn(entries []respEntry, ps *preparedStmt) bool {
	for _, e := range entries {
		if e.msg == 'P' && e.stmt == ps {
			return true
		}
	}
	return false
}
