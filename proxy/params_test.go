package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/pool"
)

func TestParseOptions(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want map[string]string
	}{
		{"-c statement_timeout=50", map[string]string{"statement_timeout": "50"}},
		{"-cstatement_timeout=50 --search-path=a\\ b", map[string]string{"statement_timeout": "50", "search_path": "a b"}},
		{"  -c a=1   -c b=x=y ", map[string]string{"a": "1", "b": "x=y"}},
		{"-c", map[string]string{}},
		{"garbage", map[string]string{}},
	} {
		got := parseOptions(tc.in)
		if len(got) != len(tc.want) {
			t.Errorf("parseOptions(%q) = %v, want %v", tc.in, got, tc.want)
			continue
		}
		for k, v := range tc.want {
			if got[k] != v {
				t.Errorf("parseOptions(%q)[%q] = %q, want %q", tc.in, k, got[k], v)
			}
		}
	}
}

// TestWelcomeCache: the ParameterStatus messages of a login are built once per pool and client
// parameter set, each client set gets its own values over the server's, and the cache stays
// bounded.
func TestWelcomeCache(t *testing.T) {
	var wc welcomeCache
	p1, p2 := &pool.Pool{}, &pool.Pool{}
	server := map[string]string{"application_name": "", "TimeZone": "UTC", "server_version": "15.20"}
	decode := func(b []byte) map[string]string {
		t.Helper()
		got := map[string]string{}
		for len(b) > 0 {
			if b[0] != 'S' || len(b) < 5 {
				t.Fatalf("not a ParameterStatus: %q", b)
			}
			n := 1 + int(binary.BigEndian.Uint32(b[1:5]))
			parts := strings.Split(string(b[5:n]), "\x00")
			got[parts[0]] = parts[1]
			b = b[n:]
		}
		return got
	}
	a := wc.get(p1, server, map[string]string{"application_name": "a", "timezone": "Europe/Paris"}, "a")
	want := map[string]string{"application_name": "a", "TimeZone": "Europe/Paris", "server_version": "15.20"}
	if got := decode(a); !maps.Equal(got, want) {
		t.Errorf("client a is told %v, want %v", got, want)
	}
	b := wc.get(p1, server, map[string]string{"application_name": "b"}, "b")
	if got := decode(b)["application_name"]; got != "b" {
		t.Errorf("client b is told application_name %q", got)
	}
	if again := wc.get(p1, server, nil, "a"); &again[0] != &a[0] {
		t.Error("the same pool and parameters built the messages again")
	}
	other := map[string]string{"application_name": "", "TimeZone": "GMT"}
	if got := decode(wc.get(p2, other, nil, "a"))["TimeZone"]; got != "GMT" {
		t.Errorf("another pool's client is told TimeZone %q, want that pool's GMT", got)
	}
	long := strings.Repeat("x", maxInternedKeyBytes+1)
	before := len(wc.m)
	if got := decode(wc.get(p1, server, map[string]string{"application_name": long}, long))["application_name"]; got != long || len(wc.m) != before {
		t.Errorf("a client's own long parameters: told %d bytes, cache %d -> %d entries (want them told, not kept)", len(got), before, len(wc.m))
	}
	for i := range 3 * maxWelcomes {
		wc.get(p1, server, nil, fmt.Sprint(i))
	}
	if n := len(wc.m); n > maxWelcomes {
		t.Errorf("cache holds %d entries, want at most %d", n, maxWelcomes)
	}
}

func TestParamsSQL(t *testing.T) {
	got := paramsSQL(map[string]string{"search_path": `"$user", it's`, "timezone": "UTC"}, map[string]string{"timezone": "UTC", "work_mem": "1MB"})
	want := `RESET "work_mem"; SELECT pg_catalog.set_config(E'search_path', E'"$user", it''s', false)`
	if got != want {
		t.Fatalf("paramsSQL =\n%s\nwant\n%s", got, want)
	}
	// Backslashes mean the same whatever the server's standard_conforming_strings.
	if got := paramsSQL(map[string]string{"x.y": "a\\'b"}, nil); got != `SELECT pg_catalog.set_config(E'x.y', E'a\\''b', false)` {
		t.Errorf("paramsSQL with a backslash = %s", got)
	}
	if s := paramsSQL(map[string]string{"a": "1"}, map[string]string{"a": "1"}); s != "" {
		t.Fatalf("equal params gave %q", s)
	}
}

// TestTxModeStartupOptions connects with options=-c statement_timeout=50 and
// extra_float_digits=3 in the startup packet, and checks both on every transaction while other
// clients with other settings share the servers.
func TestTxModeStartupOptions(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 2 })
	ctx := testCtx(t)

	cc, err := pgx.ParseConfig(p.dsn("postgres", "postgres") + "&options=-c%20statement_timeout%3D50&extra_float_digits=3&application_name=opt_client")
	if err != nil {
		t.Fatal(err)
	}
	cc.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if got := conn.PgConn().ParameterStatus("application_name"); got != "opt_client" {
		t.Fatalf("application_name reported at login = %q, want opt_client", got)
	}

	// Other clients keep the servers busy with default settings, so the first client moves.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		other := p.connect(t, pgx.QueryExecModeSimpleProtocol)
		for {
			select {
			case <-stop:
				return
			default:
			}
			var v string
			if err := other.QueryRow(ctx, "select current_setting('statement_timeout')").Scan(&v); err != nil || v != "0" {
				t.Errorf("a client without options sees statement_timeout %q (%v)", v, err)
				return
			}
		}
	}()
	pids := map[uint32]bool{}
	for range 40 {
		var timeout, digits, app string
		var pid uint32
		if err := conn.QueryRow(ctx, "select current_setting('statement_timeout'), current_setting('extra_float_digits'), current_setting('application_name'), pg_backend_pid()").Scan(&timeout, &digits, &app, &pid); err != nil {
			t.Fatal(err)
		}
		if timeout != "50ms" || digits != "3" || app != "opt_client" {
			t.Fatalf("on backend %d: statement_timeout=%s extra_float_digits=%s application_name=%s", pid, timeout, digits, app)
		}
		pids[pid] = true
	}
	_, err = conn.Exec(ctx, "select pg_sleep(1)")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
		t.Fatalf("pg_sleep(1) under statement_timeout=50: %v, want 57014", err)
	}
	close(stop)
	<-done
	t.Logf("ran on %d backends", len(pids))
}

// TestTxModeSetFollowsClient checks that a session SET of a tracked parameter is what SHOW
// returns on every later transaction, whichever server runs it, and that a rolled-back SET is
// not.
func TestTxModeSetFollowsClient(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 3 })
	ctx := testCtx(t)
	conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	others := make([]*pgx.Conn, 3)
	for i := range others {
		others[i] = p.connect(t, pgx.QueryExecModeSimpleProtocol)
	}
	if _, err := conn.Exec(ctx, "set search_path = pg_catalog, public"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "begin; set lock_timeout = '7s'; rollback"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "set application_name = 'moved'"); err != nil {
		t.Fatal(err)
	}
	if got := conn.PgConn().ParameterStatus("application_name"); got != "moved" {
		t.Fatalf("ParameterStatus application_name = %q", got)
	}
	for i := range 30 {
		// Hold the other servers in transactions now and then so the client moves.
		o := others[i%len(others)]
		if _, err := o.Exec(ctx, "select 1"); err != nil {
			t.Fatal(err)
		}
		var path, lock, app string
		if err := conn.QueryRow(ctx, "select current_setting('search_path'), current_setting('lock_timeout'), current_setting('application_name')").Scan(&path, &lock, &app); err != nil {
			t.Fatal(err)
		}
		if path != "pg_catalog, public" || lock != "0" || app != "moved" {
			t.Fatalf("transaction %d sees search_path=%q lock_timeout=%q application_name=%q", i, path, lock, app)
		}
		var otherPath string
		if err := o.QueryRow(ctx, "show search_path").Scan(&otherPath); err != nil {
			t.Fatal(err)
		}
		if otherPath != `"$user", public` {
			t.Fatalf("another client sees search_path %q", otherPath)
		}
	}
	if _, err := conn.Exec(ctx, "reset search_path"); err != nil {
		t.Fatal(err)
	}
	var path string
	if err := conn.QueryRow(ctx, "show search_path").Scan(&path); err != nil || path != `"$user", public` {
		t.Fatalf("after RESET: %q %v", path, err)
	}
}

// TestTxModeSchemaChange changes a prepared query's result type between two executions; the
// client, which describes the portal on every execution as libpq and lib/pq do, must get the
// new rows rather than 0A000.
func TestTxModeSchemaChange(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 1 })
	ctx := testCtx(t)
	admin := direct(t, c)
	if _, err := admin.Exec(ctx, "drop table if exists schema_change; create table schema_change (id int, v int); insert into schema_change values (1, 10)"); err != nil {
		t.Fatal(err)
	}
	conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	pc := conn.PgConn()
	if _, err := pc.Prepare(ctx, "sc", "select * from schema_change order by id", nil); err != nil {
		t.Fatal(err)
	}
	run := func() ([]string, [][]string, error) {
		rr := pc.ExecPrepared(ctx, "sc", nil, nil, nil)
		var rows [][]string
		for rr.NextRow() {
			var row []string
			for _, v := range rr.Values() {
				row = append(row, string(v))
			}
			rows = append(rows, row)
		}
		var cols []string
		for _, fd := range rr.FieldDescriptions() {
			cols = append(cols, fd.Name)
		}
		_, err := rr.Close()
		return cols, rows, err
	}
	cols, rows, err := run()
	if err != nil || len(cols) != 2 || len(rows) != 1 || rows[0][1] != "10" {
		t.Fatalf("before: %v %v %v", cols, rows, err)
	}
	if _, err := admin.Exec(ctx, "alter table schema_change add column note text default 'new'"); err != nil {
		t.Fatal(err)
	}
	cols, rows, err = run()
	if err != nil {
		t.Fatalf("after ALTER TABLE: %v", err)
	}
	if len(cols) != 3 || cols[2] != "note" || len(rows) != 1 || rows[0][2] != "new" {
		t.Fatalf("after ALTER TABLE: columns %v rows %v", cols, rows)
	}
}

func TestParamsKeyOf(t *testing.T) {
	sets := []map[string]string{
		nil,
		{"a": "1"},
		{"a": "1", "b": "2"},
		{"a": "12"},
		{"a1": "2"},
		{"a": "1", "b": ""},
		{"b": "1"},
	}
	seen := make(map[string]int)
	for i, m := range sets {
		k := paramsKeyOf(m)
		if j, dup := seen[k]; dup {
			t.Errorf("sets %v and %v have the same key %q", sets[j], m, k)
		}
		seen[k] = i
		if k2 := paramsKeyOf(maps.Clone(m)); k2 != k {
			t.Errorf("key of a copy of %v = %q, want %q", m, k2, k)
		}
	}
	if paramsKeyOf(map[string]string{}) != paramsKeyOf(nil) {
		t.Error("an empty set and nil have different keys")
	}
}
