package proxy

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgsidecar/pgsidecar/config"
)

// TestLoginCapHoldsSilentFlood: 50 connections that never send a startup packet, against a cap
// of 10 logins in progress: at most 10 are ever held (the rest wait in the listen backlog, and
// the oldest silent logins are closed as they reach a second), and a legitimate client queued
// behind the flood logs in and queries once the flood ahead of it has been closed.
func TestLoginCapHoldsSilentFlood(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.MaxLoginsInProgress = 10
		cfg.ClientLoginTimeout = time.Minute // the cap, not the timeout, must hold the flood
	})
	var silent []net.Conn
	for range 50 {
		conn, err := net.DialTimeout("tcp", p.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, conn)
		t.Cleanup(func() { _ = conn.Close() })
	}
	// Sampled while a legitimate client, behind the flood, logs in.
	stop := make(chan struct{})
	most := make(chan int, 1)
	go func() {
		m := 0
		for {
			m = max(m, p.srv.loginsInProgress())
			select {
			case <-stop:
				most <- m
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	start := time.Now()
	conn, err := pgx.Connect(ctx, p.dsn("postgres", "postgres"))
	close(stop)
	if err != nil {
		t.Fatalf("a legitimate login behind the flood: %v", err)
	}
	defer conn.Close(ctx)
	t.Logf("logged in after %v", time.Since(start))
	if m := <-most; m > 10 {
		t.Errorf("%d logins in progress at once, want at most max_logins_in_progress (10)", m)
	}
	var one int
	if err := conn.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("select 1: %v", err)
	}
	// The silent connections ahead of it were closed to make room (the last ones admitted may
	// still be held, for at most a second).
	closed := 0
	for _, conn := range silent {
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		var b [1]byte
		if _, err := conn.Read(b[:]); !errors.Is(err, os.ErrDeadlineExceeded) {
			closed++
		}
	}
	if closed < 40 {
		t.Errorf("%d of 50 silent connections closed, want at least 40", closed)
	}
}

// TestFailedLoginsThrottled: repeated wrong passwords from one address are counted and slowed.
func TestFailedLoginsThrottled(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.AuthType = config.AuthSCRAMSHA256
		cfg.Users = []config.User{{Name: "postgres", Password: "right"}}
	})
	ctx := testCtx(t)
	attempt := func() time.Duration {
		start := time.Now()
		conn, err := pgx.Connect(ctx, "postgres://postgres:wrong@"+p.addr+"/postgres?sslmode=disable")
		if err == nil {
			conn.Close(ctx)
			t.Fatal("a wrong password logged in")
		}
		return time.Since(start)
	}
	first := attempt()
	var last time.Duration
	for range 6 {
		last = attempt()
	}
	if got := testutil.ToFloat64(p.srv.metrics.authFailures); got != 7 {
		t.Errorf("pgsidecar_auth_failures_total = %v, want 7", got)
	}
	if last < first+200*time.Millisecond {
		t.Errorf("the 7th failed login took %v, the first %v: want it slowed", last, first)
	}
	// The right password still works.
	conn, err := pgx.Connect(ctx, "postgres://postgres:right@"+p.addr+"/postgres?sslmode=disable")
	if err != nil {
		t.Fatalf("the right password after failures: %v", err)
	}
	conn.Close(ctx)
}
