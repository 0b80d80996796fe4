package proxy

import (
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/config"
)

// TestQueryTimeout checks that query_timeout cancels the server's query (it stops running on
// the server), the client gets 57014, and the server connection is reused cleanly.
func TestQueryTimeout(t *testing.T) {
	c := cluster(t)
	app := "query_timeout_test"
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.PoolSize = 1
		cfg.QueryTimeout = 300 * time.Millisecond
		cfg.DatabaseURL = c.DSN("postgres") + "&application_name=" + app
	})
	ctx := testCtx(t)
	conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	var pid int
	if err := conn.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := conn.Exec(ctx, "select pg_sleep(5)")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
		t.Fatalf("got %v, want 57014", err)
	}
	if el := time.Since(start); el < 300*time.Millisecond || el > 3*time.Second {
		t.Fatalf("cancelled after %v, want about 300ms", el)
	}
	admin := direct(t, c)
	var running int
	if err := admin.QueryRow(ctx, "select count(*) from pg_stat_activity where application_name = $1 and state = 'active' and query like '%pg_sleep%'", app).Scan(&running); err != nil {
		t.Fatal(err)
	}
	if running != 0 {
		t.Fatal("pg_sleep still runs on the server after query_timeout")
	}
	var pid2, one int
	if err := conn.QueryRow(ctx, "select pg_backend_pid(), 1").Scan(&pid2, &one); err != nil || one != 1 {
		t.Fatalf("after the timeout: %v", err)
	}
	if pid2 != pid {
		t.Errorf("server connection replaced (pid %d, then %d); want it reused", pid, pid2)
	}
}

// TestSessionStateRefuse checks session_state = refuse: SQL that would pin fails with 0A000
// (aborting an explicit transaction, as a server error does), the client is not pinned, and its
// connection stays usable.
func TestSessionStateRefuse(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.SessionState = config.SessionStateRefuse })
	ctx := testCtx(t)
	conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	for _, sql := range []string{"listen refused_channel", "select pg_advisory_lock(42)", "create temp table refused_t (i int)"} {
		_, err := conn.Exec(ctx, sql)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "0A000" {
			t.Fatalf("%s: got %v, want 0A000", sql, err)
		}
	}
	if _, err := conn.Exec(ctx, "begin"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "listen refused_channel"); err == nil {
		t.Fatal("LISTEN inside a transaction was not refused")
	}
	if _, err := conn.Exec(ctx, "select 1"); err == nil {
		t.Fatal("the transaction was not aborted by the refusal")
	}
	if _, err := conn.Exec(ctx, "rollback"); err != nil {
		t.Fatal(err)
	}
	extConn := p.connect(t, pgx.QueryExecModeExec)
	if _, err := extConn.Exec(ctx, "select pg_advisory_lock($1)", 7); err == nil {
		t.Fatal("extended-protocol advisory lock was not refused")
	}
	var one int
	if err := extConn.QueryRow(ctx, "select $1::int", 1).Scan(&one); err != nil || one != 1 {
		t.Fatalf("after the refusal: %v", err)
	}
	p.srv.mu.Lock()
	for sess := range p.srv.sessions {
		if sess.pinned != "" {
			t.Errorf("session %d pinned (%s) under session_state=refuse", sess.id, sess.pinned)
		}
	}
	p.srv.mu.Unlock()
}
