package proxy

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/config"
)

// TestSessionModeRealPID: in session mode a client is told its server's real PID, so
// pg_backend_pid() agrees with it, a cancel reaches its query, and terminating that backend
// gives the client PostgreSQL's own 57P01; its next connection works.
func TestSessionModeRealPID(t *testing.T) {
	c := cluster(t)
	ctx := testCtx(t)
	p := startProxy(t, c, withPoolMode(config.PoolModeSession))
	conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	pid := int64(conn.PgConn().PID())
	if got := queryInt(t, conn, "select pg_backend_pid()"); got != pid {
		t.Fatalf("pg_backend_pid() = %d, the client was told %d", got, pid)
	}
	// Cancel by the key the client was given.
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, "select pg_sleep(10)")
		done <- err
	}()
	waitRunning(t, direct(t, c), "select pg_sleep(10)")
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	if err := conn.PgConn().CancelRequest(cctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	if pe := pgErrorOf(<-done); pe == nil || pe.Code != "57014" {
		t.Fatalf("the cancelled query: %v, want 57014", pe)
	}
	// Terminated from elsewhere, by the PID the client knows.
	admin := direct(t, c)
	var ok bool
	if err := admin.QueryRow(ctx, "select pg_terminate_backend($1)", pid).Scan(&ok); err != nil || !ok {
		t.Fatalf("pg_terminate_backend(%d): %v %v", pid, ok, err)
	}
	_, err := conn.Exec(ctx, "select 1")
	if pe := pgErrorOf(err); pe == nil || pe.Code != "57P01" {
		t.Fatalf("after pg_terminate_backend: %v, want 57P01", err)
	}
	next := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	if got := queryInt(t, next, "select pg_backend_pid()"); got != int64(next.PgConn().PID()) || got == pid {
		t.Fatalf("next connection: backend %d, told %d (terminated %d)", got, next.PgConn().PID(), pid)
	}
}
