package wire

import (
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Message types the proxy builds or inspects, as the protocol names them.
const (
	TypeReadyForQuery   = 'Z'
	TypeErrorResponse   = 'E'
	TypeCommandComplete = 'C'
)

// AppendReadyForQuery appends a ReadyForQuery with transaction status status ('I', 'T', 'E').
func AppendReadyForQuery(b []byte, status byte) []byte {
	return append(b, TypeReadyForQuery, 0, 0, 0, 5, status)
}

// AppendCommandComplete appends a CommandComplete with tag.
func AppendCommandComplete(b []byte, tag string) []byte {
	b = appendHeader(b, TypeCommandComplete, 4+len(tag)+1)
	b = append(b, tag...)
	return append(b, 0)
}

// AppendClose appends a Close of a statement (kind 'S') or portal ('P') called name.
func AppendClose(b []byte, kind byte, name string) []byte {
	b = appendHeader(b, 'C', 4+1+len(name)+1)
	b = append(b, kind)
	b = append(b, name...)
	return append(b, 0)
}

// AppendParseComplete appends a ParseComplete.
func AppendParseComplete(b []byte) []byte { return append(b, '1', 0, 0, 0, 4) }

// AppendCloseComplete appends a CloseComplete.
func AppendCloseComplete(b []byte) []byte { return append(b, '3', 0, 0, 0, 4) }

// AppendFlush appends a Flush: the server sends what it holds back until a Sync.
func AppendFlush(b []byte) []byte { return append(b, 'H', 0, 0, 0, 4) }

// AppendQuery appends a simple Query of sql.
func AppendQuery(b []byte, sql string) []byte {
	b = appendHeader(b, 'Q', 4+len(sql)+1)
	b = append(b, sql...)
	return append(b, 0)
}

// appendHeader appends a message header for a message of length bytes (the length field
// included, the type byte not).
func appendHeader(b []byte, typ byte, length int) []byte {
	return append(b, typ, byte(length>>24), byte(length>>16), byte(length>>8), byte(length))
}

// AppendErrorResponse appends e as an ErrorResponse (severity as given, also unlocalized).
func AppendErrorResponse(dst []byte, e *pgconn.PgError) []byte {
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

// ErrorField returns field typ of an ErrorResponse or NoticeResponse body, nil when absent.
func ErrorField(body []byte, typ byte) []byte {
	for len(body) > 0 && body[0] != 0 {
		field := body[0]
		v, rest, ok := CString(body[1:])
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

// ErrorCode returns the SQLSTATE of an ErrorResponse body ("" when absent).
func ErrorCode(body []byte) string { return string(ErrorField(body, 'C')) }

// ErrorFatal reports whether an ErrorResponse body has severity FATAL or PANIC: the server ends
// the connection after it. The non-localized severity (V, PostgreSQL 9.6+) is preferred.
func ErrorFatal(body []byte) bool {
	sev := ErrorField(body, 'V')
	if sev == nil {
		sev = ErrorField(body, 'S')
	}
	return string(sev) == "FATAL" || string(sev) == "PANIC"
}

// HasReadyForQuery reports whether the complete messages at the start of b include a
// ReadyForQuery.
func HasReadyForQuery(b []byte) bool {
	f := Frames{Buf: b, W: len(b)}
	for {
		typ, length, ok := f.Header()
		if !ok || length < 4 || f.W-f.R < 1+length {
			return false
		}
		if typ == TypeReadyForQuery {
			return true
		}
		f.R += 1 + length
	}
}

// HasErrorCode reports whether the complete messages at the start of b include an
// ErrorResponse with SQLSTATE code.
func HasErrorCode(b []byte, code string) bool {
	f := Frames{Buf: b, W: len(b)}
	for {
		typ, length, ok := f.Header()
		if !ok || length < 4 || f.W-f.R < 1+length {
			return false
		}
		if typ == 'E' && string(ErrorField(b[f.R+5:f.R+1+length], 'C')) == code {
			return true
		}
		f.R += 1 + length
	}
}
