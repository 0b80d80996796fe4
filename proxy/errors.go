package proxy

import (
	"errors"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

// clientError converts err into the error a client is shown. Errors from the upstream keep their
// own SQLSTATE and message; the proxy's own errors get a fitting SQLSTATE. All are FATAL: the
// proxy closes the connection after sending one.
func clientError(err error) *pgconn.PgError {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		e := *pgErr
		e.Severity = "FATAL"
		return &e
	}
	var pe *wire.ProtocolError
	if errors.As(err, &pe) {
		return fatal(retry.CodeProtocolViolation, pe.Error())
	}
	var se *startupError
	if errors.As(err, &se) {
		return fatal(se.code, se.msg)
	}
	var pnc *panicError
	if errors.As(err, &pnc) {
		return fatal(retry.CodeInternalError, "pgsidecar: internal error; this connection is closed (other sessions are not affected)")
	}
	var upe *unsupportedProtocolError
	if errors.As(err, &upe) {
		return fatal(retry.CodeFeatureNotSupported, upe.Error())
	}
	return fatal(retry.CodeConnectionFailure, "pgsidecar: "+err.Error())
}

func fatal(code, msg string) *pgconn.PgError {
	return &pgconn.PgError{Severity: "FATAL", Code: code, Message: msg}
}

// authFailure reports whether err is the upstream refusing a login (SQLSTATE class 28).
func authFailure(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "28")
}
