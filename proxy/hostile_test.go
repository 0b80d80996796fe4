package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/config"
)

// TestHostileClients floods the proxy with clients that misbehave, one kind at a time:
// slowloris startups, garbage after an SSLRequest, huge length headers, cancel requests, and
// clients that never read their results. For each, the proxy's goroutines and live heap stay
// bounded while the flood is on, and a legitimate client's queries succeed throughout.
func TestHostileClients(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.PoolSize = 4
		cfg.MaxLoginsInProgress = 50
		cfg.ClientLoginTimeout = 2 * time.Second
		cfg.ClientWriteTimeout = time.Second
		cfg.MaxClientConn = 100
	})
	legit := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	check := func(t *testing.T) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var one int
		if err := legit.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
			t.Fatalf("the legitimate client's select 1: %v", err)
		}
	}
	dial := func(t *testing.T) net.Conn {
		conn, err := net.DialTimeout("tcp", p.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return conn
	}
	startup := func() []byte {
		var b []byte
		body := []byte("user\x00postgres\x00database\x00postgres\x00\x00")
		b = binary.BigEndian.AppendUint32(b, uint32(8+len(body)))
		b = binary.BigEndian.AppendUint32(b, 196608)
		return append(b, body...)
	}
	floods := []struct {
		name  string
		n     int
		flood func(t *testing.T, conn net.Conn)
	}{
		{"slowloris startup", 200, func(t *testing.T, conn net.Conn) {
			_, _ = conn.Write(startup()[:3]) // part of the length, then nothing
		}},
		{"garbage after SSLRequest", 200, func(t *testing.T, conn net.Conn) {
			_, _ = conn.Write([]byte{0, 0, 0, 8, 4, 210, 22, 47})
			_, _ = conn.Write(bytes.Repeat([]byte{0xff}, 4096))
		}},
		{"huge startup length", 200, func(t *testing.T, conn net.Conn) {
			_, _ = conn.Write([]byte{0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0})
		}},
		{"huge message length after login", 50, func(t *testing.T, conn net.Conn) {
			_, _ = conn.Write(startup())
			_, _ = conn.Write([]byte{'Q', 0x7f, 0xff, 0xff, 0xff})
		}},
		{"cancel request flood", 300, func(t *testing.T, conn net.Conn) {
			_, _ = conn.Write([]byte{0, 0, 0, 16, 4, 210, 22, 46, 0x40, 0, 0, 1, 1, 2, 3, 4})
		}},
		{"never reads its results", 20, func(t *testing.T, conn net.Conn) {
			_, _ = conn.Write(startup())
			q := "SELECT repeat('x', 100000) FROM generate_series(1, 1000)\x00"
			var b []byte
			b = append(b, 'Q')
			b = binary.BigEndian.AppendUint32(b, uint32(4+len(q)))
			_, _ = conn.Write(append(b, q...))
		}},
	}
	baseGoroutines := runtime.NumGoroutine()
	baseHeap := heapInUse()
	for _, fl := range floods {
		t.Run(fl.name, func(t *testing.T) {
			var conns []net.Conn
			var mu sync.Mutex
			var wg sync.WaitGroup
			for range fl.n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					conn := dial(t)
					fl.flood(t, conn)
					mu.Lock()
					conns = append(conns, conn)
					mu.Unlock()
				}()
			}
			wg.Wait()
			check(t)
			// Bounded while the flood is on: the goroutines of at most max_logins_in_progress
			// logins and max_client_conn clients (two each, with their relay workers), and
			// the heap within a few MiB a connection would never explain.
			t.Logf("during the flood: %d goroutines (%d before), heap %+d KiB", runtime.NumGoroutine(), baseGoroutines, (int64(heapInUse())-int64(baseHeap))>>10)
			if g := runtime.NumGoroutine(); g > baseGoroutines+2*100+2*50+64 {
				t.Errorf("%d goroutines during the flood (%d before)", g, baseGoroutines)
			}
			if h := int64(heapInUse()) - int64(baseHeap); h > 64<<20 {
				t.Errorf("heap grew by %d MiB during the flood", h>>20)
			}
			check(t)
			for _, conn := range conns {
				_ = conn.Close()
			}
			// Everything is let go once the flood is gone.
			waitFor(t, testCtx(t), 15*time.Second, "the flood's sessions to end", func() error {
				if n := p.srv.Clients(); n > 1 {
					return fmt.Errorf("%d clients still connected", n)
				}
				if n := p.srv.loginsInProgress(); n > 0 {
					return fmt.Errorf("%d logins still in progress", n)
				}
				return nil
			})
			check(t)
		})
	}
}
