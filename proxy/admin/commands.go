package admin

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/retry"
)

// run executes st and writes its result, or its error in place of a partial result, to r.
// It returns false when st failed, which ends the query.
func (c *Console) run(ctx context.Context, st statement, r *response) bool {
	mark := len(r.buf)
	err := c.exec(ctx, st, r)
	if err == nil && r.err != nil {
		c.log.ErrorContext(ctx, "admin result not encoded", "command", st.tag(), "error", r.err)
		err = &Error{Code: retry.CodeProgramLimitExceeded, Message: "result too large for the protocol"}
	}
	if err != nil {
		r.buf, r.err = r.buf[:mark], nil
		r.errorResponse(err)
		return false
	}
	r.commandComplete(st.tag())
	return true
}

// readOnly reports whether a stats-only caller may run st: SHOW (HELP included), and SET of
// one of the fake parameters, which changes nothing.
func readOnly(st statement) bool {
	switch st.verb {
	case "show", "select":
		return true
	case "set":
		_, _, fake := fakeParam(st.arg)
		return fake
	}
	return false
}

// exec runs st, which parse has checked.
func (c *Console) exec(ctx context.Context, st statement, r *response) *Error {
	if !c.who.Admin && !readOnly(st) {
		// Worth a warning: a monitoring user is trying to act on the pooler.
		c.log.WarnContext(ctx, "admin command denied", "command", st.tag())
		return permissionDenied(st.tag())
	}
	switch st.verb {
	case "show", "select":
		show, _ := showHandler(st.arg)
		return show(c, r)
	case "set":
		if _, _, fake := fakeParam(st.arg); fake {
			r.notice("SET ignored", "") // admin.c fake_set
			return nil
		}
		e := notSupported("SET")
		e.Hint = "Change the configuration file and run RELOAD."
		return e
	case "suspend", "wait_close":
		return notSupported(st.tag())
	case "shutdown":
		if st.hasArg {
			e := notSupported("SHUTDOWN " + strings.ToUpper(st.arg))
			e.Hint = "SHUTDOWN drains clients as SIGTERM does."
			return e
		}
	}
	return c.act(ctx, st)
}

// act runs an action command through the Backend and logs it with who ran it: once when
// issued (a PAUSE may wait long), and again if it fails, where the failure is handled.
func (c *Console) act(ctx context.Context, st statement) *Error {
	if st.hasArg && st.verb != "kill_client" && IsAdminDatabase(st.arg) {
		return &Error{Code: retry.CodeObjectNotInPrerequisiteState, Message: "cannot " + st.verb + " admin db: " + st.arg}
	}
	attrs := []any{slog.String("command", st.tag())}
	switch {
	case st.verb == "kill_client":
		attrs = append(attrs, slog.Uint64("client_id", st.id))
	case st.hasArg:
		attrs = append(attrs, slog.String("database", st.arg))
	}
	c.log.InfoContext(ctx, "admin command", attrs...)

	start := time.Now()
	var err error
	switch st.verb {
	case "pause":
		err = c.b.Pause(ctx, st.arg)
	case "resume":
		err = c.b.Resume(st.arg)
	case "reconnect":
		err = c.b.Reconnect(st.arg)
	case "disable":
		err = c.b.Disable(st.arg)
	case "enable":
		err = c.b.Enable(st.arg)
	case "kill":
		err = c.b.Kill(st.arg)
	case "kill_client":
		err = c.b.KillClient(st.id)
	case "reload":
		err = c.b.Reload()
	case "shutdown":
		err = c.b.Shutdown()
	default:
		// Unreachable: parse lets through only the verbs handled here and in exec.
		return &Error{Code: retry.CodeInternalError, Message: "unhandled command " + strconv.Quote(st.verb)}
	}
	elapsed := slog.Duration("elapsed", time.Since(start))
	if err != nil {
		e := actionError(st, err)
		c.log.WarnContext(ctx, "admin command failed", append(attrs, elapsed, slog.String("sqlstate", e.Code), slog.Any("error", err))...)
		return e
	}
	c.log.DebugContext(ctx, "admin command done", append(attrs, elapsed)...)
	return nil
}
