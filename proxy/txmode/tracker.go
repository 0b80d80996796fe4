package txmode

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgsidecar/pgsidecar/proxy/classify"
	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

// Tracker is one client's protocol bookkeeping: what it has in flight on its server, and in
// transaction mode its prepared statements, parameters, pins and the memory of a request that may
// be sent again. It does no I/O and takes no locks: the session feeds it the client's and the
// server's messages under its lock and carries out what the Tracker decides.
type Tracker struct {
	// reg holds the statements shared by every client; lim are the limits the tracker keeps,
	// shared with the route's other clients (never written).
	reg *Registry
	lim *Limits
	// tracked reports whether a parameter is replayed (see SetReplayed); a session-level change
	// of any other pins the client. classifyTracked is what the classifier is given: tracked,
	// noting the custom parameters the client changes (customParams), which pg_settings does
	// not list and must be read back by name.
	// signalTarget and minted decide calls of pg_cancel_backend for minted PIDs (signal.go);
	// signals are the calls to carry out; call is one being answered through the extended
	// protocol; unnamedSignal is the unnamed statement's call, if it is one (nil: it is not; a
	// pointer, as such calls are rare and a Signal is 32 bytes every session would carry).
	signalTarget    SignalTarget
	minted          func(pid int64) bool
	signals         []Signal
	call            *signalCall
	unnamedSignal   *classify.Signal
	tracked         func(name string) bool
	classifyTracked func(name string) bool
	customParams    []string

	// What the caller must act on after a call (TakeEvents): a pin to count
	// and log, a batch run again to count (its bytes to send are b's resend), the attached
	// server to retire (a demoted primary), and waiters to wake.
	newPin      classify.Reason
	rerunReason string
	retire      bool
	wake        bool
	// cache counts statement cache use (TakeCacheUse); onError is told the SQLSTATE of every
	// server error relayed to the client (SetErrorHook).
	cache   CacheUse
	onError ErrorHook
	// justParsed is the statement of the client's last Parse, until a Bind uses it: that Bind
	// is not counted again.
	justParsed *Stmt
	// idleReady counts the ReadyForQuery 'I' relayed since TakeIdleReady: transactions ended.
	idleReady int

	// Pending counts requests (Query, Sync, FunctionCall) sent to server whose ReadyForQuery has
	// not come back yet.
	Pending int
	// Unsynced is set while extended-protocol messages have been sent without a Sync after them.
	Unsynced bool
	// Partial is set while the server has been sent part of a client message.
	Partial bool
	// TxStatus is the status of the last ReadyForQuery from server.
	TxStatus byte
	// resp lists the responses expected from the attached server, in order.
	resp Queue
	// stmts maps the client's statement names to shared server-side statements.
	stmts map[string]*ClientStmt
	// unnamedParse is a copy of the client's last Parse of the unnamed statement, replayed on a
	// server that does not hold it; unnamedSeq numbers those Parses.
	unnamedParse []byte
	unnamedSeq   uint64
	// unnamedCommits is set when the unnamed statement may commit on its own; unnamedEffect is
	// what executing it does to prepared statements.
	unnamedCommits bool
	unnamedEffect  Effect
	// verifying is the statement whose shape is being read back from the attached server
	// before the client's Bind of it is sent (see verifyShape); verifyDone is set when the
	// reply is in, with b's verifyShape holding it, or verifyFailed set when the server failed
	// the prepare.
	verifying    *Stmt
	VerifyDone   bool
	verifyFailed bool
	// Skipping drops client messages until Sync after an error the proxy raised itself.
	Skipping bool
	// Pinned is why the client keeps its server for the rest of its session ("" = it does not).
	Pinned classify.Reason
	// Params are the client's explicit session parameters (see Params.go).
	Params map[string]string
	// ParamsKey is paramsKeyOf(params), set with it.
	ParamsKey string
	// ParamsDirty is set when the client changed a tracked parameter with SQL (the session's
	// rereading is closed once they have been read back from the server after the transaction).
	ParamsDirty bool
	// rb is the last batch that could be sent again (see rememberBatch); nil until the first
	// such batch, and again after Shed. RetryNeeded is set by ScanServer when the server
	// refused the batch in a way that makes sending it again safe.
	rb          *rememberedBatch
	RetryNeeded bool
	// WriteFailed is set when clientToServer could not write to the server: the batch did not
	// reach it, and serverToClient decides whether to send it to another server.
	WriteFailed bool
	// ServerGone is set when the attached server announced its shutdown after the client's
	// last request completed: its end is expected and is no error for the client.
	ServerGone bool
	// b holds the scratch buffers (nil until the first request, and again after Shed).
	b *buffers
}

// buffers are a tracker's scratch buffers, kept between requests so that a request allocates
// none, and let go by Shed when the client goes idle.
type buffers struct {
	// cout and sout are for rewritten batches (client to server, server to client); resend is
	// a batch to send again (Events.Resend); shapeBuf collects a Describe reply being read;
	// verifyShape is the shape read back for a verification.
	cout, sout, resend, shapeBuf, verifyShape []byte
}

// bufs returns the tracker's scratch buffers, made on first use.
func (t *Tracker) bufs() *buffers {
	if t.b == nil {
		t.b = &buffers{}
	}
	return t.b
}

// Limits are the settings a tracker works to.
type Limits struct {
	MaxMessage       int  // max_message_size
	ClientStatements int  // max_client_prepared_statements (0: none)
	ServerStatements int  // max_prepared_statements per server (0: none)
	RegistryBytes    int  // max_prepared_statement_bytes, for messages (the registry keeps it)
	RefuseState      bool // session_state = refuse
	Retries          int  // retries
	WantsPrimary     bool // the route wants a writable server: 25006 means it was demoted
}

// Init readies t for a client of a route with limits lim, sharing statements through reg. lim
// is kept, not copied: it must not change afterwards.
func (t *Tracker) Init(reg *Registry, lim *Limits) {
	t.reg, t.lim = reg, lim
	t.tracked = isTracked
	t.TxStatus = 'I'
}

// addStmt names a client statement; the map is made on the first (a client that prepares
// nothing, or idles, holds none).
func (t *Tracker) addStmt(name string, cs *ClientStmt) {
	if t.stmts == nil {
		t.stmts = make(map[string]*ClientStmt)
	}
	t.stmts[name] = cs
}

// classifier returns what the SQL classifier is given to tell tracked parameters, bound at
// the first use: a client that sends no SQL holds no method value.
func (t *Tracker) classifier() func(name string) bool {
	if t.classifyTracked == nil {
		t.classifyTracked = t.noteTracked
	}
	return t.classifyTracked
}

// Shed lets go of what the tracker keeps only to serve requests: the remembered batch (it
// can be sent again only while it is in flight), the reply queue's storage and the scratch
// buffers. Called when the client goes idle for a while with no server and nothing in flight,
// so that an idle client holds none of them; they are made again by its next request. It does
// nothing while anything is in flight.
func (t *Tracker) Shed() {
	if t.Pending != 0 || t.Unsynced || t.Partial || t.resp.len() != 0 || t.verifying != nil || t.call != nil {
		return
	}
	t.rb = nil
	t.resp = Queue{}
	t.b, t.signals = nil, nil
}

// Queued returns how many replies (groups of server messages, or the tracker's own) are
// expected, in order.
func (t *Tracker) Queued() int { return t.resp.len() }

// ResetQueue forgets every expected reply (a new server, or the session's end).
func (t *Tracker) ResetQueue() { t.resp.reset() }

// Events are what the session must carry out after a call of the tracker.
type Events struct {
	// Pinned is the reason the client was pinned now ("" when it was not): count and log it.
	Pinned classify.Reason
	// Resend is a batch the server refused whole, to write to it again (RerunReason labels the
	// retry); valid until the tracker's next call.
	Resend      []byte
	RerunReason string
	// Retire asks to retire the attached server's address (a demoted primary).
	Retire bool
	// Wake asks to wake whoever waits for a reply (a statement's shape is in).
	Wake bool
	// Signals are SQL calls of pg_cancel_backend/pg_terminate_backend of minted PIDs, answered
	// by the tracker, for the caller to carry out; valid until the tracker's next call.
	Signals []Signal
}

// TakeEvents returns the events of the calls since the last TakeEvents.
func (t *Tracker) TakeEvents() Events {
	e := Events{Pinned: t.newPin, RerunReason: t.rerunReason, Retire: t.retire, Wake: t.wake, Signals: t.signals}
	if b := t.b; b != nil {
		e.Resend = b.resend
		b.resend = keepScratch(b.resend[:0])
	}
	t.signals = t.signals[:0]
	t.newPin, t.rerunReason, t.retire, t.wake = "", "", false, false
	return e
}

// CacheUse counts how the client's statements met the servers' statement caches.
type CacheUse struct {
	Hits      uint64 // a statement the server had prepared already
	Misses    uint64 // a statement prepared on the server first
	Evictions uint64 // a statement closed on the server to make room (ServerStatements)
}

// ErrorHook is told of the errors relayed to the client (an interface for the reason
// SignalTarget is one).
type ErrorHook interface {
	// ServerError is called with the SQLSTATE of every ErrorResponse of the server relayed
	// to the client (not those the tracker answers or swallows itself).
	ServerError(code string)
}

// SetErrorHook makes the tracker tell h of the errors it relays to the client.
func (t *Tracker) SetErrorHook(h ErrorHook) { t.onError = h }

// errorReply is an ERROR of the proxy's own for the client, counted as the server's are.
func (t *Tracker) errorReply(code, msg string) []byte {
	t.countError(code)
	return wire.AppendErrorResponse(nil, &pgconn.PgError{Severity: "ERROR", Code: code, Message: msg})
}

func (t *Tracker) countError(code string) {
	if t.onError != nil {
		t.onError.ServerError(code)
	}
}

// TakeIdleReady returns how many ReadyForQuery outside a transaction were relayed to the
// client since the last call: the transactions that ended.
func (t *Tracker) TakeIdleReady() int {
	n := t.idleReady
	t.idleReady = 0
	return n
}

// TakeCacheUse returns the counts since the last call and starts them afresh.
func (t *Tracker) TakeCacheUse() CacheUse {
	u := t.cache
	t.cache = CacheUse{}
	return u
}

// Stats is a snapshot of what a tracker holds, for tests and the admin console.
type Stats struct {
	Statements    int // named prepared statements of the client
	Queued        int // expected replies
	QueueCapacity int // storage of the reply queue, in entries
}

// Describe writes the expected replies, one line each, for diagnosing a stuck session.
func (t *Tracker) Describe(w io.Writer) {
	for i := t.resp.h; i < len(t.resp.e); i++ {
		e := t.resp.e[i]
		fmt.Fprintf(w, "   entry msg=%q swallow=%v synth=%d\n", e.msg, e.swallow, len(e.synth))
	}
}

// Stats returns what t holds.
func (t *Tracker) Stats() Stats {
	return Stats{Statements: len(t.stmts), Queued: t.resp.len(), QueueCapacity: cap(t.resp.e)}
}

// SetReplayed sets which parameters the client may change and have replayed on every server it
// gets (names in lower case); until it is called, the built-in list of TrackedParams. A
// session-level change of any other parameter pins the client.
func (t *Tracker) SetReplayed(replayed func(name string) bool) { t.tracked = replayed }

// Replays reports whether the tracker replays parameter name (lower case).
func (t *Tracker) Replays(name string) bool { return t.tracked(name) }

// maxCustomParams bounds the custom parameters one client may have replayed; changing more
// pins it.
const maxCustomParams = 64

// noteTracked is tracked, noting the custom parameters ("a.b") among those replayed.
func (t *Tracker) noteTracked(name string) bool {
	if !t.tracked(name) {
		return false
	}
	if !strings.Contains(name, ".") || slices.Contains(t.customParams, name) {
		return true
	}
	if len(t.customParams) >= maxCustomParams {
		return false
	}
	// A copy: the classifier's name may be a view of the client's buffer.
	t.customParams = append(t.customParams, strings.Clone(name))
	return true
}

// CustomParams returns the custom parameters ("a.b") the client has changed: pg_settings does
// not list them, so they are read back by name.
func (t *Tracker) CustomParams() []string { return t.customParams }

// forgetUnnamed forgets the client's unnamed statement, as PostgreSQL does after a simple Query,
// a Close of it or a failed Parse.
func (t *Tracker) forgetUnnamed() {
	t.unnamedParse = t.unnamedParse[:0]
	t.unnamedCommits, t.unnamedEffect, t.unnamedSignal = false, Effect{}, nil
}
