package proxy

// Protocol coverage through the proxy with real clients (pgx in every QueryExecMode, lib/pq,
// psql, and a raw wire client), in both pool modes: typed parameters, multi-statement simple
// queries, extended-protocol pipelining and Flush, COPY, asynchronous messages, empty queries,
// large values, transaction-mode server affinity and cancel requests.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/md5"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgtype"
	_ "github.com/lib/pq"

	"github.com/pgsidecar/pgsidecar/config"
)

// poolModes are the pool modes most protocol tests run in.
var poolModes = []string{config.PoolModeTransaction, config.PoolModeSession}

func withPoolMode(mode string) func(*config.Config) {
	return func(cfg *config.Config) { cfg.PoolMode = mode }
}

// forEachPoolMode runs fn as one subtest per pool mode, each with its own proxy.
func forEachPoolMode(t *testing.T, fn func(t *testing.T, p *testProxy, mode string)) {
	t.Helper()
	c := cluster(t)
	for _, mode := range poolModes {
		t.Run(mode, func(t *testing.T) {
			fn(t, startProxy(t, c, withPoolMode(mode)), mode)
		})
	}
}

// connectWith opens a pgx connection through the proxy after letting tweak adjust its config.
func connectWith(t testing.TB, p *testProxy, mode pgx.QueryExecMode, tweak func(*pgx.ConnConfig)) *pgx.Conn {
	t.Helper()
	cc, err := pgx.ParseConfig(p.dsn("postgres", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	cc.DefaultQueryExecMode = mode
	if tweak != nil {
		tweak(cc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// serversInUse sums InUse over the proxy's pools.
func serversInUse(p *testProxy) int {
	n := 0
	for _, s := range p.pools.Stats() {
		n += s.InUse
	}
	return n
}

// waitServersReleased waits until no server connection is lent to a client. The relay returns a
// server just after forwarding its ReadyForQuery, so a client can see the reply a moment before
// the release; the wait is bounded.
func waitServersReleased(t testing.TB, p *testProxy) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := serversInUse(p)
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d server connection(s) still in use 5s after the clients went idle; stats %+v", n, p.pools.Stats())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func mustExec(t testing.TB, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(testCtx(t), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func queryInt(t testing.TB, conn *pgx.Conn, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := conn.QueryRow(testCtx(t), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func wantPgError(t testing.TB, err error, code string) *pgconn.PgError {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		t.Fatalf("got error %v, want SQLSTATE %s", err, code)
	}
	if pgErr.Code != code {
		t.Fatalf("got SQLSTATE %s (%s), want %s", pgErr.Code, pgErr.Message, code)
	}
	return pgErr
}

// --- 1. pgx in every QueryExecMode --------------------------------------------------------

var allExecModes = []pgx.QueryExecMode{
	pgx.QueryExecModeCacheStatement,
	pgx.QueryExecModeCacheDescribe,
	pgx.QueryExecModeDescribeExec,
	pgx.QueryExecModeExec,
	pgx.QueryExecModeSimpleProtocol,
}

// TestProtocolPgxExecModes round-trips parameters of many types in every pgx QueryExecMode in
// session mode, and in the modes that need no statement tracking in transaction mode.
func TestProtocolPgxExecModes(t *testing.T) {
	c := cluster(t)
	cases := []struct {
		pool  string
		modes []pgx.QueryExecMode
	}{
		{config.PoolModeSession, allExecModes},
		// The cached and describe modes keep statements across Syncs: issue 3.
		{config.PoolModeTransaction, []pgx.QueryExecMode{pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol}},
	}
	admin := direct(t, c)
	for _, pc := range cases {
		t.Run(pc.pool, func(t *testing.T) {
			p := startProxy(t, c, withPoolMode(pc.pool))
			for _, m := range pc.modes {
				t.Run(strings.ReplaceAll(m.String(), " ", "_"), func(t *testing.T) {
					conn := p.connect(t, m)
					// Three times: the cached modes prepare on the first run and reuse afterwards.
					for range 3 {
						checkTypedRoundTrip(t, conn)
					}
					table := "proto_pgx_" + pc.pool + "_" + strings.ReplaceAll(m.String(), " ", "_")
					checkInsertRoundTrip(t, conn, admin, table)
					if pc.pool == config.PoolModeTransaction {
						waitServersReleased(t, p)
					}
				})
			}
		})
	}
}

func checkTypedRoundTrip(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	ctx := testCtx(t)
	wantI64 := int64(-9007199254740993)
	wantText := "héllo 'wörld' \\ \"q\" ; -- not a comment\n\ttab $1"
	wantBin := make([]byte, 256)
	for i := range wantBin {
		wantBin[i] = byte(i)
	}
	wantTS := time.Date(2024, 2, 29, 23, 59, 58, 123456000, time.FixedZone("ist", 5*3600+30*60))
	const numText = "-12345678901234567890.0123456789"
	var wantNum pgtype.Numeric
	if err := wantNum.Scan(numText); err != nil {
		t.Fatal(err)
	}
	const jsonText = `{"a": 1, "b": [true, null, "s"], "c": {"d": "é"}}`
	wantJSON := map[string]any{"a": float64(1), "b": []any{true, nil, "s"}, "c": map[string]any{"d": "é"}}
	wantInts := []int32{1, -2, 2147483647}
	wantStrs := []string{"a", "b c", "", `q"uote`, "NULL", "{x}"}
	one, three := int32(1), int32(3)
	wantIntsNull := []*int32{&one, nil, &three}

	var (
		gotI64       int64
		gotText      string
		gotBin       []byte
		gotTS        time.Time
		gotNum       pgtype.Numeric
		gotJSON      map[string]any
		gotInts      []int32
		gotStrs      []string
		gotNullInt   *int32
		gotNullText  *string
		gotIntsNull  []*int32
		srvNumText   string
		srvTSOK      bool
		srvBinMD5    string
		srvTextBytes int
		srvJSONc     string
	)
	err := conn.QueryRow(ctx, `select $1::int8, $2::text, $3::bytea, $4::timestamptz, $5::numeric, $6::json,
		$7::int4[], $8::text[], $9::int4, $10::text, $11::int4[],
		$5::numeric::text, $4::timestamptz = '2024-02-29 18:29:58.123456+00', md5($3::bytea), octet_length($2::text),
		$6::json -> 'c' ->> 'd'`,
		wantI64, wantText, wantBin, wantTS, wantNum, jsonText, wantInts, wantStrs, nil, nil, wantIntsNull,
	).Scan(&gotI64, &gotText, &gotBin, &gotTS, &gotNum, &gotJSON, &gotInts, &gotStrs, &gotNullInt, &gotNullText, &gotIntsNull,
		&srvNumText, &srvTSOK, &srvBinMD5, &srvTextBytes, &srvJSONc)
	if err != nil {
		t.Fatal(err)
	}
	if gotI64 != wantI64 {
		t.Errorf("int8: got %d, want %d", gotI64, wantI64)
	}
	if gotText != wantText || srvTextBytes != len(wantText) {
		t.Errorf("text: got %q (%d bytes on the server), want %q (%d bytes)", gotText, srvTextBytes, wantText, len(wantText))
	}
	sum := md5.Sum(wantBin)
	if !bytes.Equal(gotBin, wantBin) || srvBinMD5 != hex.EncodeToString(sum[:]) {
		t.Errorf("bytea: got %x (server md5 %s), want %x (md5 %x)", gotBin, srvBinMD5, wantBin, sum)
	}
	if !gotTS.Equal(wantTS) || !srvTSOK {
		t.Errorf("timestamptz: got %v (server saw the right instant: %v), want %v", gotTS, srvTSOK, wantTS)
	}
	gotNumVal, _ := gotNum.Value()
	if gotNumVal != numText || srvNumText != numText {
		t.Errorf("numeric: got %v (server %q), want %s", gotNumVal, srvNumText, numText)
	}
	if !reflect.DeepEqual(gotJSON, wantJSON) || srvJSONc != "é" {
		t.Errorf("json: got %#v (server ->c->>d %q), want %#v", gotJSON, srvJSONc, wantJSON)
	}
	if !reflect.DeepEqual(gotInts, wantInts) {
		t.Errorf("int4[]: got %v, want %v", gotInts, wantInts)
	}
	if !reflect.DeepEqual(gotStrs, wantStrs) {
		t.Errorf("text[]: got %q, want %q", gotStrs, wantStrs)
	}
	if gotNullInt != nil || gotNullText != nil {
		t.Errorf("NULLs: got %v %v, want nil nil", gotNullInt, gotNullText)
	}
	if len(gotIntsNull) != 3 || gotIntsNull[0] == nil || *gotIntsNull[0] != 1 || gotIntsNull[1] != nil || gotIntsNull[2] == nil || *gotIntsNull[2] != 3 {
		t.Errorf("int4[] with NULL: got %v, want [1 NULL 3]", gotIntsNull)
	}

	// A parameterised multi-row result.
	rows, err := conn.Query(ctx, `select g, g * $1::int8, repeat(chr(64 + g), g) from generate_series(1, $2::int4) g`, int64(7), int32(20))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		n++
		var g int32
		var prod int64
		var s string
		if err := rows.Scan(&g, &prod, &s); err != nil {
			t.Fatal(err)
		}
		if int(g) != n || prod != int64(7*n) || s != strings.Repeat(string(rune(64+n)), n) {
			t.Fatalf("row %d: got %d %d %q", n, g, prod, s)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n != 20 {
		t.Fatalf("got %d rows, want 20", n)
	}
}

// checkInsertRoundTrip inserts rows with parameters through conn and reads them back directly.
func checkInsertRoundTrip(t *testing.T, conn *pgx.Conn, admin *pgx.Conn, table string) {
	t.Helper()
	ctx := testCtx(t)
	mustExec(t, admin, fmt.Sprintf(`drop table if exists %s; create table %s (id int8 primary key, t text, b bytea, n numeric)`, table, table))
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "drop table if exists "+table) })
	for i := range 5 {
		var num pgtype.Numeric
		if err := num.Scan(fmt.Sprintf("%d.25", i)); err != nil {
			t.Fatal(err)
		}
		var text any = fmt.Sprintf("row '%d'", i)
		if i == 3 {
			text = nil
		}
		tag, err := conn.Exec(ctx, fmt.Sprintf(`insert into %s (id, t, b, n) values ($1, $2, $3, $4)`, table), int64(i), text, []byte{byte(i), 0, 0xff}, num)
		if err != nil {
			t.Fatal(err)
		}
		if tag.String() != "INSERT 0 1" {
			t.Fatalf("insert: command tag %q", tag)
		}
	}
	rows, err := admin.Query(ctx, fmt.Sprintf(`select id, coalesce(t, '<null>'), b, n::text from %s order by id`, table))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var id int64
		var text, num string
		var b []byte
		if err := rows.Scan(&id, &text, &b, &num); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%d|%s|%x|%s", id, text, b, num))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := []string{"0|row '0'|0000ff|0.25", "1|row '1'|0100ff|1.25", "2|row '2'|0200ff|2.25", "3|<null>|0300ff|3.25", "4|row '4'|0400ff|4.25"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("rows inserted through the proxy:\n got %q\nwant %q", got, want)
	}
}

// --- 2. lib/pq ----------------------------------------------------------------------------

func openLibpq(t testing.TB, p *testProxy) *sql.DB {
	t.Helper()
	db, err := sql.Open("postgres", p.dsn("postgres", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func TestProtocolLibpq(t *testing.T) {
	forEachPoolMode(t, func(t *testing.T, p *testProxy, mode string) {
		ctx := testCtx(t)
		admin := direct(t, cluster(t))
		table := "proto_libpq_" + mode
		db := openLibpq(t, p)
		db.SetMaxOpenConns(2)

		// Exec without parameters (simple protocol) and with (extended protocol).
		if _, err := db.ExecContext(ctx, fmt.Sprintf(`drop table if exists %s; create table %s (id int primary key, name text)`, table, table)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "drop table if exists "+table) })
		res, err := db.ExecContext(ctx, fmt.Sprintf(`insert into %s values ($1, $2), ($3, $4)`, table), 1, "one", 2, "two")
		if err != nil {
			t.Fatal(err)
		}
		if n, err := res.RowsAffected(); err != nil || n != 2 {
			t.Fatalf("insert: rows affected %d, %v; want 2", n, err)
		}

		// Query with parameters of several types.
		ts := time.Date(2001, 2, 3, 4, 5, 6, 789000000, time.UTC)
		var (
			n    int
			s    string
			b    []byte
			gotT time.Time
			num  string
			null sql.NullInt64
		)
		err = db.QueryRowContext(ctx, `select $1::int + 1, $2::text || '!', $3::bytea, $4::timestamptz, $5::numeric * 2, $6::int8`,
			41, "héllo", []byte{0, 1, 0xfe, 0xff}, ts, "1.25", nil).Scan(&n, &s, &b, &gotT, &num, &null)
		if err != nil {
			t.Fatal(err)
		}
		if n != 42 || s != "héllo!" || !bytes.Equal(b, []byte{0, 1, 0xfe, 0xff}) || !gotT.Equal(ts) || num != "2.50" || null.Valid {
			t.Fatalf("lib/pq round trip: got %d %q %x %v %s %v", n, s, b, gotT, num, null)
		}
		rows, err := db.QueryContext(ctx, fmt.Sprintf(`select id, name from %s where id >= $1 order by id`, table), 1)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for rows.Next() {
			var id int
			var name string
			if err := rows.Scan(&id, &name); err != nil {
				t.Fatal(err)
			}
			got = append(got, fmt.Sprintf("%d:%s", id, name))
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, []string{"1:one", "2:two"}) {
			t.Fatalf("query: got %q", got)
		}

		// A transaction that commits.
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf(`insert into %s values ($1, $2)`, table), 3, "three"); err != nil {
			t.Fatal(err)
		}
		var inside int
		if err := tx.QueryRowContext(ctx, fmt.Sprintf(`select count(*) from %s where id > $1`, table), 0).Scan(&inside); err != nil {
			t.Fatal(err)
		}
		if inside != 3 {
			t.Fatalf("inside the transaction: %d rows, want 3", inside)
		}
		if got := queryInt(t, admin, "select count(*) from "+table); got != 2 {
			t.Fatalf("before commit another session sees %d rows, want 2", got)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if got := queryInt(t, admin, "select count(*) from "+table); got != 3 {
			t.Fatalf("after commit: %d rows, want 3", got)
		}

		// A transaction that rolls back.
		tx, err = db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf(`insert into %s values ($1, $2)`, table), 4, "four"); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf(`update %s set name = $1 where id = $2`, table), "ONE", 1); err != nil {
			t.Fatal(err)
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		var names string
		if err := db.QueryRowContext(ctx, fmt.Sprintf(`select string_agg(id || ':' || name, ',' order by id) from %s`, table)).Scan(&names); err != nil {
			t.Fatal(err)
		}
		if names != "1:one,2:two,3:three" {
			t.Fatalf("after rollback: %q, want 1:one,2:two,3:three", names)
		}
		if mode == config.PoolModeTransaction {
			_ = db.Close()
			waitServersReleased(t, p)
		}
	})
}

// TestProtocolLibpqConcurrentTransactionMode runs lib/pq clients concurrently over a small pool
// in transaction mode. By default lib/pq runs a query with parameters as two requests: Parse of
// the unnamed statement + Describe + Sync, then, after that ReadyForQuery, Bind + Execute +
// Sync. Each client's query text differs, so a Bind that reaches a server holding another
// client's unnamed statement (or none) shows up as a wrong value or an error. With
// binary_parameters=yes lib/pq sends Parse, Bind and Execute before one Sync.
//
// The "default" subtest fails while the proxy releases the server between the two requests
// (see the report of the test's author; statement tracking is issue 3).
func TestProtocolLibpqConcurrentTransactionMode(t *testing.T) {
	c := cluster(t)
	for _, tc := range []struct{ name, params string }{
		{"default", ""},
		{"binary_parameters", "&binary_parameters=yes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 2 })
			ctx := testCtx(t)
			const clients, queries = 12, 40
			var mu sync.Mutex
			var failures []string
			var wg sync.WaitGroup
			for i := range clients {
				wg.Go(func() {
					db, err := sql.Open("postgres", p.dsn("postgres", "postgres")+tc.params)
					if err != nil {
						mu.Lock()
						failures = append(failures, err.Error())
						mu.Unlock()
						return
					}
					defer db.Close()
					db.SetMaxOpenConns(1)
					q := fmt.Sprintf(`select $1::int8 * 1000 + %d`, i)
					for k := range queries {
						var got int64
						err := db.QueryRowContext(ctx, q, k).Scan(&got)
						if want := int64(k*1000 + i); err != nil || got != want {
							mu.Lock()
							failures = append(failures, fmt.Sprintf("client %d query %d: got %d, err %v; want %d", i, k, got, err, want))
							mu.Unlock()
						}
					}
				})
			}
			wg.Wait()
			if len(failures) > 0 {
				t.Errorf("%d of %d lib/pq queries with parameters failed or returned another client's result; first ones:\n%s",
					len(failures), clients*queries, strings.Join(failures[:min(len(failures), 8)], "\n"))
			}
			waitServersReleased(t, p)
		})
	}
}

// --- 3. psql ------------------------------------------------------------------------------

// psqlPath finds psql next to the cluster's binaries, else on PATH.
func psqlPath(t testing.TB) string {
	t.Helper()
	return clientBinPath(t, "psql")
}

// clientBinPath finds a PostgreSQL client program next to the cluster's binaries, else on PATH.
func clientBinPath(t testing.TB, name string) string {
	t.Helper()
	if path := filepath.Join(cluster(t).BinDir(), name); fileExists(path) {
		return path
	}
	path, err := exec.LookPath(name)
	if err != nil {
		t.Skip(name + " not found")
	}
	return path
}

func fileExists(path string) bool {
	st, err := os.Stat(path)
	return err == nil && !st.IsDir()
}

// runPsql runs psql with args and a clean libpq environment, and returns its stdout.
func runPsql(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, psqlPath(t), args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("psql %q: %v\nstdout: %s\nstderr: %s", args, err, stdout.String(), stderr.String())
	}
	if stderr.Len() > 0 {
		t.Errorf("psql wrote to stderr: %s", stderr.String())
	}
	return stdout.String()
}

func TestProtocolPsql(t *testing.T) {
	forEachPoolMode(t, func(t *testing.T, p *testProxy, mode string) {
		dsn := p.dsn("postgres", "postgres")
		if out := runPsql(t, "-X", "-A", "-t", "-d", dsn, "-c", "select 1; select 'two'"); out != "1\ntwo\n" {
			t.Fatalf("psql -c: got %q, want %q", out, "1\ntwo\n")
		}

		table := "proto_psql_" + mode
		var rows strings.Builder
		want := 0
		for i := 1; i <= 500; i++ {
			fmt.Fprintf(&rows, "%d\tname %d\t\\N\n", i, i)
			want += i
		}
		admin := direct(t, cluster(t))
		mustExec(t, admin, "drop table if exists "+table)
		t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "drop table if exists "+table) })
		script := fmt.Sprintf(`create table %[1]s (id int, name text, note text);
\copy %[1]s from stdin
%[2]s\.
select count(*), sum(id), count(note), min(name), max(name) from %[1]s;
begin;
insert into %[1]s values (0, 'zero', 'x');
select count(*) from %[1]s;
rollback;
select count(*) from %[1]s;
drop table %[1]s;
`, table, rows.String())
		path := filepath.Join(t.TempDir(), "copy.sql")
		if err := os.WriteFile(path, []byte(script), 0o600); err != nil {
			t.Fatal(err)
		}
		out := runPsql(t, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f", path)
		wantOut := fmt.Sprintf("500|%d|0|name 1|name 99\n501\n500\n", want)
		if out != wantOut {
			t.Fatalf("psql -f: got %q, want %q", out, wantOut)
		}
		if mode == config.PoolModeTransaction {
			waitServersReleased(t, p)
		}
	})
}

// --- 4. multi-statement simple queries ----------------------------------------------------

func TestProtocolMultiStatementQuery(t *testing.T) {
	forEachPoolMode(t, func(t *testing.T, p *testProxy, mode string) {
		ctx := testCtx(t)
		conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
		pc := conn.PgConn()

		results, err := pc.Exec(ctx, "select 1; select 2 as two, 'b'; select 3 from generate_series(1, 3)").ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range results {
			if r.Err != nil {
				t.Fatal(r.Err)
			}
			var vals []string
			for _, row := range r.Rows {
				for _, v := range row {
					vals = append(vals, string(v))
				}
			}
			got = append(got, fmt.Sprintf("%s:%s", r.CommandTag, strings.Join(vals, ",")))
		}
		want := []string{"SELECT 1:1", "SELECT 1:2,b", "SELECT 3:3,3,3"}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("results: got %q, want %q", got, want)
		}
		if len(results[1].FieldDescriptions) != 2 || results[1].FieldDescriptions[0].Name != "two" {
			t.Fatalf("second result's columns: %+v", results[1].FieldDescriptions)
		}

		// An error in the middle: the first statement is committed by the explicit COMMIT, the
		// second is rolled back with the failing one, and the last never runs.
		table := "proto_multi_" + mode
		if _, err := pc.Exec(ctx, fmt.Sprintf("drop table if exists %s; create table %s (v int)", table, table)).ReadAll(); err != nil {
			t.Fatal(err)
		}
		results, err = pc.Exec(ctx, fmt.Sprintf(
			"insert into %[1]s values (1); commit; insert into %[1]s values (2); select 1/0; insert into %[1]s values (3); select 'not reached'", table)).ReadAll()
		wantPgError(t, err, "22012")
		var tags []string
		for _, r := range results {
			tags = append(tags, r.CommandTag.String())
		}
		if !reflect.DeepEqual(tags[:3], []string{"INSERT 0 1", "COMMIT", "INSERT 0 1"}) || len(tags) > 4 {
			t.Fatalf("results before the error: %q", tags)
		}
		if pc.TxStatus() != 'I' {
			t.Fatalf("transaction status after the failed query: %q, want I", pc.TxStatus())
		}
		var vals string
		if err := conn.QueryRow(ctx, fmt.Sprintf("select coalesce(string_agg(v::text, ',' order by v), '') from %s", table)).Scan(&vals); err != nil {
			t.Fatal(err)
		}
		if vals != "1" {
			t.Fatalf("rows after the failed multi-statement query: %q, want \"1\"", vals)
		}
		if _, err := pc.Exec(ctx, "drop table "+table).ReadAll(); err != nil {
			t.Fatal(err)
		}
		if mode == config.PoolModeTransaction {
			waitServersReleased(t, p)
		}
	})
}

// --- 5. extended-protocol pipelining ------------------------------------------------------

func textArgs(vals ...int) [][]byte {
	out := make([][]byte, len(vals))
	for i, v := range vals {
		out[i] = []byte(strconv.Itoa(v))
	}
	return out
}

// pipeResult reads the next pipeline result, which must be a query's, as "tag:v,v,...".
func pipeResult(t testing.TB, pl *pgconn.Pipeline) string {
	t.Helper()
	res, err := pl.GetResults()
	if err != nil {
		t.Fatal(err)
	}
	rr, ok := res.(*pgconn.ResultReader)
	if !ok {
		t.Fatalf("got %T, want *pgconn.ResultReader", res)
	}
	r := rr.Read()
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	var vals []string
	for _, row := range r.Rows {
		for _, v := range row {
			vals = append(vals, string(v))
		}
	}
	return r.CommandTag.String() + ":" + strings.Join(vals, ",")
}

func wantPipelineSync(t testing.TB, pl *pgconn.Pipeline) {
	t.Helper()
	res, err := pl.GetResults()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := res.(*pgconn.PipelineSync); !ok {
		t.Fatalf("got %T, want *pgconn.PipelineSync", res)
	}
}

func TestProtocolPipeline(t *testing.T) {
	forEachPoolMode(t, func(t *testing.T, p *testProxy, mode string) {
		ctx := testCtx(t)
		conn := p.connect(t, pgx.QueryExecModeExec)
		pc := conn.PgConn()
		table := "proto_pipe_" + mode
		mustExec(t, conn, fmt.Sprintf("drop table if exists %s; create table %s (v int)", table, table))
		t.Cleanup(func() { _, _ = direct(t, cluster(t)).Exec(context.Background(), "drop table if exists "+table) })
		stmt := "proto_pipe_stmt_" + mode

		// Many requests before one Sync; the named statement is closed in the same batch so
		// that nothing stays on a transaction-mode server.
		pl := pc.StartPipeline(ctx)
		pl.SendPrepare(stmt, "select $1::int4 * 10, $2::text", nil)
		for i := range 20 {
			pl.SendQueryParams("select $1::int4 + 1000", textArgs(i), nil, nil, nil)
		}
		for i := range 5 {
			pl.SendQueryPrepared(stmt, [][]byte{[]byte(strconv.Itoa(i)), []byte("s" + strconv.Itoa(i))}, nil, nil)
		}
		pl.SendQueryParams(fmt.Sprintf("insert into %s select generate_series(1, $1::int4)", table), textArgs(10), nil, nil, nil)
		pl.SendDeallocate(stmt)
		if err := pl.Sync(); err != nil {
			t.Fatal(err)
		}
		res, err := pl.GetResults()
		if err != nil {
			t.Fatal(err)
		}
		sd, ok := res.(*pgconn.StatementDescription)
		if !ok || !reflect.DeepEqual(sd.ParamOIDs, []uint32{23, 25}) || len(sd.Fields) != 2 {
			t.Fatalf("prepare result: %T %+v", res, res)
		}
		for i := range 20 {
			if got, want := pipeResult(t, pl), fmt.Sprintf("SELECT 1:%d", i+1000); got != want {
				t.Fatalf("query %d: got %q, want %q", i, got, want)
			}
		}
		for i := range 5 {
			if got, want := pipeResult(t, pl), fmt.Sprintf("SELECT 1:%d,s%d", i*10, i); got != want {
				t.Fatalf("prepared query %d: got %q, want %q", i, got, want)
			}
		}
		if got := pipeResult(t, pl); got != "INSERT 0 10:" {
			t.Fatalf("insert: got %q", got)
		}
		if res, err := pl.GetResults(); err != nil {
			t.Fatal(err)
		} else if _, ok := res.(*pgconn.CloseComplete); !ok {
			t.Fatalf("deallocate: got %T", res)
		}
		wantPipelineSync(t, pl)
		if err := pl.Close(); err != nil {
			t.Fatal(err)
		}
		if n := queryInt(t, conn, "select sum(v) from "+table); n != 55 {
			t.Fatalf("sum after the pipelined insert: %d, want 55", n)
		}

		// Two Syncs in one write: the second group uses a statement prepared by the first, so
		// both must reach the same server.
		pl = pc.StartPipeline(ctx)
		pl.SendPrepare(stmt, "select $1::int4 * 3", nil)
		pl.SendPipelineSync()
		pl.SendQueryPrepared(stmt, textArgs(14), nil, nil)
		pl.SendDeallocate(stmt)
		if err := pl.Sync(); err != nil {
			t.Fatal(err)
		}
		if res, err := pl.GetResults(); err != nil {
			t.Fatal(err)
		} else if _, ok := res.(*pgconn.StatementDescription); !ok {
			t.Fatalf("prepare: got %T", res)
		}
		wantPipelineSync(t, pl)
		if got := pipeResult(t, pl); got != "SELECT 1:42" {
			t.Fatalf("statement prepared before the first Sync, run after it: got %q", got)
		}
		if _, err := pl.GetResults(); err != nil {
			t.Fatal(err)
		}
		wantPipelineSync(t, pl)
		if err := pl.Close(); err != nil {
			t.Fatal(err)
		}

		// An error in the 3rd of 5 queries: the rest is skipped until Sync, the implicit
		// transaction rolls back, and the group after the Sync runs normally.
		mustExec(t, conn, "truncate "+table)
		pl = pc.StartPipeline(ctx)
		pl.SendQueryParams(fmt.Sprintf("insert into %s values ($1)", table), textArgs(1), nil, nil, nil)
		pl.SendQueryParams("select $1::int4 * 2", textArgs(1), nil, nil, nil)
		pl.SendQueryParams("select 1 / $1::int4", textArgs(0), nil, nil, nil)
		pl.SendQueryParams(fmt.Sprintf("insert into %s values ($1)", table), textArgs(4), nil, nil, nil)
		pl.SendQueryParams("select $1::int4 * 5", textArgs(1), nil, nil, nil)
		pl.SendPipelineSync()
		pl.SendQueryParams(fmt.Sprintf("insert into %s values ($1)", table), textArgs(6), nil, nil, nil)
		pl.SendQueryParams("select 'after'", nil, nil, nil, nil)
		if err := pl.Sync(); err != nil {
			t.Fatal(err)
		}
		if got := pipeResult(t, pl); got != "INSERT 0 1:" {
			t.Fatalf("query 1: got %q", got)
		}
		if got := pipeResult(t, pl); got != "SELECT 1:2" {
			t.Fatalf("query 2: got %q", got)
		}
		res, err = pl.GetResults()
		if res != nil {
			t.Fatalf("query 3: got %T, want an error", res)
		}
		wantPgError(t, err, "22012")
		// Queries 4 and 5 are skipped: the next result is the Sync.
		wantPipelineSync(t, pl)
		if got := pipeResult(t, pl); got != "INSERT 0 1:" {
			t.Fatalf("query after the Sync: got %q", got)
		}
		if got := pipeResult(t, pl); got != "SELECT 1:after" {
			t.Fatalf("query after the Sync: got %q", got)
		}
		wantPipelineSync(t, pl)
		if err := pl.Close(); err != nil {
			t.Fatal(err)
		}
		var vals string
		if err := conn.QueryRow(ctx, fmt.Sprintf("select coalesce(string_agg(v::text, ',' order by v), '') from %s", table)).Scan(&vals); err != nil {
			t.Fatal(err)
		}
		if vals != "6" {
			t.Fatalf("rows after the failed pipeline: %q, want \"6\" (1 rolled back, 4 skipped)", vals)
		}
		if n := queryInt(t, conn, "select $1::int8 + 1", int64(41)); n != 42 {
			t.Fatalf("connection after the pipeline: got %d", n)
		}
		if mode == config.PoolModeTransaction {
			waitServersReleased(t, p)
		}
	})
}

// --- raw wire client ----------------------------------------------------------------------

// rawClient speaks the protocol by hand, to send exactly the messages a test needs and see
// exactly what comes back.
type rawClient struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
	pid  uint32
	key  []byte
}

func rawConnect(t testing.TB, p *testProxy) *rawClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", p.addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	rc := &rawClient{t: t, conn: conn, r: bufio.NewReaderSize(conn, 64<<10)}
	rc.send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "postgres", "database": "postgres"}})
	for {
		typ, body := rc.recv()
		switch typ {
		case 'R':
			if len(body) != 4 || binary.BigEndian.Uint32(body) != 0 {
				t.Fatalf("authentication request %x, want AuthenticationOk", body)
			}
		case 'K':
			var m pgproto3.BackendKeyData
			if err := m.Decode(body); err != nil {
				t.Fatal(err)
			}
			rc.pid, rc.key = m.ProcessID, bytes.Clone(m.SecretKey)
		case 'S':
		case 'Z':
			return rc
		default:
			t.Fatalf("unexpected message %q during startup: %s", typ, describeMsg(typ, body))
		}
	}
}

func (rc *rawClient) send(msgs ...interface{ Encode([]byte) ([]byte, error) }) {
	rc.t.Helper()
	var buf []byte
	for _, m := range msgs {
		var err error
		if buf, err = m.Encode(buf); err != nil {
			rc.t.Fatal(err)
		}
	}
	_ = rc.conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if _, err := rc.conn.Write(buf); err != nil {
		rc.t.Fatal(err)
	}
}

// header reads the next message header within timeout.
func (rc *rawClient) header(timeout time.Duration) (byte, int) {
	rc.t.Helper()
	_ = rc.conn.SetReadDeadline(time.Now().Add(timeout))
	var hdr [5]byte
	if _, err := io.ReadFull(rc.r, hdr[:]); err != nil {
		rc.t.Fatalf("read message header: %v", err)
	}
	n := int(binary.BigEndian.Uint32(hdr[1:]))
	if n < 4 {
		rc.t.Fatalf("message %q with length %d", hdr[0], n)
	}
	return hdr[0], n - 4
}

// recv reads one message of at most 1 MiB; no answer within 10 s fails the test.
func (rc *rawClient) recv() (byte, []byte) {
	rc.t.Helper()
	typ, n := rc.header(10 * time.Second)
	if n > 1<<20 {
		rc.t.Fatalf("message %q of %d bytes is too big for recv", typ, n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(rc.r, body); err != nil {
		rc.t.Fatalf("read message body: %v", err)
	}
	return typ, body
}

// expect reads len(types) messages and checks their types in order.
func (rc *rawClient) expect(types string) [][]byte {
	rc.t.Helper()
	bodies := make([][]byte, 0, len(types))
	for i := range len(types) {
		typ, body := rc.recv()
		if typ != types[i] {
			rc.t.Fatalf("message %d: got %q (%s), want %q (sequence %q)", i, typ, describeMsg(typ, body), types[i], types)
		}
		bodies = append(bodies, body)
	}
	return bodies
}

// nothingPending checks that the server sends nothing more for a while.
func (rc *rawClient) nothingPending(wait time.Duration) {
	rc.t.Helper()
	_ = rc.conn.SetReadDeadline(time.Now().Add(wait))
	if _, err := rc.r.Peek(1); err == nil {
		typ, body := rc.recv()
		rc.t.Fatalf("unexpected message %q: %s", typ, describeMsg(typ, body))
	} else if !errors.Is(err, os.ErrDeadlineExceeded) {
		rc.t.Fatalf("connection failed while idle: %v", err)
	}
}

func describeMsg(typ byte, body []byte) string {
	if typ == 'E' || typ == 'N' {
		var m pgproto3.ErrorResponse
		if err := m.Decode(body); err == nil {
			return fmt.Sprintf("%s %s: %s", m.Severity, m.Code, m.Message)
		}
	}
	if len(body) > 64 {
		body = body[:64]
	}
	return fmt.Sprintf("%q", body)
}

// --- 6. Flush without Sync ----------------------------------------------------------------

func TestProtocolFlushWithoutSync(t *testing.T) {
	c := cluster(t)
	for _, mode := range poolModes {
		t.Run(mode, func(t *testing.T) {
			p := startProxy(t, c, func(cfg *config.Config) {
				cfg.PoolMode = mode
				cfg.PoolSize = 2
				if mode == config.PoolModeSession {
					cfg.PoolSize = 3 // one server per client
				}
			})
			ctx := testCtx(t)
			// other uses the unnamed statement too (QueryExecModeExec); were the raw client's
			// server released between Flush and Sync, other would be handed the same server
			// (most recently used first) and replace the statement the raw client binds.
			other := p.connect(t, pgx.QueryExecModeExec)

			rc := rawConnect(t, p)
			rc.send(&pgproto3.Parse{Query: "select $1::int4 + 1 as n, 'raw'::text as tag"}, &pgproto3.Describe{ObjectType: 'S'}, &pgproto3.Flush{})
			bodies := rc.expect("1tT")
			var pd pgproto3.ParameterDescription
			if err := pd.Decode(bodies[1]); err != nil || !reflect.DeepEqual(pd.ParameterOIDs, []uint32{23}) {
				t.Fatalf("ParameterDescription %+v, %v; want [23]", pd.ParameterOIDs, err)
			}
			var rd pgproto3.RowDescription
			if err := rd.Decode(bodies[2]); err != nil || len(rd.Fields) != 2 || string(rd.Fields[0].Name) != "n" || string(rd.Fields[1].Name) != "tag" {
				t.Fatalf("RowDescription %+v, %v", rd.Fields, err)
			}
			rc.nothingPending(50 * time.Millisecond)
			if mode == config.PoolModeTransaction {
				if n := serversInUse(p); n != 1 {
					t.Fatalf("between Flush and Sync %d servers are in use, want 1 (held for the raw client)", n)
				}
			}
			for i := range 3 {
				var s string
				if err := other.QueryRow(ctx, "select $1::text || 'other'", strconv.Itoa(i)).Scan(&s); err != nil || s != strconv.Itoa(i)+"other" {
					t.Fatalf("other client: %q, %v", s, err)
				}
			}

			rc.send(&pgproto3.Bind{Parameters: [][]byte{[]byte("41")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
			bodies = rc.expect("2DCZ")
			var dr pgproto3.DataRow
			if err := dr.Decode(bodies[1]); err != nil || len(dr.Values) != 2 || string(dr.Values[0]) != "42" || string(dr.Values[1]) != "raw" {
				t.Fatalf("DataRow %q, %v; want [42 raw]", dr.Values, err)
			}
			if string(bodies[2]) != "SELECT 1\x00" || string(bodies[3]) != "I" {
				t.Fatalf("CommandComplete %q, ReadyForQuery %q", bodies[2], bodies[3])
			}

			// The same through pgconn's pipeline: Prepare + Flush, results, then run + Sync.
			conn := p.connect(t, pgx.QueryExecModeExec)
			pl := conn.PgConn().StartPipeline(ctx)
			pl.SendPrepare("", "select $1::int4 * 2 as doubled", nil)
			pl.SendFlushRequest()
			if err := pl.Flush(); err != nil {
				t.Fatal(err)
			}
			res, err := pl.GetResults()
			if err != nil {
				t.Fatal(err)
			}
			sd, ok := res.(*pgconn.StatementDescription)
			if !ok || len(sd.Fields) != 1 || sd.Fields[0].Name != "doubled" || !reflect.DeepEqual(sd.ParamOIDs, []uint32{23}) {
				t.Fatalf("prepare before Sync: %T %+v", res, res)
			}
			for range 3 {
				if n := queryInt(t, other, "select $1::int8 * 100", int64(5)); n != 500 {
					t.Fatalf("other client: %d", n)
				}
			}
			pl.SendQueryPrepared("", textArgs(21), nil, nil)
			if err := pl.Sync(); err != nil {
				t.Fatal(err)
			}
			if got := pipeResult(t, pl); got != "SELECT 1:42" {
				t.Fatalf("run after Sync: got %q", got)
			}
			wantPipelineSync(t, pl)
			if err := pl.Close(); err != nil {
				t.Fatal(err)
			}
			if mode == config.PoolModeTransaction {
				waitServersReleased(t, p)
			}
		})
	}
}

// TestProtocolLoneFlushTakesNoServer sends Flush while no request is in flight in transaction
// mode. PostgreSQL has nothing to flush and answers nothing, so no server should be taken for
// it, let alone held until the client's next Sync.
func TestProtocolLoneFlushTakesNoServer(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.PoolSize = 1
		cfg.QueryWaitTimeout = 3 * time.Second
	})
	rc := rawConnect(t, p)
	rc.send(&pgproto3.Query{String: "select 1"})
	rc.expect("TDCZ")
	waitServersReleased(t, p)
	rc.send(&pgproto3.Flush{})
	rc.nothingPending(100 * time.Millisecond)
	other := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	if n := queryInt(t, other, "select 2"); n != 2 {
		t.Fatalf("another client: %d", n)
	}
	waitServersReleased(t, p)
	rc.send(&pgproto3.Query{String: "select 3"})
	bodies := rc.expect("TDCZ")
	var dr pgproto3.DataRow
	if err := dr.Decode(bodies[1]); err != nil || len(dr.Values) != 1 || string(dr.Values[0]) != "3" {
		t.Fatalf("after the Flush: %q, %v", dr.Values, err)
	}
	waitServersReleased(t, p)
}

// --- 7. COPY ------------------------------------------------------------------------------

// failingReader yields data and then err.
type failingReader struct {
	data []byte
	err  error
}

func (r *failingReader) Read(b []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(b, r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestProtocolCopy(t *testing.T) {
	forEachPoolMode(t, func(t *testing.T, p *testProxy, mode string) {
		ctx := testCtx(t)
		conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
		pc := conn.PgConn()
		table := "proto_copy_" + mode
		mustExec(t, conn, fmt.Sprintf("drop table if exists %s; create table %s (id int, name text, note text)", table, table))
		t.Cleanup(func() { _, _ = direct(t, cluster(t)).Exec(context.Background(), "drop table if exists "+table) })

		const n = 100_000
		var src bytes.Buffer
		for i := 1; i <= n; i++ {
			note := `\N`
			if i%7 == 0 {
				note = `tab\there, back\\slash`
			}
			fmt.Fprintf(&src, "%d\tname-%d\t%s\n", i, i, note)
		}
		want := src.Bytes()
		tag, err := pc.CopyFrom(ctx, bytes.NewReader(want), fmt.Sprintf("copy %s from stdin", table))
		if err != nil {
			t.Fatal(err)
		}
		if tag.RowsAffected() != n {
			t.Fatalf("COPY FROM: %q, want %d rows", tag, n)
		}
		var count, sum, notes int64
		if err := conn.QueryRow(ctx, fmt.Sprintf("select count(*), sum(id), count(note) from %s", table)).Scan(&count, &sum, &notes); err != nil {
			t.Fatal(err)
		}
		if count != n || sum != n*(n+1)/2 || notes != n/7 {
			t.Fatalf("after COPY FROM: count %d sum %d notes %d", count, sum, notes)
		}

		var out bytes.Buffer
		tag, err = pc.CopyTo(ctx, &out, fmt.Sprintf("copy (select * from %s order by id) to stdout", table))
		if err != nil {
			t.Fatal(err)
		}
		if tag.RowsAffected() != n {
			t.Fatalf("COPY TO: %q, want %d rows", tag, n)
		}
		if crc32.Checksum(out.Bytes(), crcTable) != crc32.Checksum(want, crcTable) || out.Len() != len(want) {
			t.Fatalf("COPY TO returned %d bytes (crc %08x), want the %d bytes copied in (crc %08x)",
				out.Len(), crc32.Checksum(out.Bytes(), crcTable), len(want), crc32.Checksum(want, crcTable))
		}

		// COPY aborted by the client (CopyFail) after some data: nothing is inserted.
		mustExec(t, conn, "truncate "+table)
		_, err = pc.CopyFrom(ctx, &failingReader{data: want[:len(want)/2], err: errors.New("client gave up")}, fmt.Sprintf("copy %s from stdin", table))
		pgErr := wantPgError(t, err, "57014")
		if !strings.Contains(pgErr.Message, "client gave up") {
			t.Errorf("CopyFail error message %q does not carry the client's reason", pgErr.Message)
		}
		if got := queryInt(t, conn, "select count(*) from "+table); got != 0 {
			t.Fatalf("after CopyFail: %d rows, want 0", got)
		}

		// COPY with bad data in the middle: the server fails it, nothing is inserted. (A failure
		// while the client is still sending is TestProtocolCopyErrorLateCopyDone.)
		mid := len(want)/2 + bytes.IndexByte(want[len(want)/2:], '\n') + 1
		bad := append(bytes.Clone(want[:mid]), "notanumber\tx\t\\N\n"...)
		bad = append(bad, want[mid:]...)
		_, err = pc.CopyFrom(ctx, bytes.NewReader(bad), fmt.Sprintf("copy %s from stdin", table))
		wantPgError(t, err, "22P02")
		if mode == config.PoolModeTransaction {
			waitServersReleased(t, p)
		}
		if got := queryInt(t, conn, "select count(*) from "+table); got != 0 {
			t.Fatalf("after a failed COPY: %d rows, want 0", got)
		}
		if got := queryInt(t, conn, "select $1::int8 * 2", int64(21)); got != 42 {
			t.Fatalf("connection after failed COPYs: got %d", got)
		}
		// And COPY still works afterwards.
		tag, err = pc.CopyFrom(ctx, strings.NewReader("1\ta\t\\N\n2\tb\t\\N\n"), fmt.Sprintf("copy %s from stdin", table))
		if err != nil || tag.RowsAffected() != 2 {
			t.Fatalf("COPY after failures: %q, %v", tag, err)
		}
		if mode == config.PoolModeTransaction {
			waitServersReleased(t, p)
		}
	})
}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// TestProtocolCopyErrorLateCopyDone is a COPY FROM STDIN that the server fails while the client
// is still sending: the server answers ErrorResponse + ReadyForQuery 'I' at once and ignores
// the CopyData and CopyDone the client sends before it notices (pgconn and libpq both end with
// CopyDone). In transaction mode those late messages carry no request, so they must not keep a
// server from the pool: with a pool of one, another client must get it meanwhile.
func TestProtocolCopyErrorLateCopyDone(t *testing.T) {
	c := cluster(t)
	admin := direct(t, c)
	table := "proto_copy_late"
	mustExec(t, admin, fmt.Sprintf("drop table if exists %s; create table %s (v int)", table, table))
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "drop table if exists "+table) })
	newProxy := func(t *testing.T) *testProxy {
		return startProxy(t, c, func(cfg *config.Config) {
			cfg.PoolSize = 1
			cfg.QueryWaitTimeout = 3 * time.Second
		})
	}
	// afterFailure checks that the failed COPY left nothing and that the only server is free.
	afterFailure := func(t *testing.T, p *testProxy) {
		t.Helper()
		other := p.connect(t, pgx.QueryExecModeSimpleProtocol)
		if n := queryInt(t, other, "select count(*) from "+table); n != 0 {
			t.Fatalf("another client: %d rows after the failed COPY, want 0", n)
		}
		waitServersReleased(t, p)
	}

	t.Run("raw", func(t *testing.T) {
		p := newProxy(t)
		rc := rawConnect(t, p)
		rc.send(&pgproto3.Query{String: fmt.Sprintf("copy %s from stdin", table)})
		rc.expect("G")
		rc.send(&pgproto3.CopyData{Data: []byte("1\nnot a number\n")})
		bodies := rc.expect("EZ")
		var e pgproto3.ErrorResponse
		if err := e.Decode(bodies[0]); err != nil || e.Code != "22P02" {
			t.Fatalf("error %+v, %v; want 22P02", e, err)
		}
		if string(bodies[1]) != "I" {
			t.Fatalf("ReadyForQuery %q, want I", bodies[1])
		}
		// What a client still streaming sends before it reads the error.
		rc.send(&pgproto3.CopyData{Data: []byte("2\n3\n")}, &pgproto3.CopyDone{})
		rc.nothingPending(100 * time.Millisecond)
		afterFailure(t, p)

		rc.send(&pgproto3.Query{String: "select count(*) from " + table})
		bodies = rc.expect("TDCZ")
		var dr pgproto3.DataRow
		if err := dr.Decode(bodies[1]); err != nil || len(dr.Values) != 1 || string(dr.Values[0]) != "0" {
			t.Fatalf("count after the failed COPY: %q, %v", dr.Values, err)
		}
		waitServersReleased(t, p)
	})

	// The server fails the COPY while the proxy has forwarded only the start of the next
	// CopyData: the rest of that message and the CopyDone follow after the ReadyForQuery.
	t.Run("raw_partial_copydata", func(t *testing.T) {
		p := newProxy(t)
		rc := rawConnect(t, p)
		rc.send(&pgproto3.Query{String: fmt.Sprintf("copy %s from stdin", table)})
		rc.expect("G")
		first, err := (&pgproto3.CopyData{Data: []byte("1\nnot a number\n")}).Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		second, err := (&pgproto3.CopyData{Data: []byte("2\n3\n4\n5\n")}).Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		// One write: the whole bad CopyData and the first 7 bytes of the next one.
		if _, err := rc.conn.Write(append(first, second[:7]...)); err != nil {
			t.Fatal(err)
		}
		bodies := rc.expect("EZ")
		if string(bodies[1]) != "I" {
			t.Fatalf("ReadyForQuery %q, want I", bodies[1])
		}
		rest, err := (&pgproto3.CopyDone{}).Encode(bytes.Clone(second[7:]))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rc.conn.Write(rest); err != nil {
			t.Fatal(err)
		}
		rc.nothingPending(100 * time.Millisecond)
		afterFailure(t, p)
		rc.send(&pgproto3.Query{String: "select 'in step'"})
		rc.expect("TDCZ")
		waitServersReleased(t, p)
	})

	t.Run("pgconn", func(t *testing.T) {
		p := newProxy(t)
		conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
		marker := "proto_copy_late_pgconn"
		// The reader sends a bad row, then holds the rest back until the server has failed the
		// COPY, as a client streaming a large COPY would be caught.
		r := &pausingReader{first: []byte("1\nnot a number\n"), rest: []byte("2\n3\n"), wait: func() {
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				var n int
				_ = admin.QueryRow(context.Background(), `select count(*) from pg_stat_activity where state = 'idle' and query like '%' || $1 || '%' and pid <> pg_backend_pid()`, marker).Scan(&n)
				if n > 0 {
					return
				}
				time.Sleep(2 * time.Millisecond)
			}
		}}
		_, err := conn.PgConn().CopyFrom(testCtx(t), r, fmt.Sprintf("copy %s from stdin /* %s */", table, marker))
		wantPgError(t, err, "22P02")
		afterFailure(t, p)
		if n := queryInt(t, conn, "select count(*) from "+table); n != 0 {
			t.Fatalf("%d rows after the failed COPY", n)
		}
		waitServersReleased(t, p)
	})
}

// pausingReader yields first, calls wait, then yields rest and EOF.
type pausingReader struct {
	first, rest []byte
	wait        func()
	waited      bool
}

func (r *pausingReader) Read(b []byte) (int, error) {
	if len(r.first) > 0 {
		n := copy(b, r.first)
		r.first = r.first[n:]
		return n, nil
	}
	if !r.waited {
		r.waited = true
		r.wait()
	}
	if len(r.rest) > 0 {
		n := copy(b, r.rest)
		r.rest = r.rest[n:]
		return n, nil
	}
	return 0, io.EOF
}

// --- 8. asynchronous messages -------------------------------------------------------------

func TestProtocolNotice(t *testing.T) {
	forEachPoolMode(t, func(t *testing.T, p *testProxy, mode string) {
		var mu sync.Mutex
		var notices []*pgconn.Notice
		conn := connectWith(t, p, pgx.QueryExecModeSimpleProtocol, func(cc *pgx.ConnConfig) {
			cc.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
				mu.Lock()
				notices = append(notices, n)
				mu.Unlock()
			}
		})
		mustExec(t, conn, `do $$ begin raise notice 'hello %', 42; raise warning 'careful %', 'now'; end $$`)
		mu.Lock()
		got := make([]string, 0, len(notices))
		for _, n := range notices {
			got = append(got, n.Severity+" "+n.Code+" "+n.Message)
		}
		mu.Unlock()
		want := []string{"NOTICE 00000 hello 42", "WARNING 01000 careful now"}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("notices: got %q, want %q", got, want)
		}
		if mode == config.PoolModeTransaction {
			waitServersReleased(t, p)
		}
	})
}

func TestProtocolParameterStatusSession(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, withPoolMode(config.PoolModeSession))
	conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	pc := conn.PgConn()
	if got := pc.ParameterStatus("server_version"); !strings.HasPrefix(got, "15") {
		t.Errorf("server_version at login: %q", got)
	}
	if got := pc.ParameterStatus("client_encoding"); got != "UTF8" {
		t.Errorf("client_encoding at login: %q", got)
	}
	mustExec(t, conn, "set application_name = 'proto_param_x'")
	if got := pc.ParameterStatus("application_name"); got != "proto_param_x" {
		t.Fatalf("ParameterStatus application_name after SET: %q, want proto_param_x", got)
	}
	var shown string
	if err := conn.QueryRow(testCtx(t), "show application_name").Scan(&shown); err != nil || shown != "proto_param_x" {
		t.Fatalf("show application_name: %q, %v", shown, err)
	}
	mustExec(t, conn, "set timezone = 'Asia/Kolkata'")
	if got := pc.ParameterStatus("TimeZone"); got != "Asia/Kolkata" {
		t.Fatalf("ParameterStatus TimeZone after SET: %q", got)
	}
}

func TestProtocolNotificationSession(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, withPoolMode(config.PoolModeSession))
	listener := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	mustExec(t, listener, "listen proto_chan")

	waitValue := func(want string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		n, err := listener.WaitForNotification(ctx)
		if err != nil {
			t.Fatalf("waiting for %q: %v", want, err)
		}
		if n.Channel != "proto_chan" || n.Payload != want {
			t.Fatalf("notification %s:%s, want proto_chan:%s", n.Channel, n.Payload, want)
		}
	}

	// From a direct connection.
	admin := direct(t, c)
	mustExec(t, admin, "notify proto_chan, 'payload-direct'")
	waitValue("payload-direct")

	// From another client of the proxy.
	sender := p.connect(t, pgx.QueryExecModeExec)
	mustExec(t, sender, "select pg_notify('proto_chan', $1)", "payload-proxy")
	waitValue("payload-proxy")

	// Several notifications sent while the listener waits for nothing arrive in order.
	mustExec(t, admin, "notify proto_chan, 'payload-1'; notify proto_chan, 'payload-2'")
	mustExec(t, admin, "notify proto_chan, 'payload-3'")
	waitValue("payload-1")
	waitValue("payload-2")
	waitValue("payload-3")
	// The listener's connection is still in step.
	if n := queryInt(t, listener, "select 3"); n != 3 {
		t.Fatalf("listener after notifications: %d", n)
	}
}

// --- 9. empty queries ---------------------------------------------------------------------

func TestProtocolEmptyQuery(t *testing.T) {
	forEachPoolMode(t, func(t *testing.T, p *testProxy, mode string) {
		ctx := testCtx(t)
		rc := rawConnect(t, p)
		for _, q := range []string{"", ";", " ; ;"} {
			rc.send(&pgproto3.Query{String: q})
			rc.expect("IZ")
		}
		// Through the extended protocol as well.
		rc.send(&pgproto3.Parse{}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		rc.expect("12IZ")
		rc.send(&pgproto3.Query{String: "select 'still here'"})
		bodies := rc.expect("TDCZ")
		var dr pgproto3.DataRow
		if err := dr.Decode(bodies[1]); err != nil || len(dr.Values) != 1 || string(dr.Values[0]) != "still here" {
			t.Fatalf("after empty queries: %q, %v", dr.Values, err)
		}

		conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
		for _, q := range []string{"", ";"} {
			results, err := conn.PgConn().Exec(ctx, q).ReadAll()
			if err != nil {
				t.Fatalf("pgconn Exec(%q): %v", q, err)
			}
			for _, r := range results {
				if len(r.Rows) != 0 || r.CommandTag.String() != "" {
					t.Fatalf("pgconn Exec(%q): result %+v, want nothing", q, r)
				}
			}
			if tag, err := conn.Exec(ctx, q); err != nil || tag.String() != "" {
				t.Fatalf("pgx Exec(%q): %q, %v", q, tag, err)
			}
		}
		if n := queryInt(t, conn, "select 7"); n != 7 {
			t.Fatalf("after empty queries: %d", n)
		}
		if mode == config.PoolModeTransaction {
			waitServersReleased(t, p)
		}
	})
}

// --- 10. large values ---------------------------------------------------------------------

// largeSize is the size of the single large value read through the proxy.
func largeSize() int { return 300 << 20 }

// checksumWriter counts and checksums what is written, keeping the first and last bytes.
type checksumWriter struct {
	n          int
	crc        uint32
	head, tail []byte
}

func (w *checksumWriter) Write(b []byte) (int, error) {
	w.n += len(b)
	w.crc = crc32.Update(w.crc, crcTable, b)
	if len(w.head) < 64 {
		w.head = append(w.head, b[:min(len(b), 64-len(w.head))]...)
	}
	w.tail = append(w.tail, b[max(0, len(b)-64):]...)
	if len(w.tail) > 64 {
		w.tail = w.tail[len(w.tail)-64:]
	}
	return len(b), nil
}

func TestProtocolLargeValues(t *testing.T) {
	if testing.Short() {
		t.Skip("large values: not under -short")
	}
	forEachPoolMode(t, func(t *testing.T, p *testProxy, mode string) {
		t.Run("single_value_out", func(t *testing.T) {
			// A single DataRow larger than any relay buffer, read by streaming it through a
			// checksum so the test itself holds no copy.
			const pattern = "0123456789abcdef"
			size := largeSize()
			rc := rawConnect(t, p)
			rc.send(&pgproto3.Query{String: fmt.Sprintf("select repeat('%s', %d) as big", pattern, size/len(pattern))})
			rc.expect("T")
			typ, n := rc.header(60 * time.Second)
			if typ != 'D' || n != 2+4+size {
				t.Fatalf("got message %q of %d bytes, want DataRow of %d", typ, n, 2+4+size)
			}
			var colHdr [6]byte
			if _, err := io.ReadFull(rc.r, colHdr[:]); err != nil {
				t.Fatal(err)
			}
			if cols, vlen := binary.BigEndian.Uint16(colHdr[:2]), binary.BigEndian.Uint32(colHdr[2:]); cols != 1 || int(vlen) != size {
				t.Fatalf("DataRow with %d columns, value of %d bytes; want 1, %d", cols, vlen, size)
			}
			var w checksumWriter
			_ = rc.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
			if _, err := io.CopyN(&w, rc.r, int64(size)); err != nil {
				t.Fatalf("reading the value after %d bytes: %v", w.n, err)
			}
			block := []byte(strings.Repeat(pattern, (1<<20)/len(pattern)))
			var want uint32
			for range size >> 20 {
				want = crc32.Update(want, crcTable, block)
			}
			if w.n != size || w.crc != want {
				t.Fatalf("value: %d bytes, crc %08x; want %d bytes, crc %08x", w.n, w.crc, size, want)
			}
			if string(w.head) != strings.Repeat(pattern, 4) || string(w.tail) != strings.Repeat(pattern, 4) {
				t.Fatalf("value starts %q, ends %q", w.head, w.tail)
			}
			bodies := rc.expect("CZ")
			if string(bodies[0]) != "SELECT 1\x00" {
				t.Fatalf("CommandComplete %q", bodies[0])
			}
			// The connection is in step afterwards.
			rc.send(&pgproto3.Query{String: "select 'after'"})
			rc.expect("TDCZ")
			if mode == config.PoolModeTransaction {
				waitServersReleased(t, p)
			}
		})

		t.Run("parameter_in", func(t *testing.T) {
			ctx := testCtx(t)
			conn := p.connect(t, pgx.QueryExecModeExec)
			table := "proto_large_" + mode
			mustExec(t, conn, fmt.Sprintf("drop table if exists %s; create unlogged table %s (id int, b bytea); alter table %s alter column b set storage external", table, table, table))
			t.Cleanup(func() { _, _ = direct(t, cluster(t)).Exec(context.Background(), "drop table if exists "+table) })
			data := make([]byte, 100<<20)
			rng := rand.NewChaCha8([32]byte{1, 2, 3})
			_, _ = rng.Read(data)
			wantMD5 := md5.Sum(data)
			// Binary format: the Bind message carries the raw 100 MiB.
			tag, err := conn.PgConn().ExecParams(ctx, fmt.Sprintf("insert into %s values (1, $1)", table), [][]byte{data}, []uint32{pgtype.ByteaOID}, []int16{1}, nil).Close()
			if err != nil {
				t.Fatal(err)
			}
			if tag.String() != "INSERT 0 1" {
				t.Fatalf("insert: %q", tag)
			}
			var length int
			var sum string
			if err := conn.QueryRow(ctx, fmt.Sprintf("select length(b), md5(b) from %s where id = 1", table)).Scan(&length, &sum); err != nil {
				t.Fatal(err)
			}
			if length != len(data) || sum != hex.EncodeToString(wantMD5[:]) {
				t.Fatalf("stored value: %d bytes md5 %s; want %d bytes md5 %x", length, sum, len(data), wantMD5)
			}
			mustExec(t, conn, "drop table "+table)
			if mode == config.PoolModeTransaction {
				waitServersReleased(t, p)
			}
		})

		t.Run("many_rows", func(t *testing.T) {
			ctx := testCtx(t)
			conn := p.connect(t, pgx.QueryExecModeExec)
			const n = 1_000_000
			want := bytes.Repeat([]byte("y"), 100)
			rr := conn.PgConn().ExecParams(ctx, "select g, repeat('y', 100) from generate_series(1, $1::int4) g", textArgs(n), nil, nil, nil)
			var count, sum int64
			for rr.NextRow() {
				vals := rr.Values()
				g, err := strconv.ParseInt(string(vals[0]), 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				if count++; g != count {
					t.Fatalf("row %d: g = %d", count, g)
				}
				sum += g
				if !bytes.Equal(vals[1], want) {
					t.Fatalf("row %d: value %q", count, vals[1])
				}
			}
			tag, err := rr.Close()
			if err != nil {
				t.Fatal(err)
			}
			if count != n || sum != n*(n+1)/2 || tag.RowsAffected() != n {
				t.Fatalf("streamed %d rows, sum %d, tag %q; want %d rows, sum %d", count, sum, tag, n, int64(n*(n+1)/2))
			}
			if mode == config.PoolModeTransaction {
				waitServersReleased(t, p)
			}
		})
	})
}

// --- 11. transaction mode -----------------------------------------------------------------

func TestProtocolTransactionMode(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 2 })
	ctx := testCtx(t)
	admin := direct(t, c)
	table := "proto_txmode"
	mustExec(t, admin, fmt.Sprintf("drop table if exists %s; create table %s (v int)", table, table))
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "drop table if exists "+table) })

	for _, em := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		t.Run(strings.ReplaceAll(em.String(), " ", "_"), func(t *testing.T) {
			mustExec(t, admin, "truncate "+table)
			a := p.connect(t, em)
			b := p.connect(t, em)

			// A transaction over several round trips keeps its server, while another client
			// runs autocommit statements on the other one.
			mustExec(t, a, "begin")
			pidA := queryInt(t, a, "select pg_backend_pid()")
			txid := queryInt(t, a, "select txid_current()")
			if n := serversInUse(p); n != 1 {
				t.Fatalf("open transaction holds %d servers, want 1", n)
			}
			for i := range 5 {
				mustExec(t, a, fmt.Sprintf("insert into %s values ($1)", table), i)
				if pidB := queryInt(t, b, "select pg_backend_pid()"); pidB == pidA {
					t.Fatalf("another client ran on the server of an open transaction (pid %d)", pidA)
				}
				if n := queryInt(t, b, "select count(*) from "+table); n != 0 {
					t.Fatalf("another client sees %d uncommitted rows", n)
				}
				if got := queryInt(t, a, "select pg_backend_pid()"); got != pidA {
					t.Fatalf("round trip %d of the transaction ran on pid %d, want %d", i, got, pidA)
				}
				if got := queryInt(t, a, "select txid_current()"); got != txid {
					t.Fatalf("round trip %d: txid %d, want %d", i, got, txid)
				}
			}
			if n := queryInt(t, a, "select count(*) from "+table); n != 5 {
				t.Fatalf("inside the transaction: %d rows, want 5", n)
			}
			mustExec(t, a, "commit")
			if a.PgConn().TxStatus() != 'I' {
				t.Fatalf("after commit: status %q", a.PgConn().TxStatus())
			}
			if n := queryInt(t, admin, "select sum(v) from "+table); n != 10 {
				t.Fatalf("after commit: sum %d, want 10", n)
			}

			// Consecutive autocommit statements may run anywhere; only their results matter.
			for i := range 10 {
				if got := queryInt(t, a, "select $1::int8 * 3", int64(i)); got != int64(3*i) {
					t.Fatalf("autocommit %d: got %d", i, got)
				}
				mustExec(t, a, fmt.Sprintf("insert into %s values ($1)", table), 100+i)
			}
			if n := queryInt(t, b, "select count(*) from "+table); n != 15 {
				t.Fatalf("after autocommit inserts: %d rows, want 15", n)
			}

			// An error inside an explicit transaction: status E, the server is kept (the next
			// statement fails with 25P02 there), and ROLLBACK ends it.
			mustExec(t, a, "begin")
			mustExec(t, a, fmt.Sprintf("insert into %s values (1000)", table))
			_, err := a.Exec(ctx, "select 1/0")
			wantPgError(t, err, "22012")
			if a.PgConn().TxStatus() != 'E' {
				t.Fatalf("after the error: status %q, want E", a.PgConn().TxStatus())
			}
			_, err = a.Exec(ctx, "select 1")
			wantPgError(t, err, "25P02")
			mustExec(t, a, "rollback")
			if a.PgConn().TxStatus() != 'I' {
				t.Fatalf("after rollback: status %q, want I", a.PgConn().TxStatus())
			}
			if n := queryInt(t, a, fmt.Sprintf("select count(*) from %s where v = 1000", table)); n != 0 {
				t.Fatalf("rolled-back row visible")
			}
			if n := queryInt(t, a, "select 5"); n != 5 {
				t.Fatalf("after rollback: %d", n)
			}
			waitServersReleased(t, p)
		})
	}
}

// --- 12. cancel ---------------------------------------------------------------------------

// waitRunning waits until a backend runs a query containing marker.
func waitRunning(t testing.TB, admin *pgx.Conn, marker string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		if err := admin.QueryRow(testCtx(t), `select count(*) from pg_stat_activity where state = 'active' and query like '%' || $1 || '%' and pid <> pg_backend_pid()`, marker).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("query %q did not start", marker)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sendCancel sends a CancelRequest to the proxy and waits for it to close the connection.
func sendCancel(t testing.TB, addr string, pid uint32, key []byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msg, err := (&pgproto3.CancelRequest{ProcessID: pid, SecretKey: key}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := conn.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("cancel connection: read %d bytes, %v; want EOF", n, err)
	}
}

func TestProtocolCancel(t *testing.T) {
	forEachPoolMode(t, func(t *testing.T, p *testProxy, mode string) {
		admin := direct(t, cluster(t))
		for _, em := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
			name := strings.ReplaceAll(em.String(), " ", "_")
			t.Run(name, func(t *testing.T) {
				ctx := testCtx(t)
				conn := p.connect(t, em)
				marker := fmt.Sprintf("proto_cancel_%s_%s", mode, name)
				done := make(chan error, 1)
				go func() {
					_, err := conn.Exec(ctx, fmt.Sprintf("select pg_sleep(10) /* %s */", marker))
					done <- err
				}()
				waitRunning(t, admin, marker)
				start := time.Now()
				if err := conn.PgConn().CancelRequest(ctx); err != nil {
					t.Fatal(err)
				}
				select {
				case err := <-done:
					wantPgError(t, err, "57014")
				case <-time.After(3 * time.Second):
					t.Fatal("query still running 3s after the cancel request")
				}
				if el := time.Since(start); el > 3*time.Second {
					t.Fatalf("cancel took %v", el)
				}
				if n := queryInt(t, conn, "select 11"); n != 11 {
					t.Fatalf("after cancel: %d", n)
				}
				if mode == config.PoolModeTransaction {
					waitServersReleased(t, p)
				}
			})
		}

		t.Run("wrong_key", func(t *testing.T) {
			ctx := testCtx(t)
			conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
			marker := "proto_cancel_wrong_" + mode
			done := make(chan error, 1)
			var got string
			go func() {
				done <- conn.QueryRow(ctx, fmt.Sprintf("select pg_sleep(1.5)::text || 'done' /* %s */", marker)).Scan(&got)
			}()
			waitRunning(t, admin, marker)
			pid, key := conn.PgConn().PID(), bytes.Clone(conn.PgConn().SecretKey())
			if len(key) == 0 {
				t.Fatal("no BackendKeyData from the proxy")
			}
			wrong := bytes.Clone(key)
			wrong[0] ^= 0xff
			sendCancel(t, p.addr, pid, wrong)
			sendCancel(t, p.addr, pid+1, key)
			if err := <-done; err != nil {
				t.Fatalf("query with a wrong-key cancel: %v", err)
			}
			if got != "done" {
				t.Fatalf("got %q, want \"done\"", got)
			}
			if mode == config.PoolModeTransaction {
				waitServersReleased(t, p)
			}
		})
	})
}
