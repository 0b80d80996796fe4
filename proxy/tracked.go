package proxy

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"unsafe"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/proxy/classify"
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

// cstring splits b at its first NUL.
func cstring(b []byte) (s, rest []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}

// batchWriter collects what one scan sends on: runs of the input buffer passed through as they
// are, and messages the proxy rewrote or added. Until something is rewritten, the output is the
// input run itself and nothing is copied.
type batchWriter struct {
	f        *frameReader
	out      []byte
	used     bool
	runStart int
}

// cut ends the pass-through run at the current message (f.r) and skips to skipTo.
func (w *batchWriter) cut(skipTo int) {
	w.out = append(w.out, w.f.buf[w.runStart:w.f.r]...)
	w.used = true
	w.runStart = skipTo
}

func (w *batchWriter) add(b []byte) {
	w.out = append(w.out, b...)
	w.used = true
}

func (w *batchWriter) addString(s string) {
	w.out = append(w.out, s...)
	w.used = true
}

func (w *batchWriter) addByte(b byte) {
	w.out = append(w.out, b)
	w.used = true
}

// bytes returns everything to send for the scanned part of the buffer.
func (w *batchWriter) bytes() []byte {
	if !w.used {
		return w.f.buf[w.runStart:w.f.r]
	}
	w.out = append(w.out, w.f.buf[w.runStart:w.f.r]...)
	return w.out
}

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
func needsServer(f *frameReader) bool {
	r := f.r
	if f.remaining > 0 {
		if !f.dropping {
			return true
		}
		r += f.remaining // the rest of a message being dropped
	}
	for f.w-r >= 5 {
		switch typ := f.buf[r]; typ {
		case 'd', 'c', 'f', 'H':
		case 'X':
			return false
		default:
			return true
		}
		r += 1 + int(binary.BigEndian.Uint32(f.buf[r+1:]))
	}
	return false
}

// forwardTracked is forwardClient for transaction mode: besides relaying, it keeps each
// client's prepared statements on whichever server it has, pins clients that leave state
// behind, and queues what each message expects back so that serverToClient can match replies.
func (s *session) forwardTracked(f *frameReader) error {
	f.need = 0
	if err := s.answerLocally(f); err != nil {
		return err
	}
	// Attach a server if the messages need one. The check is repeated under the lock: the
	// server may be released between a check and the scan.
	for {
		s.mu.Lock()
		for s.retrying || s.serverGone {
			// serverToClient is moving the last batch to another server, or dropping one
			// that is shutting down.
			s.wrote.Wait()
		}
		if s.server != nil || !needsServer(f) {
			break
		}
		s.mu.Unlock()
		if err := s.attach(); err != nil {
			return err
		}
	}
	srv := s.server
	var st *serverState
	if srv != nil {
		st = stateOf(srv)
	}
	// A batch that starts a transaction with nothing in flight can be re-run if a schema change
	// fails it before any of its results reached the client (see retrySchemaChangeLocked).
	startsIdle := s.resp.len() == 0 && s.pending == 0 && s.txStatus != 'T' && s.txStatus != 'E'
	w := batchWriter{f: f, out: s.cout[:0], runStart: f.r}
	requests, unsynced := 0, -1
	var err error
	terminate := false
scan:
	for f.r < f.w {
		if f.advance(&w) {
			continue
		}
		typ, length, ok, herr := f.next(s.maxMsg)
		if herr != nil {
			err = protocolErrorf("%v", herr)
			break
		}
		if !ok {
			break
		}
		total := 1 + length
		whole := f.w-f.r >= total
		// With no server, only messages needsServer lets through get here. After an error the
		// proxy raised itself, PostgreSQL would ignore messages until Sync. Both are dropped.
		if srv == nil && typ != 'X' || s.skipping && typ != 'S' && typ != 'X' {
			w.cut(f.r)
			if !whole {
				f.dropping = true
				f.remaining = length - 4
				f.r += 5
			} else {
				f.r += total
			}
			w.runStart = f.r
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
					f.need = total
					break scan
				}
				if typ == 'Q' {
					s.pinLocked(reasonUnclassified)
					s.resp.push(respEntry{msg: 'Q', commits: true})
					st.unnamedBy = nil
					requests++
					f.r += 5
					f.remaining = length - 4
					continue
				}
				err = &startupError{code: "54000", msg: fmt.Sprintf("pgsidecar: %c message of %d bytes is too large to track in transaction mode (limit %d)", typ, total, maxInspect)}
				break scan
			}
		}
		body := f.buf[f.r+5 : min(f.r+total, f.w)]
		switch typ {
		case 'Q':
			if s.trackQuery(body, st, &w, total) {
				requests++
			}
		case 'P':
			unsynced = 1
			if perr := s.trackParse(body, st, &w, total); perr != nil {
				err = perr
				break scan
			}
		case 'B':
			unsynced = 1
			need, berr := s.trackBind(body, st, &w, total)
			if berr != nil {
				err = berr
				break scan
			}
			if need > 0 {
				f.need = need
				break scan
			}
		case 'D':
			unsynced = 1
			if derr := s.trackDescribe(body, st, &w, total); derr != nil {
				err = derr
				break scan
			}
		case 'C':
			unsynced = 1
			s.trackClose(body, &w, total)
		case 'E':
			unsynced = 1
			s.resp.push(respEntry{msg: 'E'})
		case 'S':
			s.resp.push(respEntry{msg: 'S'})
			requests++
			unsynced = 0
			s.skipping = false
		case 'F':
			s.resp.push(respEntry{msg: 'F'})
			requests++
		case 'H', 'd', 'c', 'f':
		case 'X':
			terminate = true
			break scan
		default:
			err = protocolErrorf("invalid frontend message type %d", typ)
			break scan
		}
		if w.runStart > f.r {
			// The handler consumed the message, or its head, itself (dropped or rewrote it);
			// whatever is left of it streams through.
			consumed := w.runStart - f.r
			f.r = w.runStart
			f.remaining = total - consumed
			continue
		}
		f.r += 5
		f.remaining = length - 4
	}
	out := w.bytes()
	if w.used {
		s.cout = keepScratch(w.out)
	}
	synthAtHead := s.resp.len() > 0 && s.resp.head().msg == 0
	if len(out) > 0 {
		s.rememberBatchLocked(out, startsIdle && f.remaining == 0)
	}
	if len(out) > 0 && srv != nil {
		s.addPendingLocked(requests)
		if unsynced >= 0 {
			s.unsynced = unsynced == 1
		}
		s.partial = f.remaining > 0 && !f.dropping
		s.writing = true
	}
	s.mu.Unlock()

	if len(out) > 0 && srv != nil {
		_, werr := srv.Write(out)
		s.mu.Lock()
		s.writing = false
		s.wrote.Broadcast()
		if werr == nil {
			s.kickIfReleasableLocked()
		} else if connectionLost(werr) && len(s.retryEntries) > 0 && s.resp.len() == len(s.retryEntries) {
			// The server was gone before the batch reached it; serverToClient sees the
			// connection fail too and sends the batch to another server.
			s.writeFailed = true
			werr = nil
		}
		s.mu.Unlock()
		if werr != nil {
			return fmt.Errorf("write to server: %w", werr)
		}
	}
	if synthAtHead {
		if werr := s.emitSynths(); werr != nil {
			return werr
		}
		// A batch the proxy answered entirely leaves nothing to release the server on.
		s.mu.Lock()
		s.kickIfReleasableLocked()
		s.mu.Unlock()
	}
	if err != nil {
		return err
	}
	if terminate {
		return errTerminate
	}
	f.compact()
	return nil
}

// trackQuery inspects a simple Query: what it leaves on the session decides pinning. It
// reports whether the Query goes to the server (DEALLOCATE of the client's own statements is
// answered by the proxy: the server knows them under other names).
func (s *session) trackQuery(body []byte, st *serverState, w *batchWriter, total int) (forward bool) {
	sql := body
	if len(sql) > 0 && sql[len(sql)-1] == 0 {
		sql = sql[:len(sql)-1]
	}
	res := classify.Classify(bytesString(sql), isTracked)
	if res.Statements == 1 && len(res.Deallocate) == 1 && s.txStatus != 'E' {
		if ps, ok := s.stmts[res.Deallocate[0]]; ok {
			delete(s.stmts, res.Deallocate[0])
			s.srv.stmts.put(ps)
			w.cut(w.f.r + total)
			s.resp.push(respEntry{synth: commandComplete("DEALLOCATE"), ready: true})
			return false
		}
	}
	if res.Pin != classify.None && s.pinned == "" && s.refusesState() {
		// session_state = refuse: the server itself raises the error, so that an explicit
		// transaction is aborted exactly as PostgreSQL would abort it.
		w.cut(w.f.r + total)
		w.add(refusalQuery(res.Pin))
		s.resp.push(respEntry{msg: 'Q'})
		return true
	}
	if res.Pin != classify.None {
		s.pinLocked(res.Pin)
	}
	if res.DiscardAll {
		// DISCARD ALL / DEALLOCATE ALL drop the shared statements on this server as well.
		s.dropAllStmtsLocked()
		st.clear()
	}
	for _, name := range res.Deallocate {
		if ps, ok := s.stmts[name]; ok {
			delete(s.stmts, name)
			s.srv.stmts.put(ps)
		}
	}
	if res.SetsTracked {
		s.paramsDirty = true
	}
	// A simple Query destroys the unnamed statement, on the server and so for the client.
	st.unnamedBy = nil
	s.unnamedParse = s.unnamedParse[:0]
	s.resp.push(respEntry{msg: 'Q', single: res.Statements == 1, plain: res.Plain, commits: res.CommitsAlone})
	return true
}

func commandComplete(tag string) []byte {
	n := 4 + len(tag) + 1
	b := []byte{'C', byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
	b = append(b, tag...)
	return append(b, 0)
}

// trackParse handles Parse: a named statement is mapped to its shared server-side statement,
// prepared on this server unless it already is; the unnamed one is remembered for replay.
func (s *session) trackParse(body []byte, st *serverState, w *batchWriter, total int) error {
	name, rest, ok := cstring(body)
	if !ok {
		return protocolErrorf("malformed Parse message")
	}
	query, paramTypes, ok := cstring(rest)
	if !ok {
		return protocolErrorf("malformed Parse message")
	}
	res := classify.Classify(bytesString(query), isTracked)
	if res.Pin != classify.None {
		if s.pinned == "" && s.refusesState() {
			e := &pgconn.PgError{Severity: "ERROR", Code: codeFeatureUnsupported, Message: refusalMessage(res.Pin)}
			s.resp.push(respEntry{synth: appendErrorResponse(nil, e)})
			s.skipping = true
			w.cut(w.f.r + total)
			return nil
		}
		s.pinLocked(res.Pin)
	} else if res.SetsTracked {
		s.paramsDirty = true
	}
	if len(name) == 0 {
		s.unnamedParse = append(s.unnamedParse[:0], w.f.buf[w.f.r:w.f.r+total]...)
		s.unnamedCommits = res.CommitsAlone
		s.unnamedSeq++
		st.unnamedBy, st.unnamedSeq = s, s.unnamedSeq
		s.resp.push(respEntry{msg: 'P', unnamed: true})
		return nil
	}
	if _, dup := s.stmts[string(name)]; dup {
		s.refuseLocked(w, total, codeDuplicateStatement, fmt.Sprintf("prepared statement %q already exists", name))
		return nil
	}
	if len(name) > maxStmtName {
		s.refuseLocked(w, total, codeNameTooLong, fmt.Sprintf("pgsidecar: prepared statement name of %d bytes is longer than %d", len(name), maxStmtName))
		return nil
	}
	if limit := s.srv.cfg.MaxClientPreparedStatements; limit > 0 && len(s.stmts) >= limit {
		s.refuseLocked(w, total, codeConfigLimit, fmt.Sprintf("pgsidecar: too many prepared statements: this client holds %d (max_client_prepared_statements); close or deallocate some first", len(s.stmts)))
		return nil
	}
	ps := s.srv.stmts.get(query, paramTypes)
	if ps == nil {
		s.refuseLocked(w, total, codeConfigLimit, fmt.Sprintf("pgsidecar: the shared prepared statement registry is full (max_prepared_statement_bytes=%d)", s.srv.cfg.MaxPreparedStatementBytes))
		return nil
	}
	s.stmts[string(name)] = ps
	w.cut(w.f.r + total)
	if st.has(ps) {
		s.resp.push(respEntry{synth: parseComplete})
		return nil
	}
	s.prepareLocked(ps, st, w, false)
	return nil
}

// refuseLocked answers the client message at the scan position (of total bytes) with an ERROR
// of the proxy's own, and skips the client's messages up to its next Sync, as PostgreSQL does
// after an error in the extended protocol.
func (s *session) refuseLocked(w *batchWriter, total int, code, msg string) {
	e := &pgconn.PgError{Severity: "ERROR", Code: code, Message: msg}
	s.resp.push(respEntry{synth: appendErrorResponse(nil, e)})
	s.skipping = true
	w.cut(w.f.r + total)
}

// prepareLocked sends ps's Parse to the server, making room in its statement cache first.
func (s *session) prepareLocked(ps *preparedStmt, st *serverState, w *batchWriter, swallow bool) {
	if st.stale(ps) {
		w.add(closeMessage('S', ps.name))
		s.resp.push(respEntry{msg: 'C', swallow: true})
		st.remove(ps)
	}
	if old := st.evict(s.srv.cfg.MaxPreparedStatements); old != nil {
		w.add(closeMessage('S', old.name))
		s.resp.push(respEntry{msg: 'C', swallow: true})
	}
	st.add(ps)
	w.add(ps.parse)
	s.resp.push(respEntry{msg: 'P', swallow: swallow, stmt: ps})
}

func closeMessage(kind byte, name string) []byte {
	n := 4 + 1 + len(name) + 1
	b := make([]byte, 0, 1+n)
	b = append(b, 'C', byte(n>>24), byte(n>>16), byte(n>>8), byte(n), kind)
	b = append(b, name...)
	return append(b, 0)
}

// ensureUnnamedLocked replays the client's last unnamed Parse when the server holds another
// client's unnamed statement.
func (s *session) ensureUnnamedLocked(st *serverState, w *batchWriter) {
	if len(s.unnamedParse) == 0 || (st.unnamedBy == s && st.unnamedSeq == s.unnamedSeq) {
		return
	}
	w.cut(w.f.r)
	w.add(s.unnamedParse)
	st.unnamedBy, st.unnamedSeq = s, s.unnamedSeq
	s.resp.push(respEntry{msg: 'P', swallow: true, unnamed: true})
}

// maxBindNames bounds the head of a Bind (portal and statement names) the proxy waits for.
const maxBindNames = 4096

// trackBind rewrites a Bind of a named statement to its server-side name, preparing it first
// if this server does not have it. body may hold only the start of a large Bind: only the names
// are needed, and the parameters stream through. need > 0 asks for that many bytes buffered.
func (s *session) trackBind(body []byte, st *serverState, w *batchWriter, total int) (need int, err error) {
	portal, rest, ok := cstring(body)
	var name []byte
	if ok {
		name, _, ok = cstring(rest)
	}
	if !ok {
		if len(body) < total-5 && len(body) < maxBindNames {
			return min(total, 5+maxBindNames), nil
		}
		return 0, protocolErrorf("malformed Bind message")
	}
	if len(name) == 0 {
		s.ensureUnnamedLocked(st, w)
		s.resp.push(respEntry{msg: 'B', commits: s.unnamedCommits})
		return 0, nil
	}
	ps, ok := s.stmts[string(name)]
	if !ok {
		if s.refuseUnknownLocked(name, w, total) {
			return 0, nil
		}
		// The server has no statement by the client's name either, so it answers with the
		// error PostgreSQL would give.
		s.resp.push(respEntry{msg: 'B'})
		return 0, nil
	}
	head := 5 + len(portal) + 1 + len(name) + 1
	w.cut(w.f.r + head)
	if !st.has(ps) {
		s.prepareLocked(ps, st, w, true)
	}
	n := total - 1 - len(name) + len(ps.name)
	w.add([]byte{'B', byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
	w.add(portal)
	w.addByte(0)
	w.addString(ps.name)
	w.addByte(0)
	s.resp.push(respEntry{msg: 'B', stmt: ps, commits: ps.commits})
	return 0, nil
}

// trackDescribe rewrites a Describe of a named statement like trackBind.
func (s *session) trackDescribe(body []byte, st *serverState, w *batchWriter, total int) error {
	if len(body) < 2 {
		return protocolErrorf("malformed Describe message")
	}
	name, _, ok := cstring(body[1:])
	if !ok {
		return protocolErrorf("malformed Describe message")
	}
	if body[0] != 'S' {
		s.resp.push(respEntry{msg: 'D'})
		return nil
	}
	if len(name) == 0 {
		s.ensureUnnamedLocked(st, w)
		s.resp.push(respEntry{msg: 'D'})
		return nil
	}
	ps, ok := s.stmts[string(name)]
	if !ok {
		if !s.refuseUnknownLocked(name, w, total) {
			s.resp.push(respEntry{msg: 'D'})
		}
		return nil
	}
	w.cut(w.f.r + total)
	if !st.has(ps) {
		s.prepareLocked(ps, st, w, true)
	}
	n := 4 + 1 + len(ps.name) + 1
	w.add([]byte{'D', byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n), 'S'})
	w.addString(ps.name)
	w.addByte(0)
	s.resp.push(respEntry{msg: 'D'})
	return nil
}

// trackClose answers Close of a named statement itself: the shared server-side statement may
// serve other clients and stays until evicted.
func (s *session) trackClose(body []byte, w *batchWriter, total int) {
	if len(body) < 2 || body[0] != 'S' {
		s.resp.push(respEntry{msg: 'C'})
		return
	}
	name, _, _ := cstring(body[1:])
	if len(name) == 0 {
		s.unnamedParse = s.unnamedParse[:0]
		s.resp.push(respEntry{msg: 'C'})
		return
	}
	if ps, ok := s.stmts[string(name)]; ok {
		delete(s.stmts, string(name))
		s.srv.stmts.put(ps)
	}
	w.cut(w.f.r + total)
	s.resp.push(respEntry{synth: closeComplete})
}

// dropAllStmtsLocked forgets every statement the client prepared.
func (s *session) dropAllStmtsLocked() {
	for name, ps := range s.stmts {
		delete(s.stmts, name)
		s.srv.stmts.put(ps)
	}
	s.unnamedParse = s.unnamedParse[:0]
}

// pinLocked keeps the client on its current server for the rest of its session.
func (s *session) pinLocked(reason classify.Reason) {
	if s.pinned != "" {
		return
	}
	s.pinned = reason
	s.srv.metrics.pinned(string(reason))
	s.log.Info("client pinned to its server connection", "reason", string(reason))
}

// emitSynths sends the responses the proxy answers itself that are next in line. The lock
// order is wmu, then mu, as in serverToClient.
func (s *session) emitSynths() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.Lock()
	var out []byte
	for h := s.resp.head(); h != nil && h.msg == 0; h = s.resp.head() {
		out = append(out, h.synth...)
		if h.ready {
			out = append(out, 'Z', 0, 0, 0, 5, s.readyStatusLocked())
		}
		s.resp.pop()
	}
	s.mu.Unlock()
	if len(out) == 0 {
		return nil
	}
	if _, err := s.cio.Write(out); err != nil {
		return fmt.Errorf("write to client: %w", err)
	}
	return nil
}

// relayTracked is scanServer for transaction mode: it matches each server message to the
// request it answers, drops replies to the proxy's own requests, inserts the replies the proxy
// makes itself, and keeps the statement caches right when a request fails. Called with wmu
// and mu held; it returns what to write to the client.
func (s *session) relayTracked(f *frameReader, st *serverState) (out []byte, ready int, status byte, err error) {
	w := batchWriter{f: f, out: s.sout[:0], runStart: f.r}
	defer func() {
		if w.used {
			s.sout = keepScratch(w.out)
		}
	}()
	for f.r < f.w {
		if f.advance(&w) {
			continue
		}
		typ, length, ok, herr := f.next(s.maxMsg)
		if herr != nil {
			return w.bytes(), ready, status, fmt.Errorf("server sent %w", herr)
		}
		if !ok {
			break
		}
		total := 1 + length
		if (typ == 'Z' || typ == 'E') && total <= len(f.buf) && f.w-f.r < total {
			break // inspected whole: wait for the rest
		}
		s.synthsBefore(&w)
		h := s.resp.head()
		drop := false
		if typ != 'E' && typ != 'N' && typ != 'S' && typ != 'A' && h != nil && !h.swallow {
			// Part of a result: from now on the batch may have run.
			s.replied = true
		}
		switch typ {
		case 'N', 'S', 'A':
			// Notices, parameter reports and notifications belong to no request; those caused
			// by the proxy's own statements are not the client's business.
			drop = h != nil && h.swallow && h.msg == 'Q'
		case 'E':
			// Decisions on a failed request need clientToServer's write of it finished (the
			// reply can overtake its return); the queue may change meanwhile, so look again.
			for s.writing {
				s.wrote.Wait()
			}
			h = s.resp.head()
			var code string
			fatal := false
			if f.w-f.r >= total {
				body := f.buf[f.r+5 : f.r+total]
				code, fatal = errorCode(body), errorFatal(body)
			}
			if h == nil {
				if fatal && s.txStatus != 'T' && s.txStatus != 'E' && !s.writing && shutdownError(code) {
					// An idle server announcing its end (terminated, or the upstream shutting
					// down) concerns no request: the client gets another server instead.
					w.cut(f.w)
					f.r = f.w
					s.serverGone = true
					return w.bytes(), ready, status, nil
				}
				break
			}
			readOnly := s.wantsPrimary && code == codeReadOnlySQLTransaction
			if readOnly {
				// The route wants a primary and this server refuses writes: it was demoted.
				// Every connection to it goes (this one when released), and new ones are
				// dialled to whichever host target_session_attrs accepts now.
				s.retireServerLocked()
			}
			// A serialization failure or deadlock of a plain statement that ran alone in an
			// implicit transaction rolled it back whole: running it again is what the client
			// would do.
			conflict := (code == codeSerializationFailure || code == codeDeadlockDetected) && h.msg == 'Q' && h.single && h.plain
			// A server that refuses a request with a FATAL connection or shutdown error ends the
			// connection and rolls back what the request did, unless the request could commit
			// on its own. An ERROR with the same code (a statement can raise any code) proves
			// nothing, and neither does a FATAL followed by anything but the connection's end.
			refused := fatal && retryableServerError(code) && f.r+total == f.w
			if code != "" && (readOnly || conflict || refused) && s.firstReplyLocked() && s.canRetryLocked() && !s.batchCommitsLocked() {
				// Send the batch again instead of failing it. Nothing after this error
				// matters to the client.
				s.retryNeeded = true
				switch {
				case readOnly:
					s.retryReason = "read_only"
				case code == codeSerializationFailure:
					s.retryReason = "serialization"
				case code == codeDeadlockDetected:
					s.retryReason = "deadlock"
				default:
					s.retryReason = "connection"
				}
				s.retryOldReady = conflict && hasReadyForQuery(f.buf[f.r+total:f.w])
				w.cut(f.w)
				f.r = f.w
				return w.bytes(), ready, status, nil
			}
			if h.msg == 'Q' && h.single && h.done && !h.swallow && s.resp.len() == 1 && !s.writing && fatal &&
				s.txStatus != 'T' && s.txStatus != 'E' && shutdownError(code) {
				// The server was shut down right after completing a one-statement Query in an
				// implicit transaction, which it had committed before reporting completion:
				// finish the exchange for the client instead of failing a statement that took
				// effect. The connection is dropped quietly when it closes.
				w.cut(f.w)
				w.add([]byte{'Z', 0, 0, 0, 5, 'I'})
				f.r = f.w
				s.resp.pop()
				s.pending = max(s.pending-1, 0)
				s.serverGone = true
				return w.bytes(), ready, status, nil
			}
			if !extended(h.msg) {
				drop = h.swallow
				break
			}
			// A schema change invalidated a shared statement's result type: every server must
			// prepare it afresh (the client sees this error once, as it would directly).
			if h.msg == 'B' && h.stmt != nil && code == "0A000" {
				h.stmt.gen.Add(1)
				if s.retrySchemaChangeLocked(h.stmt, st) {
					drop = true
					break
				}
			}
			// The failed request, and everything up to the next Sync, which the server skips.
			s.failEntryLocked(h, st)
			s.resp.pop()
			for h = s.resp.head(); h != nil && h.msg != 'S'; h = s.resp.head() {
				s.failEntryLocked(h, st)
				s.resp.pop()
			}
		case 'Z':
			for h != nil && h.msg != 'Q' && h.msg != 'F' && h.msg != 'S' {
				s.resp.pop() // out of step: should not happen
				h = s.resp.head()
			}
			if f.w-f.r >= 6 {
				status = f.buf[f.r+5]
			}
			if h != nil {
				drop = h.swallow
				if !h.swallow {
					ready++
				}
				s.resp.pop()
			} else {
				ready++
			}
			if !drop {
				// Counted here, under the same lock as the queue, not after the write to the
				// client: the client may answer that ReadyForQuery at once, and its next
				// request must find the session idle.
				s.pending = max(s.pending-1, 0)
				s.txStatus = status
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
					s.resp.pop()
				}
			}
		}
		if drop {
			if f.w-f.r >= total {
				w.cut(f.r + total)
				f.r += total
			} else {
				w.cut(f.w)
				f.dropping = true
				f.remaining = total - (f.w - f.r)
				f.r = f.w
			}
			continue
		}
		if f.w-f.r >= total {
			f.r += total
		} else {
			f.r += 5
			f.remaining = length - 4
		}
	}
	if f.remaining == 0 {
		s.synthsBefore(&w)
	}
	return w.bytes(), ready, status, nil
}

// synthsBefore inserts the proxy's own responses that are next in line at the current position.
func (s *session) synthsBefore(w *batchWriter) {
	for h := s.resp.head(); h != nil && h.msg == 0; h = s.resp.head() {
		w.cut(w.f.r)
		w.add(h.synth)
		if h.ready {
			w.add([]byte{'Z', 0, 0, 0, 5, s.readyStatusLocked()})
		}
		s.resp.pop()
	}
}

// failEntryLocked undoes what the proxy assumed of a request that failed or was skipped: a
// statement it meant to prepare is not prepared, and a client's new statement is forgotten.
func (s *session) failEntryLocked(e *respEntry, st *serverState) {
	if e.msg != 'P' {
		return
	}
	if e.unnamed {
		if st.unnamedBy == s {
			st.unnamedBy = nil
		}
		if !e.swallow {
			// The client's own Parse failed: like PostgreSQL, it has no unnamed statement now.
			s.unnamedParse = s.unnamedParse[:0]
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
	for name, ps := range s.stmts {
		if ps == e.stmt {
			delete(s.stmts, name)
			s.srv.stmts.put(ps)
		}
	}
}

// refuseUnknownLocked answers a Bind or Describe naming a statement the client does not have but
// whose name is the proxy's (another client's shared statement) with the error PostgreSQL
// gives for a missing statement; the server would run it. It reports whether it did. The rest
// of the message (for a large Bind) is dropped with it.
func (s *session) refuseUnknownLocked(name []byte, w *batchWriter, total int) bool {
	if !bytes.HasPrefix(name, []byte(serverStmtPrefix)) {
		return false
	}
	e := &pgconn.PgError{Severity: "ERROR", Code: "26000", Message: fmt.Sprintf("prepared statement %q does not exist", name)}
	s.resp.push(respEntry{synth: appendErrorResponse(nil, e)})
	s.skipping = true
	w.cut(w.f.r)
	if avail := w.f.w - w.f.r; avail < total {
		w.f.dropping = true
		w.runStart = w.f.w
	} else {
		w.runStart = w.f.r + total
	}
	return true
}

// answerLocally answers, without a server, what an idle client sends that the proxy can answer
// as PostgreSQL would: Parse of a statement text a server has already accepted, Close of a
// statement, and the Sync after them. Drivers prepare statements this way before using them
// (pgbench -M prepared does, one blocking round trip per statement), and needing a server for
// it would make such a client wait for one, or deadlock with its siblings holding them.
func (s *session) answerLocally(f *frameReader) error {
	s.mu.Lock()
	if s.server != nil || s.skipping || f.remaining > 0 {
		s.mu.Unlock()
		return nil
	}
	// Find a run of such messages ending in Sync, all buffered whole.
	end := -1
	for r := f.r; f.w-r >= 5; {
		typ := f.buf[r]
		length := int(binary.BigEndian.Uint32(f.buf[r+1:]))
		if length < 4 || length-4 > s.maxMsg || f.w-r < 1+length {
			break
		}
		body := f.buf[r+5 : r+1+length]
		ok := false
		switch typ {
		case 'P':
			ok = s.knownParseLocked(body)
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
		s.mu.Unlock()
		return nil
	}
	var out []byte
	failed := false // after an error, like PostgreSQL, skip to the Sync
	for f.r < end {
		typ := f.buf[f.r]
		length := int(binary.BigEndian.Uint32(f.buf[f.r+1:]))
		body := f.buf[f.r+5 : f.r+1+length]
		if failed && typ != 'S' {
			f.r += 1 + length
			continue
		}
		switch typ {
		case 'P':
			name, rest, _ := cstring(body)
			query, paramTypes, _ := cstring(rest)
			var ps *preparedStmt
			if limit := s.srv.cfg.MaxClientPreparedStatements; limit <= 0 || len(s.stmts) < limit {
				// nil if the statement was forgotten since knownParseLocked and the registry
				// is full.
				ps = s.srv.stmts.get(query, paramTypes)
			}
			if ps == nil {
				e := &pgconn.PgError{Severity: "ERROR", Code: codeConfigLimit, Message: "pgsidecar: too many prepared statements (max_client_prepared_statements or max_prepared_statement_bytes)"}
				out = appendErrorResponse(out, e)
				failed = true
				break
			}
			if res := classify.Classify(bytesString(query), isTracked); res.Pin != classify.None {
				s.pinLocked(res.Pin)
			}
			s.stmts[string(name)] = ps
			out = append(out, parseComplete...)
		case 'C':
			name, _, _ := cstring(body[1:])
			if ps, ok := s.stmts[string(name)]; ok {
				delete(s.stmts, string(name))
				s.srv.stmts.put(ps)
			}
			out = append(out, closeComplete...)
		case 'S':
			out = append(out, 'Z', 0, 0, 0, 5, 'I')
		}
		f.r += 1 + length
	}
	s.mu.Unlock()
	s.wmu.Lock()
	_, err := s.cio.Write(out)
	s.wmu.Unlock()
	if err != nil {
		return fmt.Errorf("write to client: %w", err)
	}
	return nil
}

// knownParseLocked reports whether a Parse names a new statement whose text and parameter types
// a server has already accepted.
func (s *session) knownParseLocked(body []byte) bool {
	name, rest, ok := cstring(body)
	if !ok || len(name) == 0 {
		return false
	}
	if _, dup := s.stmts[string(name)]; dup {
		return false
	}
	if limit := s.srv.cfg.MaxClientPreparedStatements; len(name) > maxStmtName || limit > 0 && len(s.stmts) >= limit {
		return false // the normal path refuses it
	}
	query, paramTypes, ok := cstring(rest)
	if !ok {
		return false
	}
	if res := classify.Classify(bytesString(query), isTracked); res.Pin != classify.None && s.refusesState() {
		return false // the normal path refuses it
	}
	return s.srv.stmts.valid(query, paramTypes)
}

// refusesState reports whether SQL that would pin is refused instead (session_state).
func (s *session) refusesState() bool {
	return s.srv.cfg.SessionState == config.SessionStateRefuse
}

func refusalMessage(reason classify.Reason) string {
	return fmt.Sprintf("pgsidecar: this statement leaves session state on the server (%s), which transaction pooling cannot carry; it is refused because session_state is \"refuse\"", reason)
}

// refusalQuery is a simple Query that fails on the server with the refusal's error.
func refusalQuery(reason classify.Reason) []byte {
	msg := strings.ReplaceAll(refusalMessage(reason), "'", "''")
	sql := "DO $pgsidecar$ BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = '" + msg + "'; END $pgsidecar$"
	n := 4 + len(sql) + 1
	b := []byte{'Q', byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
	b = append(b, sql...)
	return append(b, 0)
}

// readyStatusLocked is the transaction status for a ReadyForQuery the proxy makes up: the
// server's last one, as every earlier reply has been relayed when it is sent.
func (s *session) readyStatusLocked() byte {
	if s.txStatus == 0 {
		return 'I'
	}
	return s.txStatus
}

// errorCode returns the SQLSTATE field of an ErrorResponse body.
func errorCode(body []byte) string { return string(errorField(body, 'C')) }

// errorFatal reports whether an ErrorResponse body has severity FATAL or PANIC: the server ends
// the connection after it. The non-localized severity (V, PostgreSQL 9.6+) is preferred.
func errorFatal(body []byte) bool {
	sev := errorField(body, 'V')
	if sev == nil {
		sev = errorField(body, 'S')
	}
	return string(sev) == "FATAL" || string(sev) == "PANIC"
}

// errorField returns field typ of an ErrorResponse or NoticeResponse body, nil when absent.
func errorField(body []byte, typ byte) []byte {
	for len(body) > 0 && body[0] != 0 {
		field := body[0]
		v, rest, ok := cstring(body[1:])
		if !ok {
			return nil
		}
		if field == typ {
			return v
		}
		body = rest
	}
	return nil
}

// maxRetryBatch bounds the batches kept for a re-run after a schema change.
const maxRetryBatch = 16 << 10

// rememberBatchLocked keeps a copy of what a batch sent to the server when it could be sent
// again: it started a transaction with nothing in flight and is either one simple Query or an
// execution of prepared statements (Bind, Describe, Execute, Sync, and the proxy's own Parse of
// them). Whether it is sent again depends on how the first attempt failed (see
// retrySchemaChangeLocked and retryOnNewServer), never on a guess that it did not run.
func (s *session) rememberBatchLocked(out []byte, startsIdle bool) {
	s.retryBatch = s.retryBatch[:0]
	s.retryEntries = s.retryEntries[:0]
	s.retryAttempts = 0
	s.replied = false
	if !startsIdle || len(out) > maxRetryBatch || s.resp.len() == 0 {
		return
	}
	entries := s.resp.e[s.resp.h:]
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
	s.retryBatch = append(s.retryBatch, out...)
	s.retryEntries = append(s.retryEntries, entries...)
}

// retrySchemaChangeLocked handles 0A000 "cached plan must not change result type" on the first
// message of a remembered batch: nothing of the batch reached the client, so the proxy drops the
// error and the ReadyForQuery that follows it, prepares the statement afresh and sends the batch
// again. The client sees the new result (its Describe of the portal tells it the new shape),
// where PostgreSQL alone would have failed the statement once. It reports whether it did so.
func (s *session) retrySchemaChangeLocked(ps *preparedStmt, st *serverState) bool {
	n := len(s.retryEntries)
	if n == 0 || s.writing || s.resp.len() != n || s.server == nil {
		return false
	}
	for _, e := range s.retryEntries {
		if e.msg == 'P' || e.msg == 'Q' {
			return false
		}
	}
	// The failed Bind heads the queue and the batch's Sync ends it: the server skips to it.
	for h := s.resp.head(); h.msg != 'S'; h = s.resp.head() {
		s.resp.pop()
	}
	s.resp.head().swallow = true
	st.remove(ps)
	var buf []byte
	buf = append(buf, closeMessage('S', ps.name)...)
	buf = append(buf, ps.parse...)
	buf = append(buf, s.retryBatch...)
	s.resp.push(respEntry{msg: 'C', swallow: true})
	s.resp.push(respEntry{msg: 'P', swallow: true, stmt: ps})
	for _, e := range s.retryEntries {
		s.resp.push(e)
	}
	st.add(ps)
	s.retryBatch = s.retryBatch[:0]
	s.retryEntries = s.retryEntries[:0]
	if _, err := s.server.Write(buf); err != nil {
		// The loop's next read fails too and ends the session with a clear error.
		s.log.Info("re-run after schema change: write to server failed", "err", err)
	}
	s.srv.metrics.retried("schema_change")
	s.log.Debug("statement re-prepared and re-run after a schema change", "statement", ps.name)
	return true
}

// batchCommitsLocked reports whether the remembered batch holds a request that may commit on its
// own (CALL, DO, VACUUM, ...): once a server got it, it is never sent again.
func (s *session) batchCommitsLocked() bool {
	for _, e := range s.retryEntries {
		if e.commits {
			return true
		}
	}
	return false
}

// firstReplyLocked reports whether the server has not answered any part of the remembered
// batch yet (so no byte of its result has reached the client).
func (s *session) firstReplyLocked() bool {
	n := len(s.retryEntries)
	if n == 0 || s.resp.len() != n || s.replied {
		return false
	}
	for i, e := range s.retryEntries {
		h := s.resp.e[s.resp.h+i]
		if h.msg != e.msg || h.stmt != e.stmt {
			return false
		}
	}
	return true
}
