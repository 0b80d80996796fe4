package proxy

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/internal/retry"
)

// rawLogin logs in over a plain socket (trust) and returns it, idle, after ReadyForQuery.
func rawLogin(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	body := binary.BigEndian.AppendUint32(nil, 196608)
	for _, kv := range [][2]string{{"user", "postgres"}, {"database", "postgres"}, {"application_name", "idle"}} {
		body = append(append(append(append(body, kv[0]...), 0), kv[1]...), 0)
	}
	body = append(body, 0)
	msg := binary.BigEndian.AppendUint32(nil, uint32(len(body)+4))
	if _, err := c.Write(append(msg, body...)); err != nil {
		t.Fatal(err)
	}
	for {
		typ, payload := readRawMsg(t, c)
		switch typ {
		case 'Z':
			return c
		case 'E':
			t.Fatalf("login refused: %q", payload)
		}
	}
}

// readRawMsg reads one backend message.
func readRawMsg(t testing.TB, c net.Conn) (byte, []byte) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(c, hdr); err != nil {
		t.Fatalf("read: %v", err)
	}
	payload := make([]byte, int(binary.BigEndian.Uint32(hdr[1:]))-4)
	if _, err := io.ReadFull(c, payload); err != nil {
		t.Fatalf("read: %v", err)
	}
	return hdr[0], payload
}

// TestSessionSize: the session struct, which every idle client holds, stays within the
// 1024-byte size class; a field that takes it past costs each idle client 128 bytes more (the
// next class), so that must be a decision, not an accident.
func TestSessionSize(t *testing.T) {
	if n := unsafe.Sizeof(session{}); n > 1024 {
		t.Errorf("session struct is %d bytes, want at most 1024", n)
	}
}

// TestIdleClientsParked: idle transaction-mode clients hold no goroutine (they are parked on
// the Server's Watcher from login on, and again after falling idle between transactions),
// resume on their next query with its right answer, and are still ended by a shutdown; a
// parked client's memory is bounded.
func TestIdleClientsParked(t *testing.T) {
	c := cluster(t)
	ctx := testCtx(t)
	p := startProxy(t, c, nil)
	if p.srv.parker == nil {
		t.Fatal("no parker: idle clients would keep a goroutine each")
	}
	parked := func(want int) {
		t.Helper()
		waitFor(t, ctx, 5*time.Second, fmt.Sprintf("%d clients parked", want), func() error {
			if n := p.srv.parker.w.Len(); n != want {
				return fmt.Errorf("%d parked", n)
			}
			return nil
		})
	}

	// Clients that only logged in: parked at once, no goroutine each.
	rawLogin(t, p.addr).Close()
	waitFor(t, ctx, 5*time.Second, "the first client to leave", func() error {
		if n := p.srv.Clients(); n != 0 {
			return fmt.Errorf("%d clients", n)
		}
		return nil
	})
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	goroutines := runtime.NumGoroutine()
	const n = 300
	idle := make([]net.Conn, n)
	for i := range idle {
		idle[i] = rawLogin(t, p.addr)
	}
	parked(n)
	if g := runtime.NumGoroutine(); g > goroutines+10 {
		t.Errorf("%d goroutines with %d idle clients, %d before: want no goroutine per idle client", g, n, goroutines)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	// Both ends of each socket are in this process: the test's client side costs about
	// 0.4 KB of it.
	perClient := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / n
	t.Logf("heap per parked client, both socket ends: %d bytes", perClient)
	if perClient > 3000 {
		t.Errorf("heap per parked client %d bytes, want at most 3000", perClient)
	}

	// A parked client's query wakes it and is answered; idle again, it is parked again.
	conn := p.connect(t, pgx.QueryExecModeCacheStatement)
	parked(n + 1)
	for i := range 3 {
		var got int
		if err := conn.QueryRow(ctx, "select $1::int + 1", i).Scan(&got); err != nil || got != i+1 {
			t.Fatalf("query %d after parking: %d, %v", i, got, err)
		}
		parked(n + 1)
	}
	// A raw idle client too: its first query is the wake-up.
	if _, err := idle[0].Write(append([]byte{'Q', 0, 0, 0, 14}, "select 42\x00"...)); err != nil {
		t.Fatal(err)
	}
	for {
		typ, payload := readRawMsg(t, idle[0])
		if typ == 'D' && string(payload[len(payload)-2:]) != "42" {
			t.Fatalf("select 42 gave %q", payload)
		}
		if typ == 'Z' {
			break
		}
	}
	parked(n + 1)

	// Shutdown ends parked clients with 57P01.
	go func() { _ = p.srv.Shutdown(ctx) }()
	typ, payload := readRawMsg(t, idle[1])
	if typ != 'E' || !containsCode(payload, retry.CodeAdminShutdown) {
		t.Fatalf("parked client at shutdown: %c %q, want an ErrorResponse with %s", typ, payload, retry.CodeAdminShutdown)
	}
	waitFor(t, ctx, 10*time.Second, "every session to end", func() error {
		if n := p.srv.Clients(); n != 0 {
			return fmt.Errorf("%d clients", n)
		}
		return nil
	})
}

// containsCode reports whether an ErrorResponse body carries SQLSTATE code.
func containsCode(body []byte, code string) bool {
	for len(body) > 1 {
		i := 1
		for i < len(body) && body[i] != 0 {
			i++
		}
		if body[0] == 'C' && string(body[1:i]) == code {
			return true
		}
		body = body[min(i+1, len(body)):]
	}
	return false
}

// TestParkedClientIdleTimeout: client_idle_timeout ends a parked client at its time, counted
// from its last message, not from when it was parked or kicked.
func TestParkedClientIdleTimeout(t *testing.T) {
	c := cluster(t)
	ctx := testCtx(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.ClientIdleTimeout = 1500 * time.Millisecond })
	conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	time.Sleep(2 * parkInterval)
	if _, err := conn.Exec(ctx, "select 1"); err != nil {
		t.Fatalf("query before the timeout: %v", err)
	}
	start := time.Now()
	err := conn.PgConn().Ping(ctx) // nothing sent after this: the clock runs from here
	if err != nil {
		t.Fatal(err)
	}
	raw := conn.PgConn().Conn()
	_ = raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 512)
	nr, rerr := io.ReadAtLeast(raw, buf, 5)
	elapsed := time.Since(start)
	if nr < 5 || buf[0] != 'E' || !containsCode(buf[5:nr], retry.CodeIdleSessionTimeout) {
		t.Fatalf("after idling: %q (%v) after %v, want an ErrorResponse with %s", buf[:nr], rerr, elapsed, retry.CodeIdleSessionTimeout)
	}
	if elapsed < 1400*time.Millisecond || elapsed > 4*time.Second {
		t.Errorf("idle client ended after %v, want about client_idle_timeout (1.5s)", elapsed)
	}
}
