package proxy

import (
	"io"
	"log/slog"
	"net"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

// benchSession is a transaction-mode session attached to a fake server that discards what it
// is sent, for measuring clientToServer's per-batch work without PostgreSQL.
func benchSession(tb testing.TB) (*session, *wire.Frames) {
	tb.Helper()
	cfg := config.Defaults("local")
	pools := pool.NewSet(pool.SetOptions{})
	tb.Cleanup(pools.Close)
	srv, err := New(Options{Config: &cfg, Pools: pools, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, c)
		c.Close()
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close(); ln.Close() })
	s := &session{srv: srv, txPooling: true, maxMsg: 1 << 30}
	s.Tracker.Init(&srv.stmts, srv.trackerLimits(srv.config(), config.Upstream{}))
	s.log = sessionLog{s}
	s.server = &pool.Conn{Conn: conn}
	stateOf(s.server)
	return s, &wire.Frames{Buf: make([]byte, largeBufSize)}
}

func encodeAll(tb testing.TB, msgs ...pgproto3.FrontendMessage) []byte {
	var out []byte
	for _, m := range msgs {
		var err error
		if out, err = m.Encode(out); err != nil {
			tb.Fatal(err)
		}
	}
	return out
}

// benchBatch runs forwardTracked over batch repeatedly, acting as the server side for the
// response queue so that it stays empty.
func benchBatch(b *testing.B, s *session, f *wire.Frames, batch []byte) {
	b.ReportAllocs()
	b.SetBytes(int64(len(batch)))
	for b.Loop() {
		f.R, f.W = 0, copy(f.Buf, batch)
		if err := s.forwardTracked(f); err != nil {
			b.Fatal(err)
		}
		s.mu.Lock()
		s.ResetQueue()
		s.Pending = 0
		s.mu.Unlock()
	}
}

// BenchmarkBindNamed is one execution of a named prepared statement (Bind, Execute, Sync), as
// pgx's statement cache and pgbench -M prepared send it: the proxy rewrites the statement name.
func BenchmarkBindNamed(b *testing.B) {
	s, f := benchSession(b)
	prep := encodeAll(b, &pgproto3.Parse{Name: "s1", Query: "select abalance from pgbench_accounts where aid = $1"}, &pgproto3.Sync{})
	f.R, f.W = 0, copy(f.Buf, prep)
	if err := s.forwardTracked(f); err != nil {
		b.Fatal(err)
	}
	batch := encodeAll(b, &pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("42")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
	benchBatch(b, s, f, batch)
}

// BenchmarkBindUnnamed is the same execution with the unnamed statement (Parse, Bind, Execute,
// Sync), as pgx's exec mode sends it: nothing is rewritten.
func BenchmarkBindUnnamed(b *testing.B) {
	s, f := benchSession(b)
	batch := encodeAll(b, &pgproto3.Parse{Query: "select abalance from pgbench_accounts where aid = $1"},
		&pgproto3.Bind{Parameters: [][]byte{[]byte("42")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
	benchBatch(b, s, f, batch)
}

// BenchmarkSimpleQuery is a simple-protocol Query in transaction mode (classified for pinning).
func BenchmarkSimpleQuery(b *testing.B) {
	s, f := benchSession(b)
	batch := encodeAll(b, &pgproto3.Query{String: "SELECT abalance FROM pgbench_accounts WHERE aid = 42;"})
	benchBatch(b, s, f, batch)
}

func TestTrackedForwardAllocs(t *testing.T) {
	s, f := benchSession(t)
	batch := encodeAll(t, &pgproto3.Query{String: "select 1"})
	allocs := testing.AllocsPerRun(200, func() {
		f.R, f.W = 0, copy(f.Buf, batch)
		if err := s.forwardTracked(f); err != nil {
			t.Fatal(err)
		}
		s.mu.Lock()
		s.ResetQueue()
		s.Pending = 0
		s.mu.Unlock()
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per simple Query batch, want 0", allocs)
	}
}
