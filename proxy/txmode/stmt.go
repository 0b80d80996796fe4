package txmode

import (
	"container/list"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/pgsidecar/pgsidecar/proxy/classify"
)

// Transaction pooling moves a client between server connections, but a named prepared statement
// lives on one server. The proxy therefore keeps, per client, the statements it prepared, and
// prepares them under shared server-side names on whichever server the client gets.

// ServerStmtPrefix starts every server-side statement name; clients are not expected to use it.
const ServerStmtPrefix = "pgsidecar_"

// Stmt is one distinct statement (query text and parameter types), shared by every
// client that prepared it, and known to servers under one name.
type Stmt struct {
	name  string
	parse []byte // a Parse message naming the statement name
	key   string
	refs  int // clients holding it; guarded by Registry.mu
	// commits is set when the statement may commit on its own (CALL, DO, ...): a batch
	// executing it is never sent again.
	commits bool
	// effect is what executing the statement does to prepared statements.
	effect Effect
	// signal is set when the statement is a call of pg_cancel_backend or pg_terminate_backend
	// of its parameter (signal.go).
	signal classify.Signal
	// valid is set once a server accepted the Parse: later Parses of the same text can be
	// answered by the proxy without a server.
	valid atomic.Bool
	// gen is bumped when a server reports that the statement's plan changed its result type
	// (0A000 after a schema change): every server then prepares it afresh on next use.
	gen atomic.Uint32
}

// ClientStmt is one of a client's named statements: the shared statement it maps to, and the
// shape the client was told when it described the statement (its ParameterDescription and
// RowDescription or NoData, as sent; nil if it never asked). A client that decodes by that shape
// must not get rows of another (see verifyShape).
type ClientStmt struct {
	ps    *Stmt
	shape []byte
}

// Effect is what executing a statement does to the session's prepared statements.
type Effect struct {
	// discardAll: DISCARD ALL or DEALLOCATE ALL.
	discardAll bool
	// dealloc is the shared statement a DEALLOCATE of one of the client's statements drops,
	// its text rewritten to the shared name.
	dealloc *Stmt
}

// cachedStmt is a statement prepared on a server, at the generation it was prepared.
type cachedStmt struct {
	ps  *Stmt
	gen uint32
}

// Registry maps statement texts to their shared server-side names.
type Registry struct {
	mu    sync.Mutex
	byKey map[string]*Stmt
	seq   uint64
	// bytes is the size of the Parse messages held; Max bounds it (0 = no limit).
	bytes, Max int
}

// SetMax changes Max while the registry is in use (a reload); statements beyond a lower bound
// stay until released.
func (r *Registry) SetMax(n int) {
	r.mu.Lock()
	r.Max = n
	r.mu.Unlock()
}

// get returns the shared statement for query and the Parse message's parameter-type section,
// counting one more reference, or nil when a new statement would take the registry past its
// limit. effect is the statement's effect, a function of its text, kept when it is new.
func (r *Registry) get(query, paramTypes []byte, effect Effect) *Stmt {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st, ok := r.byKey[registryKey(query, paramTypes)]; ok {
		st.refs++
		return st
	}
	name := ServerStmtPrefix + strconv.FormatUint(r.seq+1, 36)
	n := 4 + len(name) + 1 + len(query) + 1 + len(paramTypes)
	if r.Max > 0 && r.bytes+1+n > r.Max {
		return nil
	}
	if r.byKey == nil {
		r.byKey = make(map[string]*Stmt)
	}
	r.seq++
	parse := make([]byte, 0, 1+n)
	parse = append(parse, 'P', byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	parse = append(parse, name...)
	parse = append(parse, 0)
	keyStart := len(parse)
	parse = append(parse, query...)
	parse = append(parse, 0)
	parse = append(parse, paramTypes...)
	// The key is a view of the Parse message, which is never modified: the text is held once.
	key := bytesString(parse[keyStart:])
	st := &Stmt{name: name, parse: parse, key: key, refs: 1, effect: effect}
	res := classify.Classify(bytesString(query), nil)
	st.commits, st.signal = res.CommitsAlone, res.Signal
	r.byKey[key] = st
	r.bytes += len(parse)
	return st
}

// registryKey is the map key of a statement for a lookup: its text and parameter types as they
// appear in a Parse message. A stored key is a view of the statement's Parse message instead.
func registryKey(query, paramTypes []byte) string {
	return string(query) + "\x00" + string(paramTypes)
}

// valid reports whether the statement exists and a server has accepted it.
func (r *Registry) valid(query, paramTypes []byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, ok := r.byKey[registryKey(query, paramTypes)]
	return ok && st.valid.Load()
}

// put drops a reference; a statement no client holds is forgotten (servers keep it until their
// cache evicts it).
func (r *Registry) put(st *Stmt) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st.refs--
	if st.refs <= 0 && r.byKey[st.key] == st {
		delete(r.byKey, st.key)
		r.bytes -= len(st.parse)
	}
}

// ServerState is what the tracker knows of one server connection's session state. The proxy
// keeps it with the connection; only the client holding the connection touches it.
type ServerState struct {
	prepared map[*Stmt]*list.Element
	lru      list.List // of *preparedStmt, most recently used first

	// Relaying is for the proxy: it guards the rule that one relay loop at a time reads the
	// connection.
	Relaying atomic.Bool

	// unnamedBy and unnamedSeq identify which client's unnamed statement the server holds.
	unnamedBy  *Tracker
	unnamedSeq uint64

	// Params holds the parameters set on the server beyond the values it started with.
	Params map[string]string
	// ParamsKey is paramsKeyOf(params), set with it.
	ParamsKey string

	// Demoted is set by the proxy when a fresh connection to this server's address failed the
	// route's target_session_attrs check: only then does a read-only error (25006) mean that the
	// server is no longer the primary the route wants.
	Demoted bool
}

// NewServerState returns the state of a server connection the tracker knows nothing of yet.
func NewServerState() *ServerState {
	return &ServerState{prepared: make(map[*Stmt]*list.Element)}
}

// has reports whether ps is prepared on the server at its current generation, marking it
// recently used.
func (st *ServerState) has(ps *Stmt) bool {
	e, ok := st.prepared[ps]
	if !ok || e.Value.(*cachedStmt).gen != ps.gen.Load() {
		return false
	}
	st.lru.MoveToFront(e)
	return true
}

// stale reports whether the server holds ps at an older generation (so it must be closed
// before it is prepared again).
func (st *ServerState) stale(ps *Stmt) bool {
	e, ok := st.prepared[ps]
	return ok && e.Value.(*cachedStmt).gen != ps.gen.Load()
}

func (st *ServerState) add(ps *Stmt) {
	if e, ok := st.prepared[ps]; ok {
		e.Value.(*cachedStmt).gen = ps.gen.Load()
		st.lru.MoveToFront(e)
		return
	}
	st.prepared[ps] = st.lru.PushFront(&cachedStmt{ps: ps, gen: ps.gen.Load()})
}

func (st *ServerState) remove(ps *Stmt) {
	if e, ok := st.prepared[ps]; ok {
		st.lru.Remove(e)
		delete(st.prepared, ps)
	}
}

// evict removes and returns the least recently used statement when the server already holds
// max (so that one more fits); max <= 0 means no limit.
func (st *ServerState) evict(max int) *Stmt {
	if max <= 0 || len(st.prepared) < max {
		return nil
	}
	e := st.lru.Back()
	ps := e.Value.(*cachedStmt).ps
	st.lru.Remove(e)
	delete(st.prepared, ps)
	return ps
}

func (st *ServerState) Clear() {
	st.clearPrepared()
	st.unnamedBy = nil
}

// clearPrepared forgets the named statements, as after DEALLOCATE ALL on the server.
func (st *ServerState) clearPrepared() {
	clear(st.prepared)
	st.lru.Init()
}

// Entry is one expected response (or group of responses) from the server, in the order the
// requests were sent, so that the server's replies can be matched to what the client sent.
type Entry struct {
	// msg is the client message type this answers ('Q','F','P','B','D','E','C','S'), or 0 when
	// the proxy answers on its own with synth once every earlier response has been relayed.
	msg byte
	// swallow marks a message the proxy sent for its own purposes: its responses are not
	// relayed, except errors, which explain why the client's next message fails.
	swallow bool
	// stmt is the statement a Parse prepares; unnamed is set for the unnamed statement.
	stmt    *Stmt
	unnamed bool
	synth   []byte
	// ready appends a ReadyForQuery with the session's current status to synth (the proxy
	// answered a whole simple Query).
	ready bool
	// single marks a simple Query of one statement; done is set once its CommandComplete was
	// relayed: PostgreSQL commits an implicit transaction before sending that.
	single, done bool
	// portal marks a Describe of a portal: the client learns the result's shape from it.
	portal bool
	// described is the client's statement whose Describe this answers: the reply is kept as
	// the shape the client knows. verify marks the proxy's own Describe of a statement it just
	// prepared, whose reply is compared with that shape (see verifyShape).
	described *ClientStmt
	verify    bool
	// plain marks a Query of plain statements only (classify.Result.Plain); commits marks a
	// Query or Bind whose statement may commit on its own (classify.Result.CommitsAlone).
	plain, commits bool
}

// Queue is a FIFO of respEntry that reuses its storage.
type Queue struct {
	e []Entry
	h int
}

func (q *Queue) push(e Entry) { q.e = append(q.e, e) }
func (q *Queue) len() int     { return len(q.e) - q.h }

func (q *Queue) head() *Entry {
	if q.h == len(q.e) {
		return nil
	}
	return &q.e[q.h]
}

// Storage kept by an empty respQueue, in entries: more is let go, so that a burst of pipelined
// requests does not hold memory for the rest of the session.
const respQueueKeep = 256

func (q *Queue) pop() {
	q.e[q.h] = Entry{}
	q.h++
	switch {
	case q.h == len(q.e):
		q.e, q.h = q.e[:0], 0
		if cap(q.e) > respQueueKeep {
			q.e = nil
		}
	case q.h >= respQueueKeep && 2*q.h >= len(q.e):
		// A queue that never empties (a client that always keeps a request in flight)
		// would otherwise grow by one entry per request for ever: move the live entries
		// to the front, at a cost that is amortised over the pops that made the room.
		n := copy(q.e, q.e[q.h:])
		clear(q.e[n:])
		q.e, q.h = q.e[:n], 0
	}
}

func (q *Queue) reset() {
	clear(q.e)
	q.e, q.h = q.e[:0], 0
	if cap(q.e) > respQueueKeep {
		q.e = nil
	}
}

// completes reports whether server message typ is the last response to client message msg.
func completes(msg, typ byte) bool {
	switch msg {
	case 'Q', 'F', 'S':
		return typ == 'Z'
	case 'P':
		return typ == '1'
	case 'B':
		return typ == '2'
	case 'C':
		return typ == '3'
	case 'D':
		return typ == 'T' || typ == 'n'
	case 'E':
		return typ == 'C' || typ == 'I' || typ == 's'
	}
	return false
}

// extended reports whether msg is an extended-protocol message, after whose error the server
// skips everything until Sync.
func extended(msg byte) bool {
	switch msg {
	case 'P', 'B', 'D', 'E', 'C':
		return true
	}
	return false
}

// Held returns how many statements r holds and the bytes of their Parse messages.
func (r *Registry) Held() (statements, bytes int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.byKey), r.bytes
}

// Prepared returns how many statements the server is known to hold.
func (st *ServerState) Prepared() int { return len(st.prepared) }
