// Package retry classifies errors as retryable or not, in one place, and computes backoff
// delays between attempts.
//
// Both the pool (dialing upstreams) and the proxy (replaying a request that failed before any
// byte of its response reached the client) ask [Classify] whether an error is transient; the
// [Class] Reason doubles as a bounded metric label.
//
//	b := retry.Backoff{Initial: 100 * time.Millisecond, Max: 2 * time.Second}
//	for attempt := 0; ; attempt++ {
//		err := try()
//		if c := retry.Classify(err); err == nil || !c.Retryable || b.Exhausted(attempt+1) {
//			return err
//		}
//		time.Sleep(b.Delay(attempt, nil))
//	}
package retry

import (
	"context"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Reasons of a Class. They are the only values Reason takes, so they are safe as metric labels.
const (
	ReasonNone               = ""                     // no error
	ReasonConnection         = "connection"           // SQLSTATE class 08
	ReasonTooManyConnections = "too_many_connections" // 53300
	ReasonShutdown           = "shutdown"             // 57P01 admin_shutdown, 57P02 crash_shutdown
	ReasonStarting           = "starting"             // 57P03 cannot_connect_now
	ReasonSerialization      = "serialization"        // 40001
	ReasonDeadlock           = "deadlock"             // 40P01
	ReasonAuth               = "auth"                 // SQLSTATE class 28
	ReasonSyntaxOrPermission = "syntax_or_permission" // SQLSTATE class 42
	ReasonConstraint         = "constraint"           // SQLSTATE class 23
	ReasonNoDatabase         = "no_database"          // 3D000
	ReasonNetwork            = "network"              // dial timeout, refused, reset, broken pipe, EOF
	ReasonTimeout            = "timeout"              // a timeout that is not a dial's (read, write, caller deadline)
	ReasonCanceled           = "canceled"             // context.Canceled
	ReasonOther              = "other"                // anything else

	// Reasons the proxy gives a request it sends again, besides the classes above.
	ReasonReadOnly         = "read_only"         // 25006 from a demoted primary
	ReasonSchemaChange     = "schema_change"     // 0A000: a prepared statement's result type changed
	ReasonStatementMissing = "statement_missing" // 26000: a server lost a shared prepared statement
)

// Class says whether an error may be retried and why (the reason is a bounded metric label).
//
// Retryable means the failure is transient: trying the same thing again later may succeed. It
// does not say that a retry is safe; whether a request may be replayed (nothing of it reached
// the client, it was the first of its transaction) is the caller's decision.
type Class struct {
	Retryable bool
	Reason    string
}

// Classify classifies err, looking through wrapped errors (fmt %w, errors.Join,
// *pgconn.ConnectError and its per-host errors):
//
//   - a server error (*pgconn.PgError) by SQLSTATE: class 08, 53300, 57P01, 57P02 and 57P03 are
//     retryable; 40001 and 40P01 are not (only a statement that ran alone may be replayed, which
//     the proxy decides) but get their own reasons; classes 28, 42, 23 and 3D000 have their own
//     reasons; anything else is "other";
//   - context.Canceled: not retryable, "canceled";
//   - network failures: connection refused, reset or aborted, broken pipe, host or network
//     unreachable, io.EOF and io.ErrUnexpectedEOF, a temporary DNS failure, and timeouts of a
//     dial (a timeout inside a *pgconn.ConnectError, or of a *net.OpError whose Op is "dial"):
//     retryable, "network";
//   - other timeouts (a read deadline, a bare context.DeadlineExceeded): not retryable, "timeout";
//   - anything else: not retryable, "other".
//
// A server error wins over the network error that may accompany it. Classify(nil) is the zero
// Class.
func Classify(err error) Class {
	if err == nil {
		return Class{}
	}
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok {
		return ClassifyCode(pgErr.Code)
	}
	if errors.Is(err, context.Canceled) {
		return Class{Reason: ReasonCanceled}
	}
	if isNetworkFailure(err) {
		return Class{Retryable: true, Reason: ReasonNetwork}
	}
	if isTimeout(err) {
		if isDial(err) {
			return Class{Retryable: true, Reason: ReasonNetwork}
		}
		return Class{Reason: ReasonTimeout}
	}
	return Class{Reason: ReasonOther}
}

// ClassifyCode classifies a server error by its SQLSTATE, as Classify does a *pgconn.PgError.
func ClassifyCode(code string) Class {
	switch code {
	case CodeTooManyConnections:
		return Class{Retryable: true, Reason: ReasonTooManyConnections}
	case CodeAdminShutdown, CodeCrashShutdown:
		return Class{Retryable: true, Reason: ReasonShutdown}
	case CodeCannotConnectNow:
		return Class{Retryable: true, Reason: ReasonStarting}
	case CodeSerializationFailure:
		return Class{Reason: ReasonSerialization}
	case CodeDeadlockDetected:
		return Class{Reason: ReasonDeadlock}
	case CodeInvalidCatalogName:
		return Class{Reason: ReasonNoDatabase}
	}
	switch {
	case strings.HasPrefix(code, "08"):
		return Class{Retryable: true, Reason: ReasonConnection}
	case strings.HasPrefix(code, "28"):
		return Class{Reason: ReasonAuth}
	case strings.HasPrefix(code, "42"):
		return Class{Reason: ReasonSyntaxOrPermission}
	case strings.HasPrefix(code, "23"):
		return Class{Reason: ReasonConstraint}
	}
	return Class{Reason: ReasonOther}
}

// networkErrnos are the socket errors of an upstream that is down, restarting or unreachable.
var networkErrnos = []syscall.Errno{
	syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED, syscall.EPIPE,
	syscall.EHOSTUNREACH, syscall.ENETUNREACH, syscall.ETIMEDOUT,
}

func isNetworkFailure(err error) bool {
	for _, e := range networkErrnos {
		if errors.Is(err, e) {
			return true
		}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	if dnsErr, ok := errors.AsType[*net.DNSError](err); ok && (dnsErr.IsTemporary || dnsErr.IsTimeout) {
		return true
	}
	return false
}

func isTimeout(err error) bool {
	if pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	netErr, ok := errors.AsType[net.Error](err)
	return ok && netErr.Timeout()
}

// isDial reports whether err came from establishing a connection.
func isDial(err error) bool {
	if _, ok := errors.AsType[*pgconn.ConnectError](err); ok {
		return true
	}
	opErr, ok := errors.AsType[*net.OpError](err)
	return ok && opErr.Op == "dial"
}

// Default backoff bounds, used where a Backoff field is zero.
const (
	DefaultInitial = 100 * time.Millisecond
	DefaultMax     = 2 * time.Second
)

// Backoff is exponential backoff with full jitter.
//
// The zero value is usable: Initial 0 means DefaultInitial, Max 0 means DefaultMax (or
// Initial, if that is larger), MaxAttempts 0 means no limit (the caller's context bounds the
// attempts instead).
type Backoff struct {
	// Initial is the ceiling of the first delay; each further attempt doubles it.
	Initial time.Duration
	// Max caps the ceiling.
	Max time.Duration
	// MaxAttempts is how many attempts in all (the first included) a caller makes; 0 = no limit.
	MaxAttempts int
}

// Delay returns how long to wait after the failed attempt number attempt (0 for the first):
// a random duration in [0, min(Max, Initial*2^attempt)), drawn with rnd(n), which must return a
// value in [0, n) like rand.Int64N (nil means math/rand/v2's).
func (b Backoff) Delay(attempt int, rnd func(int64) int64) time.Duration {
	initial, ceiling := b.bounds()
	for i := 0; i < attempt && initial < ceiling && initial <= math.MaxInt64/2; i++ {
		initial *= 2
	}
	ceiling = min(initial, ceiling)
	if rnd == nil {
		rnd = rand.Int64N
	}
	return time.Duration(rnd(int64(ceiling)))
}

// Exhausted reports whether attempts attempts use up MaxAttempts.
func (b Backoff) Exhausted(attempts int) bool {
	return b.MaxAttempts > 0 && attempts >= b.MaxAttempts
}

func (b Backoff) bounds() (initial, maxDelay time.Duration) {
	initial, maxDelay = b.Initial, b.Max
	if initial <= 0 {
		initial = DefaultInitial
	}
	if maxDelay <= 0 {
		maxDelay = max(DefaultMax, initial)
	}
	return initial, max(maxDelay, 1)
}
