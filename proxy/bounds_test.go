package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/internal/retry"
)

// heapInUse is the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestCloseFloodBehindPendingRequest: a client sends Parse and Bind without Sync, so the server
// holds its replies, then 64 MiB of Close messages that the proxy answers itself, and reads
// nothing. The proxy's heap must not follow the flood, and another client is served meanwhile.
func TestCloseFloodBehindPendingRequest(t *testing.T) {
	c := cluster(t)
	ctx := testCtx(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 2 })
	other := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	if v := queryInt(t, other, "select 1"); v != 1 {
		t.Fatalf("select 1 = %d", v)
	}
	before := heapInUse()

	rc := rawConnect(t, p)
	rc.send(&pgproto3.Parse{Name: "s1", Query: "select 1"}, &pgproto3.Bind{PreparedStatement: "s1"})
	closeMsg, _ := (&pgproto3.Close{ObjectType: 'S', Name: "x"}).Encode(nil)
	chunk := make([]byte, 0, 64<<10)
	for len(chunk)+len(closeMsg) <= cap(chunk) {
		chunk = append(chunk, closeMsg...)
	}
	const total = 64 << 20
	var wg sync.WaitGroup
	wg.Add(1)
	var sent int
	var werr error
	go func() {
		defer wg.Done()
		_ = rc.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		for sent < total {
			n, err := rc.conn.Write(chunk)
			sent += n
			if err != nil {
				werr = err
				return
			}
		}
	}()
	// Meanwhile another client is served.
	for i := 0; i < 20; i++ {
		if v := queryInt(t, other, "select 1"); v != 1 {
			t.Fatalf("select 1 = %d", v)
		}
		time.Sleep(50 * time.Millisecond)
	}
	wg.Wait()
	grown := int64(heapInUse()) - int64(before)
	t.Logf("flood: %d bytes written (%v); proxy heap grew by %d bytes", sent, werr, grown)
	if werr != nil && !errors.Is(werr, os.ErrDeadlineExceeded) && !isConnClosed(werr) {
		t.Errorf("flood write: %v", werr)
	}
	if grown > 16<<20 {
		t.Errorf("heap grew by %d MiB during a 64 MiB Close flood; want < 16 MiB", grown>>20)
	}
	if v := queryInt(t, other, "select 1"); v != 1 {
		t.Fatalf("select 1 = %d", v)
	}
	_ = ctx
}

func isConnClosed(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) || errors.Is(err, net.ErrClosed)
}

// TestOversizedDescribeRefused: a Describe whose header claims 64 MiB is a protocol violation,
// answered before anything is buffered for it.
func TestOversizedDescribeRefused(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, nil)
	before := heapInUse()
	rc := rawConnect(t, p)
	hdr := []byte{'D', 0, 0, 0, 0, 'S', 'x'}
	n := 64<<20 + 4
	hdr[1], hdr[2], hdr[3], hdr[4] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
	if _, err := rc.conn.Write(hdr); err != nil {
		t.Fatal(err)
	}
	typ, body := rc.recv()
	if typ != 'E' {
		t.Fatalf("got %q (%s), want ErrorResponse", typ, describeMsg(typ, body))
	}
	var e pgproto3.ErrorResponse
	if err := e.Decode(body); err != nil {
		t.Fatal(err)
	}
	if e.Code != retry.CodeProtocolViolation {
		t.Errorf("got %s %s, want 08P01", e.Code, e.Message)
	}
	if grown := int64(heapInUse()) - int64(before); grown > 1<<20 {
		t.Errorf("heap grew by %d bytes for a 64 MiB Describe header; want < 1 MiB", grown)
	}
}

// TestClientPreparedStatementLimit: the (N+1)th named statement of one client is refused with
// 53400 and the client goes on; refused Parses hold nothing.
func TestClientPreparedStatementLimit(t *testing.T) {
	c := cluster(t)
	ctx := testCtx(t)
	const limit = 20
	p := startProxy(t, c, func(cfg *config.Config) { cfg.MaxClientPreparedStatements = limit })
	conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	pc := conn.PgConn()
	for i := range limit {
		if _, err := pc.Prepare(ctx, fmt.Sprintf("s%d", i), fmt.Sprintf("select %d", i), nil); err != nil {
			t.Fatalf("prepare %d: %v", i, err)
		}
	}
	countBefore, bytesBefore := p.srv.stmts.Held()
	heapBefore := heapInUse()
	for i := range 2000 {
		_, err := pc.Prepare(ctx, fmt.Sprintf("over%d", i), fmt.Sprintf("select %d, 'over'", i), nil)
		if pe := wantPgError(t, err, retry.CodeConfigurationLimitExceeded); pe == nil {
			t.Fatal("no error")
		}
	}
	countAfter, bytesAfter := p.srv.stmts.Held()
	if bytesAfter != bytesBefore || countAfter != countBefore {
		t.Errorf("registry went from %d statements (%d bytes) to %d (%d bytes) on refused Parses", countBefore, bytesBefore, countAfter, bytesAfter)
	}
	if grown := int64(heapInUse()) - int64(heapBefore); grown > 1<<20 {
		t.Errorf("heap grew by %d bytes over 2000 refused Parses", grown)
	}
	// The client's statements still work, and closing one makes room.
	res := pc.ExecPrepared(ctx, "s3", nil, nil, nil).Read()
	if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "3" {
		t.Fatalf("execute s3: %v %q", res.Err, res.Rows)
	}
	if err := pc.Deallocate(ctx, "s3"); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.Prepare(ctx, "s_new", "select 'new'", nil); err != nil {
		t.Fatalf("prepare after close: %v", err)
	}
}

// TestPreparedStatementRegistryLimit: a new statement text beyond max_prepared_statement_bytes
// is refused with 53400; texts the registry holds keep working.
func TestPreparedStatementRegistryLimit(t *testing.T) {
	c := cluster(t)
	ctx := testCtx(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.MaxPreparedStatementBytes = 4096 })
	conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	pc := conn.PgConn()
	filler := fmt.Sprintf("select '%0900d'", 0)
	for i := 0; ; i++ {
		_, err := pc.Prepare(ctx, fmt.Sprintf("f%d", i), fmt.Sprintf("%s, %d", filler, i), nil)
		if err != nil {
			wantPgError(t, err, retry.CodeConfigurationLimitExceeded)
			if i < 3 {
				t.Fatalf("refused after %d statements", i)
			}
			break
		}
		if i > 10 {
			t.Fatal("no limit reached")
		}
	}
	_, held := p.srv.stmts.Held()
	if held > 4096 {
		t.Errorf("registry holds %d bytes, limit 4096", held)
	}
	// Another client preparing a text already held shares it.
	conn2 := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	if _, err := conn2.PgConn().Prepare(context.Background(), "g", filler+", 0", nil); err != nil {
		t.Fatalf("prepare of a held text: %v", err)
	}
}

// TestOversizedParseRefused: a Parse too large to inspect in transaction mode gets 54000 and the
// connection is closed; another client is unaffected.
func TestOversizedParseRefused(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, nil)
	rc := rawConnect(t, p)
	rc.send(&pgproto3.Parse{Name: "big", Query: "select '" + strings.Repeat("x", 2<<20) + "'"}, &pgproto3.Sync{})
	typ, body := rc.recv()
	if typ != 'E' {
		t.Fatalf("got %q (%s), want ErrorResponse", typ, describeMsg(typ, body))
	}
	var e pgproto3.ErrorResponse
	if err := e.Decode(body); err != nil {
		t.Fatal(err)
	}
	if e.Code != retry.CodeProgramLimitExceeded || e.Severity != "FATAL" {
		t.Errorf("got %s %s %s, want FATAL 54000", e.Severity, e.Code, e.Message)
	}
	other := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	if v := queryInt(t, other, "select 1"); v != 1 {
		t.Fatalf("select 1 = %d", v)
	}
}

// TestLargeQueryBufferNotKept: a client that sent one large query (bigger than the relay's
// large buffer) and then idles holds no buffer of that size: 40 such clients would otherwise
// keep 12 MB.
func TestLargeQueryBufferNotKept(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, nil)
	query, err := (&pgproto3.Query{String: "select length('" + strings.Repeat("x", 300<<10) + "')"}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	clients := make([]*rawClient, 40)
	for i := range clients {
		clients[i] = rawConnect(t, p)
	}
	before := heapInUse()
	for _, rc := range clients {
		if _, err := rc.conn.Write(query); err != nil {
			t.Fatal(err)
		}
		for {
			typ, body := rc.recv()
			if typ == 'E' {
				t.Fatalf("large query: %s", describeMsg(typ, body))
			}
			if typ == 'Z' {
				break
			}
		}
	}
	grown := int64(heapInUse()) - int64(before)
	t.Logf("heap grew %d KB for 40 idle clients that each sent a 300 KB query", grown>>10)
	if grown > 4<<20 {
		t.Errorf("heap grew %d KB: the clients keep their large query's buffer", grown>>10)
	}
}
