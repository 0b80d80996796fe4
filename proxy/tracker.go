package proxy

import (
	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/proxy/classify"
)

// tracker is one client's protocol bookkeeping: what it has in flight on its server, and in
// transaction mode its prepared statements, parameters, pins and the memory of a request that may
// be sent again. It does no I/O and takes no locks: the session feeds it the client's and the
// server's messages under its lock and carries out what the tracker decides.
type tracker struct {
	// reg holds the statements shared by every client; lim are the limits the tracker keeps.
	reg *stmtRegistry
	lim trackerLimits

	// What the session must act on after a call (see session.afterTrackLocked): a pin to count
	// and log, a batch run again to count and its bytes to send, the attached server to retire
	// (a demoted primary), and waiters on the session's wrote to wake.
	newPin      classify.Reason
	rerunReason string
	resend      []byte
	retire      bool
	wake        bool

	// pending counts requests (Query, Sync, FunctionCall) sent to server whose ReadyForQuery has
	// not come back yet.
	pending int
	// unsynced is set while extended-protocol messages have been sent without a Sync after them.
	unsynced bool
	// partial is set while the server has been sent part of a client message.
	partial bool
	// txStatus is the status of the last ReadyForQuery from server.
	txStatus byte
	// resp lists the responses expected from the attached server, in order.
	resp respQueue
	// stmts maps the client's statement names to shared server-side statements.
	stmts map[string]*clientStmt
	// unnamedParse is a copy of the client's last Parse of the unnamed statement, replayed on a
	// server that does not hold it; unnamedSeq numbers those Parses.
	unnamedParse []byte
	unnamedSeq   uint64
	// unnamedCommits is set when the unnamed statement may commit on its own; unnamedEffect is
	// what executing it does to prepared statements.
	unnamedCommits bool
	unnamedEffect  stmtEffect
	// verifying is the statement whose shape is being read back from the attached server
	// before the client's Bind of it is sent (see verifyShape); verifyDone is set when the
	// reply is in, with verifyShape holding it, or verifyFailed set when the server failed the
	// prepare. shapeBuf collects a Describe reply being read.
	verifying    *preparedStmt
	verifyDone   bool
	verifyFailed bool
	verifyShape  []byte
	shapeBuf     []byte
	// skipping drops client messages until Sync after an error the proxy raised itself.
	skipping bool
	// pinned is why the client keeps its server for the rest of its session ("" = it does not).
	pinned classify.Reason
	// params are the client's explicit session parameters (see params.go).
	params map[string]string
	// paramsKey is paramsKeyOf(params), set with it.
	paramsKey string
	// paramsDirty is set when the client changed a tracked parameter with SQL (the session's
	// rereading is closed once they have been read back from the server after the transaction).
	paramsDirty bool
	// retryBatch and retryEntries keep the last batch that could be re-run after a schema
	// change (see retrySchemaChangeLocked).
	retryBatch   []byte
	retryEntries []respEntry
	// retryAttempts counts how often the remembered batch was sent again; retryNeeded is set by
	// relayTracked when the server refused the batch in a way that makes sending it again safe.
	retryAttempts int
	// replied is set once the server sent any part of the remembered batch's results.
	replied     bool
	retryNeeded bool
	// retryReason is set with retryNeeded: why the server refused the batch, as the
	// pgsidecar_retries_total reason (a retry.Reason).
	// retryOldReady says the refusing server's ReadyForQuery was already read (conflicts only:
	// that server stays usable).
	retryReason   string
	retryOldReady bool
	// writeFailed is set when clientToServer could not write to the server: the batch did not
	// reach it, and serverToClient decides whether to send it to another server.
	writeFailed bool
	// serverGone is set when the attached server announced its shutdown after the client's
	// last request completed: its end is expected and is no error for the client.
	serverGone bool
	// cout and sout are scratch buffers for rewritten batches (client to server, server to
	// client), reused to avoid allocating per batch.
	cout, sout []byte
}

// trackerLimits are the settings a tracker works to.
type trackerLimits struct {
	maxMsg           int  // max_message_size
	clientStatements int  // max_client_prepared_statements (0: none)
	serverStatements int  // max_prepared_statements per server (0: none)
	registryBytes    int  // max_prepared_statement_bytes, for messages (the registry keeps it)
	refuseState      bool // session_state = refuse
	retries          int  // retries
	wantsPrimary     bool // the route wants a writable server: 25006 means it was demoted
}

// trackerLimitsOf returns the limits of cfg for a client of route up.
func trackerLimitsOf(cfg *config.Config, up config.Upstream) trackerLimits {
	return trackerLimits{
		maxMsg:           cfg.MaxMessageSize,
		clientStatements: cfg.MaxClientPreparedStatements,
		serverStatements: cfg.MaxPreparedStatements,
		registryBytes:    cfg.MaxPreparedStatementBytes,
		refuseState:      cfg.SessionState == config.SessionStateRefuse,
		retries:          cfg.Retries,
		// A server answering 25006 to a route that wants a primary has been demoted.
		wantsPrimary: up.WantsPrimary,
	}
}
