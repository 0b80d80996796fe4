package proxy

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/config"
)

// TestCancelBackendBySQL: a query builder cancels client A's query with SELECT
// pg_cancel_backend($1), passing the PID from A's BackendKeyData, through the extended protocol
// (pgx) and as a literal (psql): the proxy, which minted the PID, cancels A's query within a
// second and answers true; pg_terminate_backend ends A with 57P01. Minted PIDs lie above 2^22,
// out of reach of real backends, and SQL signals of real PIDs still reach the server.
func TestCancelBackendBySQL(t *testing.T) {
	c := cluster(t)
	ctx := testCtx(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 4 })

	sleep := func(a *pgx.Conn) <-chan error {
		done := make(chan error, 1)
		go func() {
			_, err := a.Exec(ctx, "select pg_sleep(10)")
			done <- err
		}()
		return done
	}
	waitCancelled := func(done <-chan error, code string, start time.Time) {
		t.Helper()
		select {
		case err := <-done:
			if pe := pgErrorOf(err); pe == nil || pe.Code != code {
				t.Fatalf("A's query ended with %v, want SQLSTATE %s", err, code)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("A's query ended %v after the call, want within a second", d)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("A's query was not cancelled")
		}
	}

	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		t.Run("pgx_"+modeName(mode), func(t *testing.T) {
			a := p.connect(t, pgx.QueryExecModeSimpleProtocol)
			b := p.connect(t, mode)
			pid := a.PgConn().PID()
			if pid <= 1<<22 || pid > 1<<31-1 {
				t.Fatalf("minted PID %d is not above 2^22", pid)
			}
			done := sleep(a)
			waitRunning(t, direct(t, c), "select pg_sleep(10)")
			start := time.Now()
			var ok bool
			if err := b.QueryRow(ctx, "select pg_cancel_backend($1)", int32(pid)).Scan(&ok); err != nil || !ok {
				t.Fatalf("pg_cancel_backend($1): %v, %v", ok, err)
			}
			waitCancelled(done, "57014", start)
			// A goes on.
			if v := queryInt(t, a, "select 1"); v != 1 {
				t.Fatalf("A after the cancel: %d", v)
			}
			// A PID nobody has: false, as from PostgreSQL.
			if err := b.QueryRow(ctx, "select pg_cancel_backend($1)", int32(pid+1)).Scan(&ok); err != nil || ok {
				t.Errorf("pg_cancel_backend of an unknown minted PID: %v, %v; want false", ok, err)
			}
		})
	}

	t.Run("psql_literal", func(t *testing.T) {
		a := p.connect(t, pgx.QueryExecModeSimpleProtocol)
		done := sleep(a)
		waitRunning(t, direct(t, c), "select pg_sleep(10)")
		start := time.Now()
		out := runPsql(t, p.dsn("postgres", "postgres"), "-Atc", "SELECT pg_cancel_backend("+strconv.Itoa(int(a.PgConn().PID()))+")")
		if strings.TrimSpace(out) != "t" {
			t.Errorf("psql pg_cancel_backend: %q, want t", out)
		}
		waitCancelled(done, "57014", start)
	})

	t.Run("terminate", func(t *testing.T) {
		a := p.connect(t, pgx.QueryExecModeSimpleProtocol)
		b := p.connect(t, pgx.QueryExecModeCacheStatement)
		done := sleep(a)
		waitRunning(t, direct(t, c), "select pg_sleep(10)")
		start := time.Now()
		var ok bool
		if err := b.QueryRow(ctx, "select pg_terminate_backend($1)", int32(a.PgConn().PID())).Scan(&ok); err != nil || !ok {
			t.Fatalf("pg_terminate_backend($1): %v, %v", ok, err)
		}
		select {
		case err := <-done:
			pe := pgErrorOf(err)
			if pe == nil || pe.Code != "57P01" && pe.Code != "57014" {
				t.Fatalf("A's query ended with %v, want 57P01", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("A was not terminated")
		}
		if time.Since(start) > time.Second {
			t.Errorf("A ended %v after the call", time.Since(start))
		}
		if err := a.Ping(ctx); err == nil {
			t.Error("A's connection still works after pg_terminate_backend")
		}
		// B goes on.
		if v := queryInt(t, b, "select 1"); v != 1 {
			t.Fatalf("B after terminating A: %d", v)
		}
	})

	t.Run("real_pid_passes_through", func(t *testing.T) {
		b := p.connect(t, pgx.QueryExecModeSimpleProtocol)
		// A real backend PID (below 2^22) is the server's business: PostgreSQL answers.
		var ok bool
		err := b.QueryRow(ctx, "select pg_cancel_backend(pg_backend_pid())").Scan(&ok)
		if err != nil && !errors.Is(err, context.Canceled) {
			if pe := pgErrorOf(err); pe == nil || pe.Code != "57014" {
				t.Fatalf("pg_cancel_backend(pg_backend_pid()): %v", err)
			}
		}
	})
}
