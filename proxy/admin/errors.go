package admin

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/pgsidecar/pgsidecar/internal/retry"
)

// Error is an error with the SQLSTATE and text the admin client sees. A [Controller] method
// returns one to choose them; the console also builds them for its own refusals.
type Error struct {
	Code    string // SQLSTATE
	Message string
	Detail  string // optional
	Hint    string // optional
}

// Error returns the message with its SQLSTATE.
func (e *Error) Error() string { return e.Message + " (SQLSTATE " + e.Code + ")" }

// Errors a [Controller] returns (wrapped or not) for the console to answer with PgBouncer's
// message for them and a fitting SQLSTATE.
var (
	// ErrNoSuchDatabase: 3D000 "no such database: <db>".
	ErrNoSuchDatabase = errors.New("no such database")
	// ErrNoSuchClient: 42704 "client not found: <id>".
	ErrNoSuchClient = errors.New("client not found")
	// ErrAlreadyPaused: 55000 "already suspended/paused".
	ErrAlreadyPaused = errors.New("already paused")
	// ErrNotPaused: 55000 "pooler is not paused/suspended", or "database <db> is not paused".
	ErrNotPaused = errors.New("not paused")
	// ErrShuttingDown: 55000 "pooler is shutting down".
	ErrShuttingDown = errors.New("shutting down")
)

// syntaxError is PgBouncer's answer to a command it cannot parse (admin.c syntax_error),
// with a real SQLSTATE instead of its blanket 08P01.
func syntaxError(stmt string) *Error {
	return &Error{Code: retry.CodeSyntaxError, Message: "invalid command '" + clip(stmt) + "', use SHOW HELP;"}
}

// clip bounds the query text echoed in an error: the proxy caps a Query's size, but a
// megabyte of it should not come back in a message.
func clip(s string) string {
	const limit = 256
	if len(s) <= limit {
		return s
	}
	cut := limit
	for cut > 0 && s[cut]&0xC0 == 0x80 { // do not split a UTF-8 sequence
		cut--
	}
	return s[:cut] + "..."
}

// permissionDenied answers a stats-only caller running anything but SHOW.
func permissionDenied(verb string) *Error {
	return &Error{
		Code:    retry.CodeInsufficientPrivilege,
		Message: "permission denied: " + verb + " needs admin access",
		Hint:    "Only admin users may run commands other than SHOW.",
	}
}

func notSupported(what string) *Error {
	return &Error{Code: retry.CodeFeatureNotSupported, Message: what + " is not supported by pgsidecar"}
}

// actionError turns a Controller error for st into what the client sees. Errors the console
// cannot classify are reported without their text, which may name internals; the caller
// logs them.
func actionError(st statement, err error) *Error {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, ErrNoSuchDatabase):
		return &Error{Code: retry.CodeInvalidCatalogName, Message: "no such database: " + st.arg}
	case errors.Is(err, ErrNoSuchClient):
		return &Error{Code: retry.CodeUndefinedObject, Message: "client not found: " + strconv.FormatUint(st.id, 10)}
	case errors.Is(err, ErrAlreadyPaused):
		return &Error{Code: retry.CodeObjectNotInPrerequisiteState, Message: "already suspended/paused"}
	case errors.Is(err, ErrNotPaused) && st.arg == "":
		return &Error{Code: retry.CodeObjectNotInPrerequisiteState, Message: "pooler is not paused/suspended"}
	case errors.Is(err, ErrNotPaused):
		return &Error{Code: retry.CodeObjectNotInPrerequisiteState, Message: fmt.Sprintf("database %s is not paused", st.arg)}
	case errors.Is(err, ErrShuttingDown):
		return &Error{Code: retry.CodeObjectNotInPrerequisiteState, Message: "pooler is shutting down"}
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Code: retry.CodeQueryCanceled, Message: "canceling statement due to statement timeout"}
	case errors.Is(err, context.Canceled):
		return &Error{Code: retry.CodeQueryCanceled, Message: "canceling statement due to user request"}
	case st.verb == "reload":
		return &Error{Code: retry.CodeConfigFileError, Message: "RELOAD failed, see logs for additional details"}
	}
	return &Error{Code: retry.CodeInternalError, Message: st.tag() + " failed, see logs for additional details"}
}
