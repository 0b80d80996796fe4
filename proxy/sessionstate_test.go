package proxy

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/config"
)

// allPins sums pgsidecar_client_pins_total over every reason.
func allPins(t testing.TB, p *testProxy) float64 {
	t.Helper()
	var n float64
	for _, r := range []string{"listen", "advisory_lock", "temp_table", "with_hold_cursor", "sql_prepare", "set_role", "load", "set_untracked", "unclassified"} {
		n += txPins(t, p, r)
	}
	return n
}

// TestORMSessionSettingsDoNotPin: an ORM's pool of 20 connections that each set
// client_min_messages at connect, then run short transactions over a pool of 10 servers: no
// client is pinned, every client keeps its setting on whichever server it gets, and another
// client gets a server at once afterwards.
func TestORMSessionSettingsDoNotPin(t *testing.T) {
	c := cluster(t)
	ctx := testCtx(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 10 })
	conns := make([]*pgx.Conn, 20)
	for i := range conns {
		conns[i] = p.connect(t, pgx.QueryExecModeSimpleProtocol)
		mustExec(t, conns[i], "SET client_min_messages TO warning")
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(conns))
	for i, conn := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 10 {
				var got string
				if err := conn.QueryRow(ctx, "select current_setting('client_min_messages')").Scan(&got); err != nil {
					errs <- fmt.Errorf("client %d, transaction %d: %w", i, j, err)
					return
				}
				if got != "warning" {
					errs <- fmt.Errorf("client %d, transaction %d: client_min_messages = %q, want warning", i, j, got)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := allPins(t, p); n != 0 {
		t.Errorf("%v clients pinned, want none", n)
	}
	other := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	qctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var one int
	if err := other.QueryRow(qctx, "select 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("another client's select 1 within a second: %v", err)
	}
	// A server another client had set keeps nothing of it for this client.
	var got string
	if err := other.QueryRow(ctx, "select current_setting('client_min_messages')").Scan(&got); err != nil || got != "notice" {
		t.Errorf("a client that set nothing sees client_min_messages = %q (%v), want notice", got, err)
	}
}

// TestCustomParameterFollowsClient: a custom parameter set in one transaction is there in the
// client's next transaction on another server, not on other clients' servers, and RESET ALL
// clears it.
func TestCustomParameterFollowsClient(t *testing.T) {
	c := cluster(t)
	ctx := testCtx(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 2 })
	a := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	b := p.connect(t, pgx.QueryExecModeExec)
	mustExec(t, a, "begin")
	setPID := queryInt(t, a, "select pg_backend_pid()")
	mustExec(t, a, "SET app.tenant_id = 'a'")
	mustExec(t, a, "commit")
	// B and C take both servers; the one holding the server A used keeps it, the other lets
	// go, so A's next transaction runs on the other server.
	cc := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	mustExec(t, b, "begin")
	mustExec(t, cc, "begin")
	holder, other := b, cc
	if queryInt(t, cc, "select pg_backend_pid()") == setPID {
		holder, other = cc, b
	} else if queryInt(t, b, "select pg_backend_pid()") != setPID {
		t.Fatal("neither B nor C holds the server A used")
	}
	mustExec(t, other, "commit")
	if pid := queryInt(t, a, "select pg_backend_pid()"); pid == setPID {
		t.Fatalf("A ran on pid %d again; want the other server", pid)
	}
	var got string
	if err := a.QueryRow(ctx, "select current_setting('app.tenant_id')").Scan(&got); err != nil || got != "a" {
		t.Errorf("A on another server: app.tenant_id = %q (%v), want a", got, err)
	}
	// The client now on A's first server sees nothing of A's setting.
	var seen *string
	if err := holder.QueryRow(ctx, "select nullif(current_setting('app.tenant_id', true), '')").Scan(&seen); err != nil || seen != nil {
		t.Errorf("another client on A's first server sees app.tenant_id = %v (%v)", seen, err)
	}
	mustExec(t, holder, "commit")
	mustExec(t, a, "RESET ALL")
	var after *string
	if err := a.QueryRow(ctx, "select nullif(current_setting('app.tenant_id', true), '')").Scan(&after); err != nil || after != nil {
		t.Errorf("after RESET ALL: app.tenant_id = %v (%v), want none", after, err)
	}
	if n := allPins(t, p); n != 0 {
		t.Errorf("%v clients pinned, want none", n)
	}
}

// TestSetLocalAndRolledBackSet: SET LOCAL lasts only its transaction, and a SET in a
// rolled-back transaction is undone, as in PostgreSQL, whichever server the client gets next.
func TestSetLocalAndRolledBackSet(t *testing.T) {
	c := cluster(t)
	ctx := testCtx(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 2 })
	conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	busy := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	show := func(name string) string {
		t.Helper()
		var v string
		if err := conn.QueryRow(ctx, "select current_setting('"+name+"')").Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	mustExec(t, conn, "SET work_mem = '5MB'")
	mustExec(t, conn, "begin")
	mustExec(t, conn, "SET LOCAL work_mem = '7MB'")
	if v := show("work_mem"); v != "7MB" {
		t.Errorf("inside the transaction: work_mem = %s, want 7MB", v)
	}
	mustExec(t, conn, "commit")
	mustExec(t, conn, "begin")
	mustExec(t, conn, "SET work_mem = '9MB'")
	mustExec(t, conn, "rollback")
	for i := range 4 {
		// Alternate servers: the other client holds one of them every other time.
		if i%2 == 1 {
			mustExec(t, busy, "begin")
			queryInt(t, busy, "select 1")
		}
		if v := show("work_mem"); v != "5MB" {
			t.Errorf("transaction %d after SET LOCAL and a rolled-back SET: work_mem = %s, want 5MB", i, v)
		}
		if i%2 == 1 {
			mustExec(t, busy, "commit")
		}
	}
}

// TestUnsafeClientEncodingPins: a client whose encoding lets a quote or backslash byte end a
// multi-byte character (SJIS, BIG5, ...) cannot be classified reliably: it is pinned, whether
// it logs in with that encoding or switches to it later.
func TestUnsafeClientEncodingPins(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, nil)
	query := func(rc *rawClient, sql string) {
		t.Helper()
		rc.send(&pgproto3.Query{String: sql})
		for {
			typ, body := rc.recv()
			if typ == 'E' {
				t.Fatalf("%s: %s", sql, describeMsg(typ, body))
			}
			if typ == 'Z' {
				return
			}
		}
	}

	// Logged in with SJIS.
	conn, err := net.DialTimeout("tcp", p.addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rc := &rawClient{t: t, conn: conn, r: bufio.NewReader(conn)}
	rc.send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "postgres", "database": "postgres", "client_encoding": "SJIS"}})
	for typ, _ := rc.recv(); typ != 'Z'; typ, _ = rc.recv() {
	}
	query(rc, "select 1")
	if got := txPins(t, p, "client_encoding"); got != 1 {
		t.Errorf("after a login with SJIS: pins{client_encoding} = %v, want 1", got)
	}

	// Switched to BIG5 with SET: pinned from the next transaction on.
	rc2 := rawConnect(t, p)
	query(rc2, "SET client_encoding = 'BIG5'")
	query(rc2, "select 1")
	if got := txPins(t, p, "client_encoding"); got != 2 {
		t.Errorf("after SET client_encoding = BIG5: pins{client_encoding} = %v, want 2", got)
	}
	// A UTF8 client is not pinned.
	rc3 := rawConnect(t, p)
	query(rc3, "SET client_encoding = 'UTF8'")
	query(rc3, "select 1")
	if got := txPins(t, p, "client_encoding"); got != 2 {
		t.Errorf("after SET client_encoding = UTF8: pins{client_encoding} = %v, want 2", got)
	}
}
