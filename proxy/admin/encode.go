package admin

import (
	"math"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// response collects the messages of one Exec. The console is far off the relay's hot path,
// so it encodes with pgproto3's message types rather than by hand.
type response struct {
	buf []byte
	// err is the first encoding failure. pgproto3 fails only past protocol limits (65535
	// fields or values); the command's output is then replaced by an error.
	err error
}

// add appends m, keeping buf intact if it cannot be encoded (Encode returns nil then).
func (r *response) add(m pgproto3.BackendMessage) {
	out, err := m.Encode(r.buf)
	if err != nil {
		if r.err == nil {
			r.err = err
		}
		return
	}
	r.buf = out
}

// rowDescription describes cols in text format, as PgBouncer does (no table, typmod -1).
func (r *response) rowDescription(cols []column) {
	fields := make([]pgproto3.FieldDescription, len(cols))
	for i, c := range cols {
		fields[i] = pgproto3.FieldDescription{
			Name:         []byte(c.name),
			DataTypeOID:  c.oid,
			DataTypeSize: c.size(),
			TypeModifier: -1,
		}
	}
	r.add(&pgproto3.RowDescription{Fields: fields})
}

// dataRow appends one row; a nil value is NULL.
func (r *response) dataRow(values ...[]byte) {
	r.add(&pgproto3.DataRow{Values: values})
}

func (r *response) commandComplete(tag string) {
	r.add(&pgproto3.CommandComplete{CommandTag: []byte(tag)})
}

func (r *response) errorResponse(e *Error) { r.errorWith("ERROR", e) }

// fatal appends an error after which the connection ends.
func (r *response) fatal(e *Error) { r.errorWith("FATAL", e) }

func (r *response) errorWith(severity string, e *Error) {
	r.add(&pgproto3.ErrorResponse{
		Severity: severity, SeverityUnlocalized: severity,
		Code: e.Code, Message: e.Message, Detail: e.Detail, Hint: e.Hint,
	})
}

// notice appends a NoticeResponse with PgBouncer's SQLSTATE for notices, 00000.
func (r *response) notice(msg, detail string) {
	r.add(&pgproto3.NoticeResponse{
		Severity: "NOTICE", SeverityUnlocalized: "NOTICE",
		Code: "00000", Message: msg, Detail: detail,
	})
}

func (r *response) emptyQuery() { r.add(&pgproto3.EmptyQueryResponse{}) }

// readyForQuery ends every Exec: the console has no transactions, so the status is idle.
func (r *response) readyForQuery() { r.add(&pgproto3.ReadyForQuery{TxStatus: 'I'}) }

// Cell encoders: the text-format value of one DataRow field.

// textCell is s as text; an empty string stays an empty value, not NULL.
func textCell(s string) []byte {
	if s == "" {
		return []byte{}
	}
	return []byte(s)
}

// nullCell is s as text, or NULL when s is empty: PgBouncer sends NULL for unset optional
// strings (force_user, pool_mode, load_balance_hosts).
func nullCell(s string) []byte {
	if s == "" {
		return nil
	}
	return []byte(s)
}

// int4Cell is n for an int4 column, clamped to int4's range so that typed clients can always
// decode it.
func int4Cell(n int) []byte {
	return strconv.AppendInt(nil, int64(max(min(n, math.MaxInt32), math.MinInt32)), 10)
}

// uintCell is n in decimal, for int8 and numeric columns. Connection IDs in the int4 id
// column use it too: clamping would make KILL_CLIENT miss, so an ID past 2^31 is printed whole
// (PgBouncer truncates it instead).
func uintCell(n uint64) []byte { return strconv.AppendUint(nil, n, 10) }

// boolCell is 1 or 0, PgBouncer's int4 flags (paused, disabled, close_needed).
func boolCell(b bool) []byte {
	if b {
		return []byte{'1'}
	}
	return []byte{'0'}
}

// yesNo is PgBouncer's text flag (SHOW STATE, SHOW CONFIG's changeable).
func yesNo(b bool) []byte {
	if b {
		return []byte("yes")
	}
	return []byte("no")
}

// timeCell is t as PgBouncer's format_time_s prints it ("2006-01-02 15:04:05 UTC"), in UTC
// so that output does not depend on the host's zone; NULL for the zero time (PgBouncer would
// print the current time there).
func timeCell(t time.Time) []byte {
	if t.IsZero() {
		return nil
	}
	return t.UTC().AppendFormat(nil, "2006-01-02 15:04:05 MST")
}

// splitMicros splits d into whole seconds and the microsecond remainder, PgBouncer's
// maxwait/maxwait_us and wait/wait_us pairs. Negative durations count as zero.
func splitMicros(d time.Duration) (sec, usec int) {
	if d <= 0 {
		return 0, 0
	}
	return int(d / time.Second), int(d % time.Second / time.Microsecond)
}

// secondsCell is d in seconds with microsecond precision, for numeric columns.
func secondsCell(d time.Duration) []byte {
	sec, usec := splitMicros(d)
	b := strconv.AppendInt(nil, int64(sec), 10)
	b = append(b, '.')
	frac := strconv.Itoa(usec)
	for i := len(frac); i < 6; i++ {
		b = append(b, '0')
	}
	return append(b, frac...)
}

// linkCell stands in for PgBouncer's ptr and link columns, which print C pointers: a
// connection's ID in hex, "" when there is none.
func linkCell(id uint64) []byte {
	if id == 0 {
		return []byte{}
	}
	return strconv.AppendUint([]byte("0x"), id, 16)
}
