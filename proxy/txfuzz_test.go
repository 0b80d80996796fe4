package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy/txmode"
	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

// recordConn is a net.Conn that keeps what is written to it and has nothing to read.
type recordConn struct{ out bytes.Buffer }

func (c *recordConn) Read([]byte) (int, error)         { return 0, io.EOF }
func (c *recordConn) Write(b []byte) (int, error)      { return c.out.Write(b) }
func (c *recordConn) Close() error                     { return nil }
func (c *recordConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *recordConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *recordConn) SetDeadline(time.Time) error      { return nil }
func (c *recordConn) SetReadDeadline(time.Time) error  { return nil }
func (c *recordConn) SetWriteDeadline(time.Time) error { return nil }
func (c *recordConn) take() []byte                     { b := bytes.Clone(c.out.Bytes()); c.out.Reset(); return b }
func (c *recordConn) peekLen() int                     { return c.out.Len() }

// txFuzzLimits are the limits the fuzz target runs the tracker with, small so that inputs reach
// them.
func txFuzzLimits() config.Config {
	cfg := config.Defaults("local")
	cfg.MaxClientPreparedStatements = 8
	cfg.MaxPreparedStatementBytes = 4 << 10
	cfg.MaxPreparedStatements = 4
	cfg.MaxRequestsInFlight = 64
	cfg.MaxMessageSize = 1 << 20
	return cfg
}

// txFuzzSession is a transaction-mode session with no sockets: the client and its server are
// recorders, and the test feeds it client and server bytes itself.
func txFuzzSession(cfg *config.Config) (s *session, server *recordConn, client *recordConn) {
	srv := &Server{epoch: time.Now(), log: slog.New(slog.NewTextHandler(io.Discard, nil)), sessions: map[*session]struct{}{}, byPID: map[uint32]*session{}, ctx: context.Background()}
	srv.cfg.Store(cfg)
	srv.stmts.Max = cfg.MaxPreparedStatementBytes
	server, client = &recordConn{}, &recordConn{}
	s = &session{srv: srv, txPooling: true, maxMsg: int32(cfg.MaxMessageSize), conn: client, cio: client}
	s.log = sessionLog{s}
	s.Tracker.Init(&srv.stmts, srv.trackerLimits(cfg, config.Upstream{}))
	// SQL signals of minted PIDs are answered by the tracker; odd ones are found.
	s.Tracker.SetSignalTarget(txmode.SignalTargetFunc(func(pid int64) bool { return pid%2 == 1 }), isMintedPID)
	s.server = &pool.Conn{Conn: server}
	stateOf(s.server)
	return s, server, client
}

// msgCounts counts the messages of each type in a well-framed stream; ok is false when the
// stream is not a sequence of whole messages.
func msgCounts(b []byte) (counts [256]int, ok bool) {
	for len(b) > 0 {
		typ, length, hdr := wire.HeaderOf(b)
		if !hdr || length < 4 || 1+length > len(b) {
			return counts, false
		}
		counts[typ]++
		b = b[1+length:]
	}
	return counts, true
}

// executing are the client messages that make a server run something.
const executing = "QEFBS"

// FuzzTxMode drives the transaction-mode tracker (scanTracked for client bytes, relayTracked for
// server bytes) with arbitrary interleaved streams, seeded with real driver traffic captured by
// TestCaptureTxModeSeeds. It checks that nothing panics, that what the tracker holds stays within
// its limits, and that it never sends the server a request the client did not send: every
// message type it sends is one the client sent or one of its documented additions (Parse and
// Close of shared statements, the Describe that reads a statement's shape back, Flush), and no
// more Query, Execute, FunctionCall, Bind or Sync than the client sent, except batches the
// server refused whole and the proxy ran again (schema change, lost statement).
func FuzzTxMode(f *testing.F) {
	paths, _ := filepath.Glob(filepath.Join(seedDir, "*.seed"))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	rec := func(client bool, msgs ...interface{ Encode([]byte) ([]byte, error) }) []byte {
		var data []byte
		for _, m := range msgs {
			data, _ = m.Encode(data)
		}
		dir := byte('S')
		if client {
			dir = 'C'
		}
		out := []byte{dir, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(out[1:], uint32(len(data)))
		return append(out, data...)
	}
	f.Add(append(rec(true, &pgproto3.Parse{Name: "a", Query: "select $1::int"}, &pgproto3.Describe{ObjectType: 'S', Name: "a"}, &pgproto3.Sync{}),
		rec(false, &pgproto3.ParseComplete{}, &pgproto3.ParameterDescription{ParameterOIDs: []uint32{23}}, &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("x"), DataTypeOID: 23}}}, &pgproto3.ReadyForQuery{TxStatus: 'I'})...))
	f.Add(append(rec(true, &pgproto3.Query{String: "DEALLOCATE pgsidecar_1; DISCARD ALL"}, &pgproto3.Parse{Query: "DEALLOCATE ALL"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}),
		rec(false, &pgproto3.ErrorResponse{Severity: "FATAL", Code: "57P01"})...))
	f.Add(append(rec(true, &pgproto3.Bind{PreparedStatement: "a"}, &pgproto3.Close{ObjectType: 'S', Name: "a"}, &pgproto3.Close{ObjectType: 'S', Name: "b"}),
		rec(false, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "26000"}, &pgproto3.ReadyForQuery{TxStatus: 'E'})...))

	f.Fuzz(func(t *testing.T, data []byte) {
		cfg := txFuzzLimits()
		s, server, client := txFuzzSession(&cfg)
		cf := &wire.Frames{Buf: make([]byte, 64<<10)}
		sf := &wire.Frames{Buf: make([]byte, 64<<10)}
		var fromClient, toServer, rerun []byte
		scanClient := func() bool {
			defer func() { toServer = append(toServer, server.take()...) }()
			// What decides whether a server is taken, also when one is attached.
			_ = txmode.NeedsServer(cf)
			for {
				b, attach := s.scanTracked(cf)
				if attach {
					t.Fatal("no server attached") // the fuzz session keeps its server
				}
				if len(b.out) > 0 && b.srv != nil {
					_, _ = b.srv.Write(b.out)
					_ = s.wroteTracked(nil)
				}
				if b.synthAtHead {
					_, _ = client.Write(s.takeSynths())
				}
				if b.err != nil || b.terminate {
					return false // the session ends
				}
				s.mu.Lock()
				resume := b.hold && s.VerifyDone
				s.mu.Unlock()
				if !resume {
					// Done, or a Bind waits for a shape the input may or may not bring.
					cf.Compact()
					return true
				}
			}
		}
		live := true
		for off := 0; off < len(data) && live; {
			dir, n := data[off], len(data)-off-1
			off++
			if len(data)-off >= 4 {
				n = min(int(binary.BigEndian.Uint32(data[off:])), len(data)-off-4)
				off += 4
			}
			chunk := data[off : off+n]
			off += n
			if dir != 'S' {
				fromClient = append(fromClient, chunk...)
				cf.Compact()
				if len(chunk) > len(cf.Buf)-cf.W {
					chunk = chunk[:len(cf.Buf)-cf.W]
				}
				cf.W += copy(cf.Buf[cf.W:], chunk)
				live = scanClient()
				continue
			}
			sf.Compact()
			if len(chunk) > len(sf.Buf)-sf.W {
				chunk = chunk[:len(sf.Buf)-sf.W]
			}
			sf.W += copy(sf.Buf[sf.W:], chunk)
			before := server.peekLen()
			out, _, _, _, err := s.relayTrackedLocked(sf, stateOf(s.server))
			_, _ = client.Write(out)
			if server.peekLen() > before {
				// relayTracked writes to the server only to run a refused batch again.
				rerun = append(rerun, server.take()...)
			}
			s.mu.Lock()
			stop := s.ServerGone || s.RetryNeeded
			s.mu.Unlock()
			if err != nil || stop {
				break // the relay loop would end, or move to another server
			}
			sf.Compact()
			// A held Bind goes on once its statement's shape is in.
			live = scanClient()
		}

		// Bounded by the limits.
		stats := s.Stats()
		if n := stats.Statements; n > cfg.MaxClientPreparedStatements {
			t.Errorf("client holds %d prepared statements, limit %d", n, cfg.MaxClientPreparedStatements)
		}
		if _, b := s.srv.stmts.Held(); b > cfg.MaxPreparedStatementBytes {
			t.Errorf("registry holds %d bytes, limit %d", b, cfg.MaxPreparedStatementBytes)
		}
		if c := stats.QueueCapacity; c > 4*stats.Queued+1024 && c > 4*len(fromClient) {
			t.Errorf("reply queue holds %d entries in %d of storage", stats.Queued, c)
		}
		if n := stateOf(s.server).Prepared(); n > cfg.MaxPreparedStatements {
			t.Errorf("server holds %d statements, limit %d", n, cfg.MaxPreparedStatements)
		}

		// Nothing sent that the client did not send, beyond the documented additions.
		sent, ok := msgCounts(toServer)
		if !ok {
			// What the client sent is passed through as it is; it need not be well framed
			// only when the client's own bytes are not.
			if _, clientOK := msgCounts(fromClient); clientOK {
				t.Fatalf("the server was sent a broken stream for a well-framed client stream:\nclient %q\nserver %q", fromClient, toServer)
			}
			return
		}
		// The client's messages, as far as they are whole (a broken tail is never forwarded).
		var got [256]int
		for b := fromClient; len(b) > 0; {
			typ, length, hdr := wire.HeaderOf(b)
			if !hdr || length < 4 || 1+length > len(b) {
				break
			}
			got[typ]++
			b = b[1+length:]
		}
		again, _ := msgCounts(rerun)
		for typ := range 256 {
			if sent[typ] == 0 {
				continue
			}
			extra := bytes.IndexByte([]byte("PCDH"), byte(typ)) >= 0
			if got[typ] == 0 && !extra {
				t.Errorf("the server was sent %d messages of type %q, which the client never sent", sent[typ], byte(typ))
			}
		}
		for _, typ := range []byte(executing) {
			if sent[typ] > got[typ]+again[typ] {
				t.Errorf("the server was sent %d %q messages, the client %d (re-run: %d)", sent[typ], typ, got[typ], again[typ])
			}
		}
	})
}
