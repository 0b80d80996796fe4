package admin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func TestEmptyQuery(t *testing.T) {
	for _, q := range []string{"", "   ", "\n\t", ";", " ; ;\n"} {
		r := one(t, newFake(), adminCaller, q)
		if !r.empty {
			t.Errorf("%q: %+v, want EmptyQueryResponse", q, r)
		}
	}
}

func TestCaseAndSemicolons(t *testing.T) {
	for _, q := range []string{"SHOW POOLS", "show pools", "Show Pools", "sHoW pOoLs",
		"SHOW POOLS;", "SHOW POOLS ;  ", "\n SHOW\tPOOLS;;", "SHOW \"pools\"", "SELECT pools",
		"SHOW POOLS\x00", "SHOW POOLS\x00; PAUSE"} {
		r := ok(t, newFake(), q)
		if len(r.rows) != 1 || r.rows[0][0] != "app" {
			t.Errorf("%q: rows %q", q, r.rows)
		}
	}
}

func TestSeveralCommands(t *testing.T) {
	b := newFake()
	res := execute(t, b, adminCaller, "SHOW VERSION; RELOAD; show state;")
	if len(res) != 3 {
		t.Fatalf("%d results, want 3: %+v", len(res), res)
	}
	if res[0].rows[0][0] != "pgsidecar 1.2.3" || res[1].tag != "RELOAD" || res[1].fields != nil ||
		res[2].rows[0][0] != "active" {
		t.Errorf("results %+v", res)
	}
	if !slices.Equal(b.calls, []string{"reload"}) {
		t.Errorf("calls %q", b.calls)
	}
}

// TestFailureEndsQuery checks PostgreSQL's rule: the first failing command ends the query.
func TestFailureEndsQuery(t *testing.T) {
	b := newFake()
	b.err = ErrNoSuchDatabase
	res := execute(t, b, adminCaller, "SHOW VERSION; RESUME nosuch; RELOAD; SHOW STATE")
	if len(res) != 2 || res[0].tag != "SHOW" || res[1].err == nil {
		t.Fatalf("results %+v, want SHOW then an error", res)
	}
	if e := res[1].err; e.Code != "3D000" || e.Message != "no such database: nosuch" {
		t.Errorf("error %s %q", e.Code, e.Message)
	}
	if !slices.Equal(b.calls, []string{"resume:nosuch"}) {
		t.Errorf("calls %q: RELOAD ran after the failure", b.calls)
	}
}

// TestSyntaxErrorRunsNothing checks that the whole query is parsed before anything runs.
func TestSyntaxErrorRunsNothing(t *testing.T) {
	b := newFake()
	e := failed(t, b, adminCaller, "PAUSE; RELOAD; FROB the pooler")
	if e.Code != "42601" || e.Message != "invalid command 'FROB the pooler', use SHOW HELP;" || e.Severity != "ERROR" {
		t.Errorf("error %s %s %q", e.Severity, e.Code, e.Message)
	}
	if len(b.calls) != 0 {
		t.Errorf("calls %q, want none", b.calls)
	}
}

func TestSyntaxErrors(t *testing.T) {
	for _, tc := range []struct{ query, code, msg string }{
		{"FROB", "42601", "invalid command 'FROB', use SHOW HELP;"},
		{"SHOW", "42601", "invalid command 'SHOW', use SHOW HELP;"},
		{"SHOW BOGUS", "42601", "invalid command 'SHOW BOGUS', use SHOW HELP;"},
		{"SHOW POOLS CLIENTS", "42601", ""},
		{"SELECT 1", "42601", "invalid command 'SELECT 1', use SHOW HELP;"},
		{"SELECT * FROM pools", "42601", "invalid command 'SELECT * FROM pools', use SHOW HELP;"},
		{"PAUSE my-db", "42601", "invalid command 'PAUSE my-db', use SHOW HELP;"},
		{"PAUSE 'app'", "42601", ""},
		{`PAUSE "app`, "42601", `invalid command 'PAUSE "app', use SHOW HELP;`},
		{`PAUSE ""`, "42601", ""},
		{"PAUSE a b", "42601", ""},
		{"PAUSE = a", "42601", ""},
		{"RELOAD now", "42601", ""},
		{"SUSPEND now", "42601", ""},
		{"SHUTDOWN NOW", "42601", ""},
		{"DISABLE", "42601", "a database is required"},
		{"ENABLE;", "42601", "a database is required"},
		{"KILL_CLIENT", "42601", "a client id is required"},
		{"KILL_CLIENT -1", "42601", ""},
		{"KILL_CLIENT abc", "22023", "invalid client id: abc"},
		{"KILL_CLIENT 99999999999999999999", "22023", ""},
		{"SET client_encoding", "42601", ""},
		{"SET client_encoding = = x", "42601", ""},
		{"SET x y z", "42601", ""},
		{"SHOW POOLS; SHOW 'x';", "42601", "invalid command 'SHOW 'x'', use SHOW HELP;"},
	} {
		b := newFake()
		e := failed(t, b, adminCaller, tc.query)
		if e.Code != tc.code || (tc.msg != "" && e.Message != tc.msg) {
			t.Errorf("%q: %s %q, want %s %q", tc.query, e.Code, e.Message, tc.code, tc.msg)
		}
		if len(b.calls) != 0 {
			t.Errorf("%q: calls %q", tc.query, b.calls)
		}
	}
}

// TestLongCommandIsClipped checks that an error does not echo a huge query back.
func TestLongCommandIsClipped(t *testing.T) {
	e := failed(t, newFake(), adminCaller, "FROB "+strings.Repeat("é", 10000))
	if len(e.Message) > 320 || !strings.Contains(e.Message, "...") {
		t.Errorf("message of %d bytes: %.80q", len(e.Message), e.Message)
	}
}

func TestActions(t *testing.T) {
	for _, tc := range []struct{ query, call, tag string }{
		{"PAUSE", "pause:", "PAUSE"},
		{"pause app;", "pause:app", "PAUSE"},
		{`PAUSE "my db"`, "pause:my db", "PAUSE"},
		{`PAUSE "a""b"`, `pause:a"b`, "PAUSE"},
		{`PAUSE "x;y"`, "pause:x;y", "PAUSE"},
		{"PAUSE MyDb", "pause:MyDb", "PAUSE"}, // names keep their case, as in PgBouncer
		{"RESUME", "resume:", "RESUME"},
		{"resume app", "resume:app", "RESUME"},
		{"RECONNECT", "reconnect:", "RECONNECT"},
		{"RECONNECT app", "reconnect:app", "RECONNECT"},
		{"KILL", "kill:", "KILL"},
		{"KILL app", "kill:app", "KILL"},
		{"DISABLE app", "disable:app", "DISABLE"},
		{"ENABLE app", "enable:app", "ENABLE"},
		{"KILL_CLIENT 42", "kill_client:42", "KILL_CLIENT"},
		{"kill_client 18446744073709551615", "kill_client:18446744073709551615", "KILL_CLIENT"},
		{"RELOAD", "reload", "RELOAD"},
		{"SHUTDOWN;", "shutdown", "SHUTDOWN"},
	} {
		b := newFake()
		r := one(t, b, adminCaller, tc.query)
		if r.err != nil || r.tag != tc.tag || r.fields != nil {
			t.Errorf("%q: %+v, want CommandComplete %q alone", tc.query, r, tc.tag)
		}
		if !slices.Equal(b.calls, []string{tc.call}) {
			t.Errorf("%q: calls %q, want %q", tc.query, b.calls, tc.call)
		}
	}
}

func TestAdminDatabaseIsNotActedOn(t *testing.T) {
	for _, q := range []string{"PAUSE pgsidecar", "KILL pgbouncer", "DISABLE pgsidecar", "RESUME \"pgbouncer\""} {
		b := newFake()
		e := failed(t, b, adminCaller, q)
		if e.Code != "55000" || !strings.Contains(e.Message, "admin db") {
			t.Errorf("%q: %s %q", q, e.Code, e.Message)
		}
		if len(b.calls) != 0 {
			t.Errorf("%q: calls %q", q, b.calls)
		}
	}
	if !IsAdminDatabase("pgsidecar") || !IsAdminDatabase("pgbouncer") || IsAdminDatabase("PgBouncer") || IsAdminDatabase("app") {
		t.Errorf("IsAdminDatabase")
	}
}

func TestStatsOnlyCaller(t *testing.T) {
	for _, q := range []string{"PAUSE", "RESUME app", "RELOAD", "SHUTDOWN", "KILL_CLIENT 7",
		"DISABLE app", "SUSPEND", "WAIT_CLOSE", "SET default_pool_size = 5", "SHOW VERSION; RECONNECT"} {
		b := newFake()
		log, buf := captureLog()
		res := decode(t, New(b, statsCaller, log).Exec(context.Background(), q))
		e := res[len(res)-1].err
		if e == nil || e.Code != "42501" || !strings.HasPrefix(e.Message, "permission denied") {
			t.Errorf("%q: %+v, want 42501", q, res)
		}
		if len(b.calls) != 0 {
			t.Errorf("%q: calls %q", q, b.calls)
		}
		if !strings.Contains(buf.String(), `"msg":"admin command denied"`) || !strings.Contains(buf.String(), `"user":"monitor"`) {
			t.Errorf("%q: denial not logged: %s", q, buf)
		}
	}
	// SHOW, HELP and the ignored SETs are open to stats users.
	for _, q := range []string{"SHOW POOLS", "SHOW HELP", "SHOW STATS", "show client_encoding"} {
		if r := one(t, newFake(), statsCaller, q); r.err != nil {
			t.Errorf("%q: %s", q, r.err.Message)
		}
	}
	r := one(t, newFake(), statsCaller, "SET client_encoding TO 'UTF8'")
	if r.err != nil || r.tag != "SET" || len(r.notices) != 1 || r.notices[0].Message != "SET ignored" {
		t.Errorf("fake SET: %+v", r)
	}
}

func TestNotSupported(t *testing.T) {
	for _, q := range []string{"SUSPEND", "WAIT_CLOSE", "WAIT_CLOSE app", "SET default_pool_size = 5",
		"SET server_reset_query = 'DISCARD ALL'", "SHOW FDS", "SHOW users", "SHOW MEM",
		"SHOW SOCKETS", "SHOW DNS_HOSTS", "SHUTDOWN WAIT_FOR_CLIENTS", "shutdown wait_for_servers"} {
		b := newFake()
		e := failed(t, b, adminCaller, q)
		if e.Code != "0A000" || !strings.HasSuffix(e.Message, "is not supported by pgsidecar") {
			t.Errorf("%q: %s %q", q, e.Code, e.Message)
		}
		if len(b.calls) != 0 {
			t.Errorf("%q: calls %q", q, b.calls)
		}
	}
}

func TestActionErrors(t *testing.T) {
	for _, tc := range []struct {
		query string
		err   error
		code  string
		msg   string
	}{
		{"DISABLE x", fmt.Errorf("pool: %w", ErrNoSuchDatabase), "3D000", "no such database: x"},
		{"PAUSE", ErrAlreadyPaused, "55000", "already suspended/paused"},
		{"RESUME", ErrNotPaused, "55000", "pooler is not paused/suspended"},
		{"RESUME app", ErrNotPaused, "55000", "database app is not paused"},
		{"RESUME", ErrShuttingDown, "55000", "pooler is shutting down"},
		{"KILL_CLIENT 9", ErrNoSuchClient, "42704", "client not found: 9"},
		{"RECONNECT", &Error{Code: "53300", Message: "too many"}, "53300", "too many"},
		{"RECONNECT", fmt.Errorf("wrapped: %w", &Error{Code: "22023", Message: "bad"}), "22023", "bad"},
		{"RELOAD", errors.New("parse /etc/pgsidecar.yaml: password=hunter2"), "F0000", "RELOAD failed, see logs for additional details"},
		{"KILL app", errors.New("internal detail"), "XX000", "KILL failed, see logs for additional details"},
		{"PAUSE", context.DeadlineExceeded, "57014", "canceling statement due to statement timeout"},
	} {
		b := newFake()
		b.err = tc.err
		log, buf := captureLog()
		res := decode(t, New(b, adminCaller, log).Exec(context.Background(), tc.query))
		if len(res) != 1 || res[0].err == nil {
			t.Fatalf("%q: %+v", tc.query, res)
		}
		if e := res[0].err; e.Code != tc.code || e.Message != tc.msg {
			t.Errorf("%q with %v: %s %q, want %s %q", tc.query, tc.err, e.Code, e.Message, tc.code, tc.msg)
		}
		// The error's text goes to the log, once, where it is handled.
		if n := strings.Count(buf.String(), "admin command failed"); n != 1 || !strings.Contains(buf.String(), tc.err.Error()) {
			t.Errorf("%q: failure logged %d times: %s", tc.query, n, buf)
		}
	}
}

// TestMutatingCommandsAreLogged checks that the log says who ran what.
func TestMutatingCommandsAreLogged(t *testing.T) {
	log, buf := captureLog()
	c := New(newFake(), Caller{User: "alice", Addr: "10.0.0.9:5555", Admin: true}, log)
	decode(t, c.Exec(context.Background(), `SHOW POOLS; PAUSE "my db"; KILL_CLIENT 12; RELOAD`))

	var got []map[string]any
	sc := bufio.NewScanner(buf)
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatal(err)
		}
		if rec["msg"] == "admin command" {
			got = append(got, rec)
		}
	}
	want := []map[string]any{
		{"command": "PAUSE", "database": "my db"},
		{"command": "KILL_CLIENT", "client_id": float64(12)},
		{"command": "RELOAD"},
	}
	if len(got) != len(want) {
		t.Fatalf("logged %d commands, want %d (SHOW is not logged): %s", len(got), len(want), buf)
	}
	for i, w := range want {
		w["user"], w["client"], w["level"] = "alice", "10.0.0.9:5555", "INFO"
		for k, v := range w {
			if got[i][k] != v {
				t.Errorf("record %d: %s = %v, want %v", i, k, got[i][k], v)
			}
		}
	}
}

// TestPauseWaits checks that PAUSE answers only once the Backend says the pause is complete.
func TestPauseWaits(t *testing.T) {
	b := newFake()
	b.pauseEntered, b.pauseRelease = make(chan struct{}), make(chan struct{})
	done := make(chan []byte)
	go func() { done <- New(b, adminCaller, nil).Exec(context.Background(), "PAUSE app") }()

	<-b.pauseEntered
	select {
	case <-done:
		t.Fatal("PAUSE answered while transactions were running")
	default:
	}
	close(b.pauseRelease)
	if r := decode(t, <-done); len(r) != 1 || r[0].tag != "PAUSE" {
		t.Errorf("results %+v", r)
	}
}

// TestPauseCanceled checks that ctx bounds the wait (the proxy cancels it on a CancelRequest).
func TestPauseCanceled(t *testing.T) {
	b := newFake()
	b.pauseEntered, b.pauseRelease = make(chan struct{}), make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan []byte)
	go func() { done <- New(b, adminCaller, nil).Exec(ctx, "PAUSE; SHOW STATE") }()

	<-b.pauseEntered
	cancel()
	r := decode(t, <-done)
	if len(r) != 1 || r[0].err == nil || r[0].err.Code != "57014" || r[0].err.Message != "canceling statement due to user request" {
		t.Errorf("results %+v, want 57014 alone", r)
	}
}

func TestRefuse(t *testing.T) {
	c := New(newFake(), adminCaller, nil)
	for typ, want := range map[byte]string{
		'P': "extended query protocol not supported by admin console",
		'B': "extended query protocol not supported by admin console",
		'F': "unsupported message type for admin console: 'F'",
	} {
		fe := pgproto3.NewFrontend(bytes.NewReader(c.Refuse(typ)), nil)
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		e, isErr := msg.(*pgproto3.ErrorResponse)
		if !isErr || e.Severity != "FATAL" || e.Code != "08P01" || e.Message != want {
			t.Errorf("Refuse(%q) = %+v", typ, msg)
		}
		if _, err := fe.Receive(); err == nil {
			t.Errorf("Refuse(%q) sent more than the error", typ)
		}
	}
}

// TestEncodeFailureKeepsBuffer checks the fallback for results past protocol limits.
func TestEncodeFailureKeepsBuffer(t *testing.T) {
	var r response
	r.commandComplete("SHOW")
	before := len(r.buf)
	r.dataRow(make([][]byte, 70000)...)
	if r.err == nil || len(r.buf) != before {
		t.Errorf("err %v, buffer %d -> %d", r.err, before, len(r.buf))
	}
}

func TestCells(t *testing.T) {
	for _, tc := range []struct{ got, want []byte }{
		{secondsCell(1500 * 1000), []byte("0.001500")},
		{secondsCell(2_000_000_000), []byte("2.000000")},
		{secondsCell(0), []byte("0.000000")},
		{int4Cell(1 << 40), []byte("2147483647")},
		{int4Cell(-5), []byte("-5")},
		{linkCell(255), []byte("0xff")},
	} {
		if !bytes.Equal(tc.got, tc.want) {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
	if textCell("") == nil || nullCell("") != nil || timeCell(t0.Local()) == nil {
		t.Errorf("empty text must not be NULL; an empty optional string must be")
	}
}
