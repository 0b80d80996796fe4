package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

// startupBody builds a startup packet body (without the length word): code, then the
// name/value pairs, then the terminating NUL.
func startupBody(code uint32, kv ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, code)
	for _, s := range kv {
		b = append(b, s...)
		b = append(b, 0)
	}
	return append(b, 0)
}

// withLength prefixes body with its startup length word.
func withLength(body []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body)+4)), body...)
}

// codeBody is a special request body: code followed by raw bytes.
func codeBody(code uint32, extra ...byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, code), extra...)
}

const (
	startupV30 = 3 << 16
	startupV32 = 3<<16 | 2
)

// startupWant classifies the error a startup parse must return.
type startupWant int

const (
	stOK startupWant = iota
	stProtocol
	stUnsupported
	st28000
	stReadError
)

func checkStartupErr(t *testing.T, err error, want startupWant) {
	t.Helper()
	var pe *wire.ProtocolError
	var upe *unsupportedProtocolError
	var se *startupError
	switch want {
	case stOK:
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
	case stProtocol:
		if !errors.As(err, &pe) {
			t.Fatalf("error = %v (%T), want *wire.ProtocolError", err, err)
		}
		if got := clientError(err).Code; got != retry.CodeProtocolViolation {
			t.Fatalf("client sees SQLSTATE %s, want 08P01", got)
		}
	case stUnsupported:
		if !errors.As(err, &upe) {
			t.Fatalf("error = %v (%T), want *unsupportedProtocolError", err, err)
		}
		if got := clientError(err).Code; got != retry.CodeFeatureNotSupported {
			t.Fatalf("client sees SQLSTATE %s, want 0A000", got)
		}
	case st28000:
		if !errors.As(err, &se) || se.code != "28000" {
			t.Fatalf("error = %v (%T), want *startupError 28000", err, err)
		}
		if got := clientError(err); got.Code != "28000" || got.Severity != "FATAL" {
			t.Fatalf("client sees %s %s, want FATAL 28000", got.Severity, got.Code)
		}
	case stReadError:
		if err == nil || errors.As(err, &pe) || errors.As(err, &se) || errors.As(err, &upe) {
			t.Fatalf("error = %v (%T), want a read error", err, err)
		}
		if got := clientError(err).Code; got != retry.CodeConnectionFailure {
			t.Fatalf("client sees SQLSTATE %s, want 08006", got)
		}
	}
}

func TestParseStartup(t *testing.T) {
	key32 := bytes.Repeat([]byte{0xAB}, 32)
	tests := []struct {
		name        string
		body        []byte
		want        startupWant
		code        uint32
		params      []param
		unknownOpts []string
		cancelPID   uint32
		cancelKey   []byte
	}{
		{
			name:   "v3.0 with params",
			body:   startupBody(startupV30, "user", "alice", "database", "db1", "application_name", "app", "options", "-c search_path=x"),
			code:   startupV30,
			params: []param{{"user", "alice"}, {"database", "db1"}, {"application_name", "app"}, {"options", "-c search_path=x"}},
		},
		{
			name:   "v3.0 user only, empty value for another param",
			body:   startupBody(startupV30, "user", "u", "application_name", ""),
			code:   startupV30,
			params: []param{{"user", "u"}, {"application_name", ""}},
		},
		{name: "missing user", body: startupBody(startupV30, "database", "db1"), want: st28000},
		{name: "empty user", body: startupBody(startupV30, "user", "", "database", "db1"), want: st28000},
		{name: "no params at all", body: startupBody(startupV30), want: st28000},
		{name: "not terminated (no final NUL)", body: codeBody(startupV30, []byte("user\x00u\x00")...), want: stProtocol},
		{name: "version only", body: codeBody(startupV30), want: stProtocol},
		{name: "unterminated name", body: codeBody(startupV30, []byte("user")...), want: stProtocol},
		{name: "unterminated value", body: codeBody(startupV30, []byte("user\x00alice")...), want: stProtocol},
		{name: "name without value", body: codeBody(startupV30, []byte("user\x00")...), want: stProtocol},
		{name: "trailing bytes after terminator", body: append(startupBody(startupV30, "user", "u"), 'x'), want: stProtocol},
		{name: "trailing NULs after terminator", body: append(startupBody(startupV30, "user", "u"), 0, 0), want: stProtocol},
		{name: "body shorter than a code", body: []byte{0, 3, 0}, want: stProtocol},
		{name: "empty body", body: nil, want: stProtocol},
		{name: "SSLRequest", body: codeBody(codeSSLRequest), code: codeSSLRequest},
		{name: "SSLRequest with extra bytes", body: codeBody(codeSSLRequest, 0), want: stProtocol},
		{name: "GSSENCRequest", body: codeBody(codeGSSENCRequest), code: codeGSSENCRequest},
		{name: "GSSENCRequest with extra bytes", body: codeBody(codeGSSENCRequest, 1, 2, 3, 4), want: stProtocol},
		{
			name:      "CancelRequest 4-byte key",
			body:      codeBody(codeCancelRequest, 0, 0, 0x30, 0x39, 1, 2, 3, 4),
			code:      codeCancelRequest,
			cancelPID: 12345,
			cancelKey: []byte{1, 2, 3, 4},
		},
		{
			name:      "CancelRequest 32-byte key (protocol 3.2)",
			body:      codeBody(codeCancelRequest, append([]byte{0xff, 0xff, 0xff, 0xfe}, key32...)...),
			code:      codeCancelRequest,
			cancelPID: 0xfffffffe,
			cancelKey: key32,
		},
		{
			name:      "CancelRequest 256-byte key",
			body:      codeBody(codeCancelRequest, append([]byte{0, 0, 0, 1}, bytes.Repeat([]byte{7}, 256)...)...),
			code:      codeCancelRequest,
			cancelPID: 1,
			cancelKey: bytes.Repeat([]byte{7}, 256),
		},
		{name: "CancelRequest 257-byte key", body: codeBody(codeCancelRequest, append([]byte{0, 0, 0, 1}, bytes.Repeat([]byte{7}, 257)...)...), want: stProtocol},
		{name: "CancelRequest pid only", body: codeBody(codeCancelRequest, 0, 0, 0, 1), want: stProtocol},
		{name: "CancelRequest 3-byte key", body: codeBody(codeCancelRequest, 0, 0, 0, 1, 9, 9, 9), want: stProtocol},
		{name: "CancelRequest empty", body: codeBody(codeCancelRequest), want: stProtocol},
		{name: "protocol 2.0", body: startupBody(2<<16, "user", "u"), want: stUnsupported},
		{name: "protocol 4.0", body: startupBody(4<<16, "user", "u"), want: stUnsupported},
		{name: "unknown 1234.x request code", body: codeBody(1234<<16 | 5681), want: stUnsupported},
		{
			name:        "v3.2 with _pq_ option",
			body:        startupBody(startupV32, "user", "bob", "_pq_.foo", "on", "database", "d"),
			code:        startupV32,
			params:      []param{{"user", "bob"}, {"database", "d"}},
			unknownOpts: []string{"_pq_.foo"},
		},
		{
			name:        "v3.5 with two _pq_ options",
			body:        startupBody(3<<16|5, "_pq_.a", "1", "user", "bob", "_pq_.b", ""),
			code:        3<<16 | 5,
			params:      []param{{"user", "bob"}},
			unknownOpts: []string{"_pq_.a", "_pq_.b"},
		},
		{
			// PostgreSQL (ProcessStartupPacket) treats every name starting with "_pq_." as a
			// protocol option, the bare prefix included, and reports it in
			// NegotiateProtocolVersion.
			name:        "bare _pq_. prefix is a protocol option",
			body:        startupBody(startupV30, "user", "bob", "_pq_.", "x"),
			code:        startupV30,
			params:      []param{{"user", "bob"}},
			unknownOpts: []string{"_pq_."},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := parseStartup(tt.body)
			checkStartupErr(t, err, tt.want)
			if tt.want != stOK {
				if st != nil {
					t.Fatalf("got a startup %+v along with the error", st)
				}
				return
			}
			if st.code != tt.code {
				t.Errorf("code = %d, want %d", st.code, tt.code)
			}
			if !slices.Equal(st.params, tt.params) {
				t.Errorf("params = %q, want %q", st.params, tt.params)
			}
			if !slices.Equal(st.unknownOptions, tt.unknownOpts) {
				t.Errorf("unknownOptions = %q, want %q", st.unknownOptions, tt.unknownOpts)
			}
			if st.cancelPID != tt.cancelPID || !bytes.Equal(st.cancelKey, tt.cancelKey) {
				t.Errorf("cancel = %d %x, want %d %x", st.cancelPID, st.cancelKey, tt.cancelPID, tt.cancelKey)
			}
		})
	}
}

// TestParseStartupKeepsNoReference checks that the parsed startup does not alias the input
// buffer (the caller may reuse it).
func TestParseStartupKeepsNoReference(t *testing.T) {
	body := codeBody(codeCancelRequest, 0, 0, 0, 9, 1, 2, 3, 4)
	st, err := parseStartup(body)
	if err != nil {
		t.Fatal(err)
	}
	for i := range body {
		body[i] = 0xee
	}
	if !bytes.Equal(st.cancelKey, []byte{1, 2, 3, 4}) {
		t.Fatalf("cancel key aliases the input: %x", st.cancelKey)
	}
}

// oneByteReader returns one byte per Read, to check that readStartup reads exactly one packet.
type oneByteReader struct{ r io.Reader }

func (o oneByteReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return o.r.Read(p[:1])
}

func TestReadStartup(t *testing.T) {
	valid := withLength(startupBody(startupV30, "user", "u", "database", "d"))
	lenWord := func(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }
	tests := []struct {
		name string
		in   []byte
		want startupWant
		user string
		code uint32
	}{
		{name: "valid", in: valid, user: "u", code: startupV30},
		{name: "SSLRequest", in: withLength(codeBody(codeSSLRequest)), code: codeSSLRequest},
		{name: "length 0", in: lenWord(0), want: stProtocol},
		{name: "length 4", in: append(lenWord(4), 0, 0, 0, 0), want: stProtocol},
		{name: "length 5", in: append(lenWord(5), 1, 2, 3, 4, 5), want: stProtocol},
		{name: "length 7", in: append(lenWord(7), 1, 2, 3, 4, 5, 6, 7), want: stProtocol},
		{name: "length 10001", in: lenWord(10001), want: stProtocol},
		{name: "length 1<<30", in: lenWord(1 << 30), want: stProtocol},
		{name: "negative length", in: lenWord(0xFFFFFFFF), want: stProtocol},
		{name: "length 0x80000000", in: lenWord(0x80000000), want: stProtocol},
		{name: "EOF before length", in: nil, want: stReadError},
		{name: "EOF inside length", in: []byte{0, 0}, want: stReadError},
		{name: "EOF inside body", in: valid[:len(valid)-3], want: stReadError},
		{name: "maximum length 10000", in: withLength(startupBody(startupV30, "user", "u", "options", strings.Repeat("x", 10000-4-4-len("user\x00u\x00options\x00\x00\x00")))), user: "u", code: startupV30},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := readStartup(bytes.NewReader(tt.in))
			checkStartupErr(t, err, tt.want)
			if tt.want == stOK {
				if st.code != tt.code || st.get("user") != tt.user {
					t.Fatalf("got code %d user %q, want %d %q", st.code, st.get("user"), tt.code, tt.user)
				}
			}
		})
	}

	t.Run("reads exactly one packet", func(t *testing.T) {
		next := []byte("Q-next-bytes")
		r := bytes.NewReader(append(append(withLength(codeBody(codeSSLRequest)), valid...), next...))
		st, err := readStartup(oneByteReader{r})
		if err != nil || st.code != codeSSLRequest {
			t.Fatalf("first packet: %v %v", st, err)
		}
		st, err = readStartup(oneByteReader{r})
		if err != nil || st.get("user") != "u" || st.get("database") != "d" {
			t.Fatalf("second packet: %v %v", st, err)
		}
		rest, _ := io.ReadAll(r)
		if !bytes.Equal(rest, next) {
			t.Fatalf("readStartup consumed bytes after the packet: left %q, want %q", rest, next)
		}
	})

	t.Run("encoded by pgproto3", func(t *testing.T) {
		b, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "pgx", "database": "x"}}).Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		st, err := readStartup(bytes.NewReader(b))
		if err != nil || st.get("user") != "pgx" || st.get("database") != "x" {
			t.Fatalf("got %+v, %v", st, err)
		}
	})
}

// --- scanClient ---------------------------------------------------------------------------

// fmsg encodes one message: typ, int32 length (4+len(body)), body.
func fmsg(typ byte, body []byte) []byte {
	b := []byte{typ}
	b = binary.BigEndian.AppendUint32(b, uint32(4+len(body)))
	return append(b, body...)
}

// rawHeader is a message header with an arbitrary length word.
func rawHeader(typ byte, length uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{typ}, length)
}

func frontendBytes(t testing.TB, msgs ...pgproto3.FrontendMessage) []byte {
	t.Helper()
	var b []byte
	var err error
	for _, m := range msgs {
		if b, err = m.Encode(b); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

func frameOf(b []byte) *wire.Frames {
	buf := make([]byte, len(b), len(b)+16)
	copy(buf, b)
	return &wire.Frames{Buf: buf, W: len(b)}
}

func TestScanClient(t *testing.T) {
	query := frontendBytes(t, &pgproto3.Query{String: "select 1"})
	parse := frontendBytes(t, &pgproto3.Parse{Name: "s1", Query: "select $1::int"})
	bind := frontendBytes(t, &pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("1")}})
	describe := frontendBytes(t, &pgproto3.Describe{ObjectType: 'P'})
	execute := frontendBytes(t, &pgproto3.Execute{})
	syncM := frontendBytes(t, &pgproto3.Sync{})
	flush := frontendBytes(t, &pgproto3.Flush{})
	closeM := frontendBytes(t, &pgproto3.Close{ObjectType: 'S', Name: "s1"})
	terminate := frontendBytes(t, &pgproto3.Terminate{})
	fcall := frontendBytes(t, &pgproto3.FunctionCall{Function: 1})
	copyData := frontendBytes(t, &pgproto3.CopyData{Data: []byte("1\t2\n")})
	copyDone := frontendBytes(t, &pgproto3.CopyDone{})
	copyFail := frontendBytes(t, &pgproto3.CopyFail{Message: "no"})
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

	tests := []struct {
		name      string
		in        []byte
		maxMsg    int
		wantR     int // -1: len(in)
		requests  int
		unsynced  int
		terminate bool
		wantErr   bool
		remaining int
	}{
		{name: "empty", in: nil, wantR: 0, unsynced: -1},
		{name: "one query", in: query, wantR: -1, requests: 1, unsynced: -1},
		{name: "three queries", in: cat(query, query, query), wantR: -1, requests: 3, unsynced: -1},
		{name: "function call", in: fcall, wantR: -1, requests: 1, unsynced: -1},
		{name: "extended batch with sync", in: cat(parse, bind, describe, execute, syncM), wantR: -1, requests: 1, unsynced: 0},
		{name: "extended without sync", in: cat(parse, bind, execute), wantR: -1, requests: 0, unsynced: 1},
		{name: "extended after sync", in: cat(parse, syncM, bind, execute, flush), wantR: -1, requests: 1, unsynced: 1},
		{name: "two syncs", in: cat(bind, execute, syncM, bind, execute, syncM), wantR: -1, requests: 2, unsynced: 0},
		{name: "close then sync", in: cat(closeM, syncM), wantR: -1, requests: 1, unsynced: 0},
		{name: "sync only", in: syncM, wantR: -1, requests: 1, unsynced: 0},
		{name: "copy messages", in: cat(copyData, copyData, copyDone, copyFail), wantR: -1, unsynced: -1},
		{name: "terminate alone", in: terminate, wantR: 0, unsynced: -1, terminate: true},
		{name: "terminate after query stops before it", in: cat(query, terminate, query), wantR: len(query), requests: 1, unsynced: -1, terminate: true},
		{name: "partial header kept", in: cat(query, syncM[:3]), wantR: len(query), requests: 1, unsynced: -1},
		{name: "exactly 4 bytes of header kept", in: cat(query, query[:4]), wantR: len(query), requests: 1, unsynced: -1},
		{name: "header only, body streams", in: query[:5], wantR: 5, requests: 1, unsynced: -1, remaining: len(query) - 5},
		{name: "partial body streams", in: cat(query, query[:9]), wantR: -1, requests: 2, unsynced: -1, remaining: len(query) - 9},
		{name: "zero-length body ok", in: fmsg('S', nil), wantR: -1, requests: 1, unsynced: 0},
		{name: "length 3", in: rawHeader('Q', 3), wantErr: true},
		{name: "length 0", in: rawHeader('Q', 0), wantErr: true},
		{name: "negative length", in: rawHeader('Q', 0xFFFFFFFF), wantErr: true},
		{name: "length 0x80000000", in: rawHeader('Q', 0x80000000), wantErr: true},
		{name: "length over max", in: rawHeader('Q', 4+101), maxMsg: 100, wantErr: true},
		{name: "length at max", in: rawHeader('Q', 4+100), maxMsg: 100, wantR: 5, requests: 1, unsynced: -1, remaining: 100},
		{name: "unknown type '!'", in: fmsg('!', []byte("x")), wantErr: true},
		{name: "password message after login", in: fmsg('p', []byte("pw\x00")), wantErr: true},
		{name: "startup-like zero type", in: fmsg(0, nil), wantErr: true},
		{name: "unknown type after valid messages", in: cat(query, fmsg('!', nil)), wantErr: true, wantR: len(query), requests: 1, unsynced: -1},
		{name: "bad length after valid messages", in: cat(bind, rawHeader('E', 2)), wantErr: true, wantR: len(bind), unsynced: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			maxMsg := tt.maxMsg
			if maxMsg == 0 {
				maxMsg = 1 << 30
			}
			f := frameOf(tt.in)
			b, err := scanClient(f, maxMsg)
			if tt.wantErr {
				var pe *wire.ProtocolError
				if !errors.As(err, &pe) {
					t.Fatalf("err = %v (%T), want *wire.ProtocolError", err, err)
				}
				if clientError(err).Code != retry.CodeProtocolViolation {
					t.Fatalf("client code %s, want 08P01", clientError(err).Code)
				}
				if f.R != tt.wantR {
					t.Errorf("r = %d on error, want %d (the valid messages before the bad one)", f.R, tt.wantR)
				}
				if b.requests != tt.requests {
					t.Errorf("requests = %d on error, want %d", b.requests, tt.requests)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			wantR := tt.wantR
			if wantR < 0 {
				wantR = len(tt.in)
			}
			if f.R != wantR || f.W != len(tt.in) {
				t.Errorf("r, w = %d, %d; want %d, %d", f.R, f.W, wantR, len(tt.in))
			}
			if b.requests != tt.requests || b.unsynced != tt.unsynced || b.terminate != tt.terminate {
				t.Errorf("batch = %+v, want requests %d unsynced %d terminate %v", b, tt.requests, tt.unsynced, tt.terminate)
			}
			if f.Remaining != tt.remaining {
				t.Errorf("remaining = %d, want %d", f.Remaining, tt.remaining)
			}
		})
	}
}

// TestScanClientStreaming feeds messages across several scans as clientToServer does.
func TestScanClientStreaming(t *testing.T) {
	big := frontendBytes(t, &pgproto3.Query{String: "select '" + strings.Repeat("x", 3000) + "'"})
	syncM := frontendBytes(t, &pgproto3.Sync{})
	f := &wire.Frames{Buf: make([]byte, 1024)}

	// First read: the header and 1019 body bytes of a 3000+ byte Query.
	f.W = copy(f.Buf, big[:1024])
	b, err := scanClient(f, 1<<30)
	if err != nil || b.requests != 1 || f.R != 1024 || f.Remaining != len(big)-1024 {
		t.Fatalf("read 1: batch %+v err %v r %d remaining %d", b, err, f.R, f.Remaining)
	}
	f.Compact()
	if f.R != 0 || f.W != 0 {
		t.Fatalf("compact after full consumption: r, w = %d, %d", f.R, f.W)
	}
	// Second read: more body; no new request is counted.
	f.W = copy(f.Buf, big[1024:2048])
	b, err = scanClient(f, 1<<30)
	if err != nil || b.requests != 0 || b.unsynced != -1 || f.Remaining != len(big)-2048 {
		t.Fatalf("read 2: batch %+v err %v remaining %d", b, err, f.Remaining)
	}
	f.Compact()
	// Third read: the rest of the body, a Sync and 2 bytes of a further header.
	tail := append(append(append([]byte(nil), big[2048:]...), syncM...), 'Q', 0)
	f.W = copy(f.Buf, tail)
	b, err = scanClient(f, 1<<30)
	if err != nil || b.requests != 1 || b.unsynced != 0 || f.Remaining != 0 || f.R != len(tail)-2 {
		t.Fatalf("read 3: batch %+v err %v r %d remaining %d", b, err, f.R, f.Remaining)
	}
	f.Compact()
	if f.R != 0 || f.W != 2 || f.Buf[0] != 'Q' || f.Buf[1] != 0 {
		t.Fatalf("partial header not kept at the front: r %d w %d buf %q", f.R, f.W, f.Buf[:2])
	}
	// Fourth read: the rest of that header (a 2-byte body follows later).
	f.W += copy(f.Buf[f.W:], []byte{0, 0, 6, 'a'})
	b, err = scanClient(f, 1<<30)
	if err != nil || b.requests != 1 || f.Remaining != 1 || f.R != f.W {
		t.Fatalf("read 4: batch %+v err %v r %d w %d remaining %d", b, err, f.R, f.W, f.Remaining)
	}
}

func TestFrameReaderCompact(t *testing.T) {
	f := &wire.Frames{Buf: []byte("abcdefgh"), R: 5, W: 8}
	f.Compact()
	if f.R != 0 || f.W != 3 || string(f.Buf[:3]) != "fgh" {
		t.Fatalf("compact: r %d w %d buf %q", f.R, f.W, f.Buf)
	}
	f = &wire.Frames{Buf: []byte("abcdefgh"), R: 8, W: 8}
	f.Compact()
	if f.R != 0 || f.W != 0 {
		t.Fatalf("compact of empty: r %d w %d", f.R, f.W)
	}
	f = &wire.Frames{Buf: []byte("abcdefgh"), R: 0, W: 4}
	f.Compact()
	if f.R != 0 || f.W != 4 || string(f.Buf[:4]) != "abcd" {
		t.Fatalf("compact at 0: r %d w %d buf %q", f.R, f.W, f.Buf)
	}
}

// passThroughBatch is 100 client messages of the kinds a busy extended-protocol client sends.
func passThroughBatch(t testing.TB) []byte {
	var b []byte
	row := bytes.Repeat([]byte("v"), 200)
	for i := 0; i < 25; i++ {
		b = append(b, frontendBytes(t,
			&pgproto3.Bind{PreparedStatement: "stmt", Parameters: [][]byte{row, []byte("42")}},
			&pgproto3.Execute{},
			&pgproto3.Sync{},
			&pgproto3.CopyData{Data: row},
		)...)
	}
	return b
}

func TestScanClientAllocs(t *testing.T) {
	in := passThroughBatch(t)
	f := frameOf(in)
	var b clientBatch
	var err error
	allocs := testing.AllocsPerRun(200, func() {
		f.R, f.W, f.Remaining = 0, len(in), 0
		b, err = scanClient(f, 1<<30)
	})
	if err != nil || b.requests != 25 || b.unsynced != 0 || f.R != len(in) {
		t.Fatalf("scan: %+v %v r=%d", b, err, f.R)
	}
	if allocs != 0 {
		t.Fatalf("scanClient allocates %.1f times per batch of 100 messages, want 0", allocs)
	}
}

func BenchmarkScanClient(b *testing.B) {
	in := passThroughBatch(b)
	f := frameOf(in)
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		f.R, f.W, f.Remaining = 0, len(in), 0
		if _, err := scanClient(f, 1<<30); err != nil {
			b.Fatal(err)
		}
	}
}

// --- scanServer ---------------------------------------------------------------------------

func backendBytes(t testing.TB, msgs ...pgproto3.BackendMessage) []byte {
	t.Helper()
	var b []byte
	var err error
	for _, m := range msgs {
		if b, err = m.Encode(b); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// resultSet is RowDescription, rows DataRows, CommandComplete and ReadyForQuery(status).
func scanResultSet(t testing.TB, rows int, status byte) []byte {
	msgs := []pgproto3.BackendMessage{&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{
		{Name: []byte("id"), DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1},
		{Name: []byte("payload"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1},
	}}}
	for i := 0; i < rows; i++ {
		msgs = append(msgs, &pgproto3.DataRow{Values: [][]byte{[]byte("12345"), bytes.Repeat([]byte("p"), 100)}})
	}
	msgs = append(msgs, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 100")}, &pgproto3.ReadyForQuery{TxStatus: status})
	return backendBytes(t, msgs...)
}

func TestScanServer(t *testing.T) {
	s := &session{maxMsg: 1 << 30}
	rs := scanResultSet(t, 3, 'I')
	t.Run("whole result", func(t *testing.T) {
		f := frameOf(rs)
		ready, status, err := s.scanServer(f)
		if err != nil || ready != 1 || status != 'I' || f.R != len(rs) || f.Remaining != 0 {
			t.Fatalf("ready %d status %q err %v r %d", ready, status, err, f.R)
		}
	})
	t.Run("two results, last status wins", func(t *testing.T) {
		in := append(scanResultSet(t, 1, 'T'), scanResultSet(t, 1, 'E')...)
		f := frameOf(in)
		ready, status, err := s.scanServer(f)
		if err != nil || ready != 2 || status != 'E' {
			t.Fatalf("ready %d status %q err %v", ready, status, err)
		}
	})
	t.Run("ReadyForQuery split waits for it whole", func(t *testing.T) {
		f := &wire.Frames{Buf: make([]byte, 4096)}
		f.W = copy(f.Buf, rs[:len(rs)-2])
		ready, _, err := s.scanServer(f)
		if err != nil || ready != 0 || f.R != len(rs)-6 || f.Remaining != 0 {
			t.Fatalf("partial Z: ready %d err %v r %d remaining %d", ready, err, f.R, f.Remaining)
		}
		f.Compact()
		f.W += copy(f.Buf[f.W:], rs[len(rs)-2:])
		ready, status, err := s.scanServer(f)
		if err != nil || ready != 1 || status != 'I' || f.R != f.W {
			t.Fatalf("rest of Z: ready %d status %q err %v", ready, status, err)
		}
	})
	t.Run("bad lengths", func(t *testing.T) {
		for _, l := range []uint32{0, 3, 0xFFFFFFFF, 0x80000000} {
			f := frameOf(rawHeader('D', l))
			if _, _, err := s.scanServer(f); err == nil {
				t.Errorf("length %#x: no error", l)
			}
		}
		small := &session{maxMsg: 10}
		if _, _, err := small.scanServer(frameOf(rawHeader('D', 4+11))); err == nil {
			t.Error("length over maxMsg: no error")
		}
	})
}

func TestScanServerAllocs(t *testing.T) {
	s := &session{maxMsg: 1 << 30}
	in := scanResultSet(t, 100, 'I')
	f := frameOf(in)
	var ready int
	var err error
	allocs := testing.AllocsPerRun(200, func() {
		f.R, f.W, f.Remaining = 0, len(in), 0
		ready, _, err = s.scanServer(f)
	})
	if err != nil || ready != 1 || f.R != len(in) {
		t.Fatalf("scan: ready %d err %v r %d", ready, err, f.R)
	}
	if allocs != 0 {
		t.Fatalf("scanServer allocates %.1f times per result of 100 rows, want 0", allocs)
	}
}

func BenchmarkScanServer(b *testing.B) {
	s := &session{maxMsg: 1 << 30}
	in := scanResultSet(b, 100, 'I')
	f := frameOf(in)
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		f.R, f.W, f.Remaining = 0, len(in), 0
		if _, _, err := s.scanServer(f); err != nil {
			b.Fatal(err)
		}
	}
}
