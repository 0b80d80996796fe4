package proxy

import (
	"errors"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// SQLSTATE codes the proxy itself sends.
const (
	codeProtocolViolation  = "08P01"
	codeConnectionFailure  = "08006"
	codeTooManyConnections = "53300"
	codeFeatureUnsupported = "0A000"
	codeInvalidCatalog     = "3D000"
	codeInvalidAuthSpec    = "28000"
	codeAdminShutdown      = "57P01"
	codeConfigLimit        = "53400" // configuration_limit_exceeded
	codeNameTooLong        = "42622"
	codeDuplicateStatement = "42P05"
	codeUnknownStatement   = "26000"
)

// SQLSTATE codes of server errors the proxy acts on.
const (
	// codeReadOnlySQLTransaction is what a server that refuses writes answers (a demoted
	// primary).
	codeReadOnlySQLTransaction = "25006"
	codeSerializationFailure   = "40001"
	codeDeadlockDetected       = "40P01"
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
	var pe *protocolError
	if errors.As(err, &pe) {
		return fatal(codeProtocolViolation, pe.Error())
	}
	var se *startupError
	if errors.As(err, &se) {
		return fatal(se.code, se.msg)
	}
	var upe *unsupportedProtocolError
	if errors.As(err, &upe) {
		return fatal(codeFeatureUnsupported, upe.Error())
	}
	return fatal(codeConnectionFailure, "pgsidecar: "+err.Error())
}

func fatal(code, msg string) *pgconn.PgError {
	return &pgconn.PgError{Severity: "FATAL", Code: code, Message: msg}
}

// appendErrorResponse encodes e as an ErrorResponse message.
func appendErrorResponse(dst []byte, e *pgconn.PgError) []byte {
	msg := pgproto3.ErrorResponse{
		Severity:            e.Severity,
		SeverityUnlocalized: e.Severity,
		Code:                e.Code,
		Message:             e.Message,
		Detail:              e.Detail,
		Hint:                e.Hint,
		Position:            e.Position,
		InternalPosition:    e.InternalPosition,
		InternalQuery:       e.InternalQuery,
		Where:               e.Where,
		SchemaName:          e.SchemaName,
		TableName:           e.TableName,
		ColumnName:          e.ColumnName,
		DataTypeName:        e.DataTypeName,
		ConstraintName:      e.ConstraintName,
		File:                e.File,
		Line:                e.Line,
		Routine:             e.Routine,
	}
	out, err := msg.Encode(dst)
	if err != nil {
		// Only oversized fields fail to encode; fall back to the bare essentials.
		out, _ = (&pgproto3.ErrorResponse{Severity: e.Severity, SeverityUnlocalized: e.Severity, Code: e.Code, Message: "error"}).Encode(dst)
	}
	return out
}

// authFailure reports whether err is the upstream refusing a login (SQLSTATE class 28).
func authFailure(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "28")
}
