package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

func FuzzParseStartup(f *testing.F) {
	f.Add(startupBody(startupV30, "user", "alice", "database", "db", "application_name", "app"))
	f.Add(startupBody(startupV32, "user", "bob", "_pq_.foo", "1"))
	f.Add(startupBody(startupV30, "database", "db"))
	f.Add(startupBody(2<<16, "user", "u"))
	f.Add(codeBody(codeSSLRequest))
	f.Add(codeBody(codeGSSENCRequest))
	f.Add(codeBody(codeCancelRequest, 0, 0, 0, 1, 1, 2, 3, 4))
	f.Add(codeBody(codeCancelRequest, append([]byte{0, 0, 0, 1}, bytes.Repeat([]byte{9}, 32)...)...))
	f.Add(codeBody(startupV30, []byte("user\x00u")...))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte{})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0})

	f.Fuzz(func(t *testing.T, body []byte) {
		orig := bytes.Clone(body)
		st, err := parseStartup(body)
		if !bytes.Equal(body, orig) {
			t.Fatal("parseStartup modified its input")
		}
		checkParsed(t, body, st, err)

		// The same bytes framed as a packet through readStartup.
		if len(body)+4 <= maxStartupPacketLen {
			st2, err2 := readStartup(bytes.NewReader(withLength(body)))
			if (err == nil) != (err2 == nil) {
				t.Fatalf("parseStartup err %v, readStartup err %v", err, err2)
			}
			if len(body)+4 >= 8 {
				checkParsed(t, body, st2, err2)
			}
		}
	})
}

func checkParsed(t *testing.T, body []byte, st *startup, err error) {
	t.Helper()
	if err != nil {
		if st != nil {
			t.Fatalf("error %v with non-nil startup", err)
		}
		// Whatever went wrong, the client is shown a proper error with a SQLSTATE.
		if ce := clientError(err); len(ce.Code) != 5 || ce.Severity != "FATAL" {
			t.Fatalf("client error %+v", ce)
		}
		return
	}
	if st == nil {
		t.Fatal("nil startup and nil error")
	}
	switch st.code {
	case codeSSLRequest, codeGSSENCRequest:
		if len(body) != 4 {
			t.Fatalf("encryption request with %d body bytes accepted", len(body))
		}
	case codeCancelRequest:
		if n := len(st.cancelKey); n < 4 || n > 256 || len(body) != 8+n {
			t.Fatalf("cancel request with key of %d bytes (body %d) accepted", n, len(body))
		}
	default:
		if st.code>>16 != 3 {
			t.Fatalf("protocol %d.%d accepted", st.code>>16, st.code&0xffff)
		}
		if st.get("user") == "" {
			t.Fatal("startup accepted without a user")
		}
		if body[len(body)-1] != 0 {
			t.Fatal("startup accepted without its terminator")
		}
		for _, p := range st.params {
			if p.name == "" || strings.IndexByte(p.name, 0) >= 0 || strings.IndexByte(p.value, 0) >= 0 {
				t.Fatalf("bad parameter %q", p)
			}
			if strings.HasPrefix(p.name, "_pq_.") && len(p.name) > 5 {
				t.Fatalf("protocol option %q kept as a parameter", p.name)
			}
		}
		for _, o := range st.unknownOptions {
			if !strings.HasPrefix(o, "_pq_.") {
				t.Fatalf("unknown option %q", o)
			}
		}
	}
}

// refScan is the reference model of scanClient over a whole stream: it walks the messages in
// order and reports what the chunked scan must find in total.
type refScan struct {
	requests  int
	unsynced  int // last non -1 state
	terminate bool
	errAt     int // offset of the bad header, -1 if none
	consumed  int // offset where a clean scan stops (terminate or end of complete headers)
}

func referenceScan(in []byte, maxMsg int) refScan {
	res := refScan{unsynced: -1, errAt: -1}
	pos := 0
	for pos+5 <= len(in) {
		typ := in[pos]
		length := int(binary.BigEndian.Uint32(in[pos+1:]))
		if length < 4 || length-4 > maxMsg {
			res.errAt = pos
			return res
		}
		switch typ {
		case 'Q', 'F':
			res.requests++
		case 'S':
			res.requests++
			res.unsynced = 0
		case 'P', 'B', 'E', 'D', 'C', 'H':
			res.unsynced = 1
		case 'd', 'c', 'f':
		case 'X':
			res.terminate = true
			res.consumed = pos
			return res
		default:
			res.errAt = pos
			return res
		}
		pos += 1 + length
	}
	res.consumed = min(pos, len(in))
	return res
}

// chunkedScan feeds in to scanClient the way clientToServer does: each read appends up to one
// chunk at f.w, scanClient runs, and f.compact() keeps the unconsumed bytes. chunks gives the
// read sizes (cycled).
func chunkedScan(t *testing.T, in, chunks []byte, bufSize, maxMsg int) (total refScan) {
	t.Helper()
	f := &wire.Frames{Buf: make([]byte, bufSize)}
	total = refScan{unsynced: -1, errAt: -1}
	fed, consumed := 0, 0
	for i := 0; ; i++ {
		if fed == len(in) {
			break
		}
		n := len(in) - fed
		if len(chunks) > 0 {
			n = min(n, 1+int(chunks[i%len(chunks)]))
		}
		space := len(f.Buf) - f.W
		if space <= 0 {
			t.Fatalf("no room to read: r %d w %d remaining %d (scan made no progress)", f.R, f.W, f.Remaining)
		}
		n = min(n, space)
		copy(f.Buf[f.W:], in[fed:fed+n])
		f.W += n
		fed += n

		start := f.R
		b, err := scanClient(f, maxMsg)
		if f.R < start || f.R > f.W || f.W > len(f.Buf) || f.Remaining < 0 {
			t.Fatalf("bad frame state after scan: start %d r %d w %d len %d remaining %d", start, f.R, f.W, len(f.Buf), f.Remaining)
		}
		consumed += f.R - start
		total.requests += b.requests
		if b.unsynced >= 0 {
			total.unsynced = b.unsynced
		}
		if err != nil {
			var pe *wire.ProtocolError
			if !errors.As(err, &pe) {
				t.Fatalf("scan error %v (%T), want *wire.ProtocolError", err, err)
			}
			total.errAt = consumed
			return total
		}
		if b.terminate {
			if f.W-f.R < 5 || f.Buf[f.R] != 'X' {
				t.Fatalf("terminate reported but the scan did not stop at an X header: %q", f.Buf[f.R:f.W])
			}
			total.terminate = true
			total.consumed = consumed
			return total
		}
		// Without error or Terminate, only a partial header may be left over.
		if f.Remaining == 0 && f.W-f.R >= 5 {
			t.Fatalf("scan stopped with a complete header buffered: r %d w %d", f.R, f.W)
		}
		if f.Remaining > 0 && f.R != f.W {
			t.Fatalf("scan stopped inside a body with bytes left: r %d w %d remaining %d", f.R, f.W, f.Remaining)
		}
		f.Compact()
		if f.R != 0 || f.W > 4 {
			t.Fatalf("after compact: r %d w %d", f.R, f.W)
		}
	}
	total.consumed = consumed
	return total
}

// validStream builds a stream of well-formed client messages from spec: each pair of bytes
// picks a message type and a body length. It returns the stream, the number of requests it
// holds and its final unsynced state.
func validStream(spec []byte, maxBody int) (stream []byte, requests, unsynced int) {
	types := []byte("QFSPBEDCHdcf")
	unsynced = -1
	for i := 0; i+1 < len(spec) && len(stream) < 1<<16; i += 2 {
		typ := types[int(spec[i])%len(types)]
		n := int(spec[i+1]) % (maxBody + 1)
		stream = append(stream, fmsg(typ, bytes.Repeat([]byte{spec[i+1]}, n))...)
		switch typ {
		case 'Q', 'F':
			requests++
		case 'S':
			requests++
			unsynced = 0
		case 'P', 'B', 'E', 'D', 'C', 'H':
			unsynced = 1
		}
	}
	return stream, requests, unsynced
}

func FuzzScanClient(f *testing.F) {
	q := fmsg('Q', []byte("select 1\x00"))
	f.Add(q, []byte{0})
	f.Add(bytes.Join([][]byte{fmsg('P', []byte("\x00select 1\x00\x00\x00")), fmsg('B', make([]byte, 10)), fmsg('E', make([]byte, 5)), fmsg('S', nil)}, nil), []byte{2, 7, 63})
	f.Add(append(bytes.Clone(q), fmsg('X', nil)...), []byte{255})
	f.Add(append(bytes.Clone(q), '!', 0, 0, 0, 4), []byte{1, 2})
	f.Add([]byte{'Q', 0xff, 0xff, 0xff, 0xff}, []byte{})
	f.Add([]byte{'Q', 0, 0, 0, 3}, []byte{0})
	f.Add(fmsg('d', bytes.Repeat([]byte("z"), 1000)), []byte{5, 200})
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"), []byte{3})

	f.Fuzz(func(t *testing.T, in, chunks []byte) {
		const bufSize, maxMsg = 64, 512

		// Arbitrary bytes: the chunked scan agrees with the whole-stream model.
		want := referenceScan(in, maxMsg)
		got := chunkedScan(t, in, chunks, bufSize, maxMsg)
		if got.errAt != want.errAt {
			t.Fatalf("error at %d, want %d", got.errAt, want.errAt)
		}
		if got.requests != want.requests || got.unsynced != want.unsynced || got.terminate != want.terminate {
			t.Fatalf("got requests %d unsynced %d terminate %v; want %d %d %v", got.requests, got.unsynced, got.terminate, want.requests, want.unsynced, want.terminate)
		}
		if want.errAt < 0 && got.consumed != want.consumed {
			t.Fatalf("consumed %d bytes, want %d", got.consumed, want.consumed)
		}

		// A stream of valid messages: no error, every request counted, everything consumed.
		stream, requests, unsynced := validStream(in, maxMsg)
		got = chunkedScan(t, stream, chunks, bufSize, maxMsg)
		if got.errAt >= 0 || got.terminate {
			t.Fatalf("valid stream: error at %d, terminate %v", got.errAt, got.terminate)
		}
		if got.requests != requests || got.unsynced != unsynced || got.consumed != len(stream) {
			t.Fatalf("valid stream: requests %d unsynced %d consumed %d; want %d %d %d", got.requests, got.unsynced, got.consumed, requests, unsynced, len(stream))
		}
	})
}
