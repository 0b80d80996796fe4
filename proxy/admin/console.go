package admin

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/pgsidecar/pgsidecar/internal/retry"
)

// IsAdminDatabase reports whether a client logging in to database name is asking for the
// admin console rather than an upstream: "pgsidecar", or "pgbouncer" for tools written for
// PgBouncer. Database names are case-sensitive, as in PostgreSQL and PgBouncer.
func IsAdminDatabase(name string) bool {
	return name == "pgsidecar" || name == "pgbouncer"
}

// Caller is who is at the other end of a Console.
type Caller struct {
	// User is the name the client logged in with.
	User string
	// Addr is the client's address, as net.Conn.RemoteAddr().String() gives it.
	Addr string
	// Admin allows every command. The zero value is a stats-only caller (PgBouncer's
	// stats_users), who may run SHOW and nothing that acts.
	Admin bool
}

// Console answers admin commands for one client. It holds no pooler state: it reads the
// Backend on each command and acts through it. Its methods must not be called concurrently
// (it belongs to the client's session loop), but several Consoles may share a Backend.
type Console struct {
	b   Backend
	who Caller
	log *slog.Logger
}

// New returns a console for the client who. log receives every command that acts (PAUSE,
// RELOAD...) with who ran it, and refused attempts; New adds the attributes "user" and
// "client" itself, so pass a logger without them (the proxy's, With its conn_id). A nil log
// discards.
func New(b Backend, who Caller, log *slog.Logger) *Console {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Console{b: b, who: who, log: log.With("user", who.User, "client", who.Addr)}
}

// Exec runs the text of one simple-protocol Query message and returns every byte to send the
// client in reply, ReadyForQuery included.
//
// The text may hold several commands separated by ';' and may end with one. Each command gets
// its own result (RowDescription, DataRows and CommandComplete for SHOW; CommandComplete
// alone for an action; a NoticeResponse and CommandComplete for SHOW HELP). As in PostgreSQL,
// the whole text is parsed first, so a syntax error runs nothing, and the first command that
// fails ends the query with its ErrorResponse. A text with no command gets
// EmptyQueryResponse. The transaction status is always idle ('I').
//
// ctx bounds the commands that wait (PAUSE waits for running transactions); the proxy cancels
// it when the client sends a CancelRequest for this session or goes away.
func (c *Console) Exec(ctx context.Context, query string) []byte {
	// The text ends at the first NUL, as when PostgreSQL and PgBouncer read it as a C string,
	// so the proxy may pass a Query body with or without its terminator.
	if i := strings.IndexByte(query, 0); i >= 0 {
		query = query[:i]
	}
	var r response
	stmts, err := parse(query)
	switch {
	case err != nil:
		r.errorResponse(err)
	case len(stmts) == 0:
		r.emptyQuery()
	default:
		for _, st := range stmts {
			if !c.run(ctx, st, &r) {
				break
			}
		}
	}
	r.readyForQuery()
	return r.buf
}

// Refuse returns the reply to a client message other than Query or Terminate: a FATAL
// ErrorResponse (08P01), after which the proxy closes the connection. The console speaks only
// the simple query protocol, as PgBouncer's does (admin.c admin_handle_client), and closing is
// simpler and safer than skipping extended-protocol messages up to the next Sync.
func (c *Console) Refuse(typ byte) []byte {
	msg := fmt.Sprintf("unsupported message type for admin console: %q", typ)
	switch typ {
	case 'P', 'B', 'E', 'D', 'C', 'S', 'H': // Parse ... Flush: the extended query protocol
		msg = "extended query protocol not supported by admin console"
	}
	var r response
	r.fatal(&Error{Code: retry.CodeProtocolViolation, Message: msg})
	return r.buf
}
