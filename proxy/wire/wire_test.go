package wire

import (
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

func TestNextChecksLength(t *testing.T) {
	for _, tc := range []struct {
		buf  []byte
		ok   bool
		bad  bool
		want int
	}{
		{[]byte{'Q', 0, 0, 0}, false, false, 0},
		{[]byte{'Q', 0, 0, 0, 5, 0}, true, false, 5},
		{[]byte{'Q', 0, 0, 0, 3}, false, true, 3},
		{[]byte{'Q', 0x40, 0, 0, 0}, false, true, 1 << 30},
	} {
		f := Frames{Buf: tc.buf, W: len(tc.buf)}
		_, length, ok, err := f.Next(1 << 20)
		if ok != tc.ok || errors.Is(err, ErrBadLength) != tc.bad || (tc.ok && length != tc.want) {
			t.Errorf("Next(%x) = %d, %v, %v", tc.buf, length, ok, err)
		}
	}
}

func TestMessagesDecode(t *testing.T) {
	var b []byte
	b = AppendReadyForQuery(b, 'T')
	b = AppendCommandComplete(b, "DEALLOCATE")
	b = AppendClose(b, 'S', "pgsidecar_1")
	b = AppendParseComplete(b)
	b = AppendCloseComplete(b)
	b = AppendFlush(b)
	b = AppendQuery(b, "select 1")
	b = AppendErrorResponse(b, &pgconn.PgError{Severity: "FATAL", Code: "57P01", Message: "bye"})
	var types []byte
	f := Frames{Buf: b, W: len(b)}
	for f.R < f.W {
		typ, length, ok, err := f.Next(1 << 20)
		if !ok || err != nil {
			t.Fatalf("at %d: %v %v", f.R, ok, err)
		}
		types = append(types, typ)
		body := f.Buf[f.R+HeaderLen : f.R+1+length]
		switch typ {
		case 'Z':
			if string(body) != "T" {
				t.Errorf("ReadyForQuery %q", body)
			}
		case 'E':
			if ErrorCode(body) != "57P01" || !ErrorFatal(body) {
				t.Errorf("ErrorResponse code %q fatal %v", ErrorCode(body), ErrorFatal(body))
			}
			var e pgproto3.ErrorResponse
			if err := e.Decode(body); err != nil || e.Message != "bye" {
				t.Errorf("decode: %v %q", err, e.Message)
			}
		}
		f.R += 1 + length
	}
	if string(types) != "ZCC13HQE" {
		t.Errorf("message types %q", types)
	}
	if !HasReadyForQuery(b) || HasReadyForQuery(b[6:]) {
		t.Error("HasReadyForQuery")
	}
}

func TestErrorFatalSeverities(t *testing.T) {
	for sev, fatal := range map[string]bool{"FATAL": true, "PANIC": true, "ERROR": false, "NOTICE": false} {
		body := AppendErrorResponse(nil, &pgconn.PgError{Severity: sev, Code: "57P01"})[HeaderLen:]
		if ErrorFatal(body) != fatal {
			t.Errorf("ErrorFatal(%s) = %v", sev, !fatal)
		}
	}
}
