package classify

import (
	"slices"
	"strings"
	"testing"
)

// trackedParams is what the tests' proxy replays.
func trackedParams(p string) bool {
	switch p {
	case "search_path", "timezone", "datestyle", "application_name", "client_encoding",
		"default_transaction_isolation", "myapp.tenant":
		return true
	}
	return false
}

type classifyCase struct {
	sql     string
	pin     Reason
	sets    bool     // SetsTracked
	n       int      // Statements
	discard bool     // DiscardAll
	dealloc []string // Deallocate
}

var classifyCases = []classifyCase{
	// Harmless statements.
	{sql: "", n: 0},
	{sql: "   \n\t ", n: 0},
	{sql: ";", n: 0},
	{sql: ";;  ;", n: 0},
	{sql: "-- only a comment", n: 0},
	{sql: "/* only */ /* comments */;", n: 0},
	{sql: "select 1", n: 1},
	{sql: "SELECT 1;", n: 1},
	{sql: "select 1;;select 2;", n: 2},
	{sql: "select 1; ; -- c\n; select 2", n: 2},
	{sql: "insert into t values (1, 'a')", n: 1},
	{sql: "update t set a = 1 where b = 2", n: 1},
	{sql: "delete from t where id = $1", n: 1},
	{sql: "begin; select 1; commit", n: 3},
	{sql: "UNLISTEN foo", n: 1},
	{sql: "unlisten *", n: 1},
	{sql: "NOTIFY chan, 'listen'", n: 1},
	{sql: "select pg_advisory_unlock(1)", n: 1},
	{sql: "select pg_advisory_unlock_all()", n: 1},
	{sql: "select pg_advisory_xact_lock(1)", n: 1},
	{sql: "select pg_try_advisory_xact_lock(1, 2)", n: 1},
	{sql: "select pg_advisory_xact_lock_shared(1)", n: 1},
	{sql: "select pg_advisory_lock from t", n: 1},      // a column, not a call
	{sql: "select t.pg_advisory_lock from t", n: 1},    // a column, not a call
	{sql: "select myschema.pg_advisory_lock(1)", n: 1}, // someone else's function
	{sql: "DECLARE c CURSOR FOR SELECT 1", n: 1},
	{sql: "declare c no scroll cursor without hold for select 1", n: 1},
	{sql: "create table t (a int)", n: 1},
	{sql: "CREATE UNLOGGED TABLE t (a int)", n: 1},
	{sql: "create table t as select * from pg_temp.x", n: 1}, // reading pg_temp
	{sql: "create table t (like pg_temp.x)", n: 1},
	{sql: "create view v as select * from pg_temp.x", n: 1},
	{sql: "create index on pg_temp.t (a)", pin: TempTable, n: 1},
	{sql: "create table t (a int) inherits (x); create table pg_temp.t as select 1", pin: TempTable, n: 2},
	{sql: "create view tempview as select 1", n: 1},
	{sql: "select * from pg_temp.t", n: 1},
	{sql: "select * into t from u", n: 1},
	{sql: "insert into temp values (1)", n: 1},
	{sql: "with x as (insert into temp values (1) returning *) select * from x", n: 1},
	{sql: "merge into temp t using s on t.a = s.a when matched then do nothing", n: 1},
	{sql: "PREPARE TRANSACTION 'gid1'", n: 1},
	{sql: "commit prepared 'gid1'", n: 1},
	{sql: "LOAD", pin: Load, n: 1},
	{sql: "alter system set work_mem = '1MB'", n: 1},
	{sql: "alter role bob set search_path = x", n: 1},
	{sql: "create function f() returns int language sql set search_path = x as 'select 1'", n: 1},
	{sql: "show search_path", n: 1},
	{sql: "explain select 1", n: 1},
	{sql: "EXPLAIN (ANALYZE, BUFFERS) select 1", n: 1},
	{sql: "discard plans", n: 1},
	{sql: "DISCARD SEQUENCES", n: 1},
	{sql: "discard temp", n: 1},
	{sql: "discard temporary", n: 1},
	{sql: "execute stmt(1)", n: 1},
	{sql: "select set_config from t", n: 1},

	// Keywords inside strings, comments, dollar quotes and identifiers.
	{sql: "select 'LISTEN x'", n: 1},
	{sql: "select 'it''s; LISTEN x'", n: 1},
	{sql: "select E'\\'; listen x; --'", n: 1},
	{sql: "select e'a\\\\'; select 2", n: 2},
	{sql: "select U&'\\0041; listen x'", n: 1},
	{sql: "select N'; listen x'", n: 1},
	{sql: "select B'0101', X'ff'", n: 1},
	{sql: "select 1 -- ; set role admin", n: 1},
	{sql: "-- set role admin\nselect 1", n: 1},
	{sql: "select /* listen x; */ 1", n: 1},
	{sql: "select /* a /* nested; listen x */ still; listen y */ 1", n: 1},
	{sql: "select $$; listen x; $$", n: 1},
	{sql: "select $tag$ $$; listen x; $$ $tag$", n: 1},
	{sql: "select $a$ $b$ pg_advisory_lock(1) $b$ $a$", n: 1},
	{sql: `select "listen" from t`, n: 1},
	{sql: `select "a;b" from "listen"`, n: 1},
	{sql: `select "x""; listen y" from t`, n: 1},
	{sql: `select U&"x; listen y" from t`, n: 1},
	{sql: "select 'pg_advisory_lock(1)'", n: 1},
	{sql: "select 'select set_config(''role'', ''x'', false)'", n: 1},
	{sql: "do $$ begin perform pg_advisory_lock(1); end $$", n: 1},
	{sql: "do $body$ begin create temp table x(a int); end $body$", n: 1},
	{sql: "select $1, $2::text from t where x = $3", n: 1},
	{sql: "select a$b from t", n: 1},
	{sql: "select foo$$bar from t", n: 1},

	// LISTEN.
	{sql: "LISTEN chan", pin: Listen, n: 1},
	{sql: "listen \"Chan\"", pin: Listen, n: 1},
	{sql: "  /* c */ -- c\n Listen chan;", pin: Listen, n: 1},
	{sql: "select 1; listen chan", pin: Listen, n: 2},
	{sql: "select 1; select 2; LiStEn chan; select 3", pin: Listen, n: 4},

	// Advisory locks.
	{sql: "select pg_advisory_lock(1)", pin: AdvisoryLock, n: 1},
	{sql: "SELECT PG_ADVISORY_LOCK(1)", pin: AdvisoryLock, n: 1},
	{sql: "select pg_advisory_lock_shared(1, 2)", pin: AdvisoryLock, n: 1},
	{sql: "select pg_try_advisory_lock($1)", pin: AdvisoryLock, n: 1},
	{sql: "select pg_try_advisory_lock_shared(1)", pin: AdvisoryLock, n: 1},
	{sql: "select pg_catalog.pg_advisory_lock(1)", pin: AdvisoryLock, n: 1},
	{sql: "select PG_CATALOG . PG_ADVISORY_LOCK (1)", pin: AdvisoryLock, n: 1},
	{sql: `select "pg_catalog"."pg_advisory_lock"(1)`, pin: AdvisoryLock, n: 1},
	{sql: `select "pg_try_advisory_lock"(1)`, pin: AdvisoryLock, n: 1},
	{sql: `select U&"pg\005Fadvisory\005Flock"(1)`, pin: AdvisoryLock, n: 1},
	{sql: `select U&"pg!005Fadvisory!005Flock" UESCAPE '!' (1)`, pin: AdvisoryLock, n: 1},
	{sql: `select "PG_ADVISORY_LOCK"(1)`, n: 1}, // another function
	{sql: "select pg_advisory_lock /* c */ (1)", pin: AdvisoryLock, n: 1},
	{sql: "select * from pg_advisory_lock(1)", pin: AdvisoryLock, n: 1},
	{sql: "select case when x then pg_advisory_lock(id) end from t", pin: AdvisoryLock, n: 1},
	{sql: "select 1; select 2; select pg_advisory_lock(3)", pin: AdvisoryLock, n: 3},
	{sql: "insert into t select pg_try_advisory_lock(id) from u", pin: AdvisoryLock, n: 1},

	// EXPLAIN.
	{sql: "EXPLAIN ANALYZE SELECT pg_advisory_lock(1)", pin: AdvisoryLock, n: 1},
	{sql: "explain select pg_advisory_lock(1)", pin: AdvisoryLock, n: 1},
	{sql: "explain (analyze true, format json) select * into temp t from u", pin: TempTable, n: 1},
	{sql: "explain analyse verbose create temp table t as select 1", pin: TempTable, n: 1},
	{sql: "EXPLAIN VERBOSE select 1", n: 1},

	// Temporary tables.
	{sql: "CREATE TEMP TABLE t (a int)", pin: TempTable, n: 1},
	{sql: "create temporary table t (a int)", pin: TempTable, n: 1},
	{sql: "create local temp table t (a int)", pin: TempTable, n: 1},
	{sql: "create global temporary table t (a int)", pin: TempTable, n: 1},
	{sql: "create temp unlogged table t (a int)", pin: TempTable, n: 1},
	{sql: "create temp view v as select 1", pin: TempTable, n: 1},
	{sql: "create or replace temp view v as select 1", pin: TempTable, n: 1},
	{sql: "create temp recursive view v(a) as select 1", pin: TempTable, n: 1},
	{sql: "CREATE TEMP SEQUENCE s", pin: TempTable, n: 1},
	{sql: "create temp table t as select 1", pin: TempTable, n: 1},
	{sql: "create table pg_temp.t (a int)", pin: TempTable, n: 1},
	{sql: "create table if not exists PG_TEMP.t (a int)", pin: TempTable, n: 1},
	{sql: `create table "pg_temp".t (a int)`, pin: TempTable, n: 1},
	{sql: "create table pg_temp_3.t (a int)", pin: TempTable, n: 1},
	{sql: "create view pg_temp.v as select 1", pin: TempTable, n: 1},
	{sql: "create function pg_temp.f() returns int language sql as 'select 1'", pin: TempTable, n: 1},
	{sql: "create table pg_temporary.t (a int)", n: 1},
	{sql: "select * into temp t from u", pin: TempTable, n: 1},
	{sql: "SELECT a, b INTO TEMPORARY TABLE t FROM u", pin: TempTable, n: 1},
	{sql: "select 1 as a into local temp t", pin: TempTable, n: 1},
	{sql: "select * into pg_temp.t from u", pin: TempTable, n: 1},
	{sql: "select * into unlogged table pg_temp.t from u", pin: TempTable, n: 1},
	{sql: "with x as (select 1) select * into temp t from x", pin: TempTable, n: 1},
	{sql: "(select 1 into temp t)", pin: TempTable, n: 1},
	{sql: "select 1; create temp table t(a int); select 2", pin: TempTable, n: 3},

	// WITH HOLD cursors.
	{sql: "DECLARE c CURSOR WITH HOLD FOR SELECT 1", pin: WithHoldCursor, n: 1},
	{sql: "declare c binary insensitive no scroll cursor with hold for select 1", pin: WithHoldCursor, n: 1},
	{sql: "declare c asensitive scroll cursor with hold for select 1", pin: WithHoldCursor, n: 1},
	{sql: `declare "with" cursor with hold for select 1`, pin: WithHoldCursor, n: 1},
	{sql: "declare c cursor for with hold as (select 1) select * from hold", n: 1},
	{sql: "begin; declare c cursor with hold for select 1; commit", pin: WithHoldCursor, n: 3},

	// SQL PREPARE.
	{sql: "PREPARE s AS SELECT 1", pin: SQLPrepare, n: 1},
	{sql: "prepare s (int, text) as select $1, $2", pin: SQLPrepare, n: 1},
	{sql: "prepare transaction as select 1", pin: SQLPrepare, n: 1},
	{sql: "select 1; prepare s as select 1", pin: SQLPrepare, n: 2},

	// LOAD.
	{sql: "LOAD 'auto_explain'", pin: Load, n: 1},
	{sql: "load '$libdir/plugins/x'", pin: Load, n: 1},

	// Roles.
	{sql: "SET ROLE admin", pin: SetRole, n: 1},
	{sql: "set session role admin", pin: SetRole, n: 1},
	{sql: "set role none", pin: SetRole, n: 1},
	{sql: "SET SESSION AUTHORIZATION bob", pin: SetRole, n: 1},
	{sql: "set session authorization default", pin: SetRole, n: 1},
	{sql: "RESET ROLE", pin: SetRole, n: 1},
	{sql: "reset session authorization", pin: SetRole, n: 1},
	{sql: "set role = 'admin'", pin: SetRole, n: 1},
	{sql: "set session_authorization = 'bob'", pin: SetRole, n: 1},
	{sql: "reset session_authorization", pin: SetRole, n: 1},
	{sql: "set local role admin", n: 1},
	{sql: "set local session authorization bob", n: 1},
	{sql: "select set_config('role', 'admin', false)", pin: SetRole, n: 1},
	{sql: "select set_config('session_authorization', 'bob', false)", pin: SetRole, n: 1},
	{sql: "select set_config('ROLE', 'admin', $1)", pin: SetRole, n: 1},
	{sql: "select set_config('role', 'admin', true)", n: 1},

	// SET and RESET of parameters.
	{sql: "SET search_path TO app, public", sets: true, n: 1},
	{sql: "set search_path = app", sets: true, n: 1},
	{sql: "SET SEARCH_PATH = DEFAULT", sets: true, n: 1},
	{sql: "set session search_path to app", sets: true, n: 1},
	{sql: `set "search_path" to app`, sets: true, n: 1},
	{sql: "SET TIME ZONE 'UTC'", sets: true, n: 1},
	{sql: "set time zone local", sets: true, n: 1},
	{sql: "set session time zone default", sets: true, n: 1},
	{sql: "set timezone = 'Europe/Paris'", sets: true, n: 1},
	{sql: "SET NAMES 'UTF8'", sets: true, n: 1},
	{sql: "set schema 'app'", sets: true, n: 1},
	{sql: "set datestyle to iso, mdy", sets: true, n: 1},
	{sql: "set application_name = 'x; listen y'", sets: true, n: 1},
	{sql: "set myapp.tenant = '42'", sets: true, n: 1},
	{sql: "set MyApp . Tenant = '42'", sets: true, n: 1},
	{sql: "set myapp.other = '42'", pin: SetUntracked, n: 1},
	{sql: "SET work_mem = '64MB'", pin: SetUntracked, n: 1},
	{sql: "set statement_timeout to 0", pin: SetUntracked, n: 1},
	{sql: "set xml option document", pin: SetUntracked, n: 1},
	{sql: "set session characteristics as transaction isolation level serializable", sets: true, n: 1},
	{sql: "set session characteristics as transaction isolation level read committed", sets: true, n: 1},
	{sql: "set session characteristics as transaction read only", pin: SetUntracked, n: 1},
	{sql: "set session characteristics as transaction isolation level repeatable read, not deferrable", sets: true, pin: SetUntracked, n: 1},
	{sql: "RESET search_path", sets: true, n: 1},
	{sql: "reset time zone", sets: true, n: 1},
	{sql: "reset work_mem", pin: SetUntracked, n: 1},
	{sql: "RESET ALL", sets: true, n: 1},
	{sql: "reset transaction isolation level", n: 1},
	{sql: "SET LOCAL search_path = x", n: 1},
	{sql: "set local work_mem = '1GB'", n: 1},
	{sql: "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", n: 1},
	{sql: "set transaction snapshot '00000003-0000001B-1'", n: 1},
	{sql: "set constraints all deferred", n: 1},
	{sql: "begin; set local statement_timeout = 5; commit", n: 3},
	{sql: "select 1; set work_mem = 1", pin: SetUntracked, n: 2},
	{sql: "select 1; select 2; set search_path = x", sets: true, n: 3},
	{sql: "set search_path = x; set work_mem = 1", sets: true, pin: SetUntracked, n: 2},

	// A search_path that starts with pg_temp: CREATE TABLE x creates a temporary table.
	{sql: "set search_path = pg_temp, public", pin: TempTable, sets: true, n: 1},
	{sql: `SET search_path TO "pg_temp"`, pin: TempTable, sets: true, n: 1},
	{sql: "set search_path to public, pg_temp", sets: true, n: 1},
	{sql: "set search_path to 'pg_temp_2'", pin: TempTable, sets: true, n: 1},
	{sql: "set schema 'pg_temp'", pin: TempTable, sets: true, n: 1},
	{sql: "begin; set local search_path = pg_temp; create table t (a int); commit", pin: TempTable, n: 4},
	{sql: "select set_config('search_path', 'pg_temp, public', false)", pin: TempTable, sets: true, n: 1},
	{sql: `select set_config('search_path', ' "pg_temp",x', true)`, pin: TempTable, n: 1},
	{sql: "select set_config('search_path', 'PG_TEMP', true)", pin: TempTable, n: 1},
	{sql: `select set_config('search_path', '"PG_TEMP"', true)`, n: 1},
	{sql: "select set_config('search_path', 'pg_temporary', false)", sets: true, n: 1},

	// set_config.
	{sql: "select set_config('search_path', 'app', false)", sets: true, n: 1},
	{sql: "SELECT pg_catalog.SET_CONFIG('TimeZone', 'UTC', FALSE)", sets: true, n: 1},
	{sql: "select set_config('search_path'::text, 'app', false::boolean)", sets: true, n: 1},
	{sql: "select set_config('search_path', 'app', 'off')", sets: true, n: 1},
	{sql: "select set_config('search_path', 'app', 'f')", sets: true, n: 1},
	{sql: "select set_config($$search_path$$, 'app', null)", sets: true, n: 1},
	{sql: "select set_config('work_mem', '1GB', false)", pin: SetUntracked, n: 1},
	{sql: "select set_config('search_path', 'app', true)", n: 1},
	{sql: "select set_config('work_mem', '1GB', TRUE)", n: 1},
	{sql: "select set_config('work_mem', '1GB', 'yes')", n: 1},
	{sql: "select set_config('work_mem', '1GB', 'on'::bool)", n: 1},
	{sql: "select set_config($1, $2, true)", n: 1},
	{sql: "select set_config($1, $2, false)", pin: SetUntracked, n: 1},
	{sql: "select set_config(name, 'x', false) from t", pin: SetUntracked, n: 1},
	{sql: "select set_config('search_path', 'x', $3)", pin: SetUntracked, n: 1},
	{sql: "select set_config('search_path', 'x', true and x)", pin: SetUntracked, n: 1},
	{sql: "select set_config('search_path', 'x', is_local => true)", pin: SetUntracked, n: 1},
	{sql: "select set_config('search' || '_path', 'x', false)", pin: SetUntracked, n: 1},
	{sql: "select set_config(E'search\\_path', 'x', false)", pin: SetUntracked, n: 1},
	{sql: "select set_config('search_path', 'x')", pin: SetUntracked, n: 1},
	{sql: "select set_config('search_path', f(1, 2), false)", sets: true, n: 1},
	{sql: "select x, set_config('application_name', 'a', false) from (select 1) s(x)", sets: true, n: 1},
	{sql: "select myschema.set_config('work_mem', '1', false)", n: 1},
	{sql: "select 1; select set_config('work_mem', '1', false)", pin: SetUntracked, n: 2},
	{sql: "select set_config('work_mem', '1', false), pg_advisory_lock(1)", pin: SetUntracked, n: 1},
	{sql: "select pg_advisory_lock(1), set_config('work_mem', '1', false)", pin: AdvisoryLock, n: 1},
	{sql: "select set_config('search_path', pg_advisory_lock(1)::text, true)", pin: AdvisoryLock, n: 1},

	// DISCARD and DEALLOCATE.
	{sql: "DISCARD ALL", sets: true, discard: true, n: 1},
	{sql: "select 1; discard all", sets: true, discard: true, n: 2},
	{sql: "DEALLOCATE ALL", discard: true, n: 1},
	{sql: "deallocate prepare all", discard: true, n: 1},
	{sql: "DEALLOCATE stmt1", dealloc: []string{"stmt1"}, n: 1},
	{sql: "DEALLOCATE Stmt1", dealloc: []string{"stmt1"}, n: 1},
	{sql: `deallocate "Stmt1"`, dealloc: []string{"Stmt1"}, n: 1},
	{sql: `deallocate "a""b"`, dealloc: []string{`a"b`}, n: 1},
	{sql: `deallocate "ALL"`, dealloc: []string{"ALL"}, n: 1},
	{sql: "DEALLOCATE PREPARE S2", dealloc: []string{"s2"}, n: 1},
	{sql: `deallocate prepare "S 2"`, dealloc: []string{"S 2"}, n: 1},
	{sql: "deallocate prepare", dealloc: []string{"prepare"}, n: 1},
	{sql: `deallocate U&"\0061b"`, dealloc: []string{"ab"}, n: 1},
	{sql: "deallocate a; deallocate B; select 1; deallocate prepare c", dealloc: []string{"a", "b", "c"}, n: 4},
	{sql: "deallocate a b", n: 1},
	{sql: "deallocate " + strings.Repeat("é", 40), dealloc: []string{strings.Repeat("é", 31)}, n: 1},
	{sql: "deallocate " + strings.Repeat("x", 70), dealloc: []string{strings.Repeat("x", 63)}, n: 1},

	// Several effects in one string.
	{sql: "set search_path = x; listen y; select pg_advisory_lock(1)", sets: true, pin: Listen, n: 3},
	{sql: "select 1; listen a; set role b", pin: Listen, n: 3},
	{sql: "deallocate all; set time zone 'UTC'; deallocate x", discard: true, sets: true, dealloc: []string{"x"}, n: 3},

	// Parentheses: semicolons inside them do not end the statement.
	{sql: "create rule r as on insert to t do also (insert into a values (1); notify x)", n: 1},
	{sql: "select (1; listen x", n: 1},
	{sql: "select 1); listen x", pin: Listen, n: 2},

	// Unterminated quotes and comments run to the end.
	{sql: "select 'abc; listen x", n: 1},
	{sql: "select E'abc\\'; listen x", n: 1},
	{sql: `select "abc; listen x`, n: 1},
	{sql: "select $$abc; listen x", n: 1},
	{sql: "select $q$abc; listen x $q", n: 1},
	{sql: "select 1 /* abc; listen x", n: 1},
	{sql: "select 1 /* /* */ ; listen x", n: 1},
	{sql: "select 1 --", n: 1},
	{sql: "set", n: 1},
	{sql: "set session", n: 1},
	{sql: "reset", n: 1},
	{sql: "declare", n: 1},
	{sql: "deallocate", n: 1},
	{sql: "explain", n: 1},
	{sql: "explain (", n: 1},
	{sql: "create", n: 1},
	{sql: "select set_config(", pin: SetUntracked, n: 1},
	{sql: "select pg_advisory_lock", n: 1},
	{sql: "select U&'x' uescape", n: 1},

	// Lexing corners.
	{sql: "select 1into temp t", pin: TempTable, n: 1},
	{sql: "select 1e5, .5, 1.5e-3, 1_000; listen x", pin: Listen, n: 2},
	{sql: "select $1; listen x", pin: Listen, n: 2},
	{sql: "select $ ; listen x", pin: Listen, n: 2},
	{sql: "select 1--comment\n;listen x", pin: Listen, n: 2},
	{sql: "select 1/*c*/;listen x", pin: Listen, n: 2},
	{sql: "select 'a'\n'b'; listen x", pin: Listen, n: 2},
	{sql: "select x::text; listen y", pin: Listen, n: 2},
	{sql: "select \xff\xfe; listen y", pin: Listen, n: 2},
	{sql: "select 1\x00; listen y", pin: Listen, n: 2},
}

func TestClassify(t *testing.T) {
	for _, tc := range classifyCases {
		t.Run(tc.sql, func(t *testing.T) {
			got := Classify(tc.sql, trackedParams)
			want := Result{Pin: tc.pin, SetsTracked: tc.sets, DiscardAll: tc.discard, Deallocate: tc.dealloc, Statements: tc.n}
			if !equalResult(got, want) {
				t.Errorf("Classify(%q)\n got %+v\nwant %+v", tc.sql, got, want)
			}
		})
	}
}

func equalResult(a, b Result) bool {
	return a.Pin == b.Pin && a.SetsTracked == b.SetsTracked && a.DiscardAll == b.DiscardAll &&
		slices.Equal(a.Deallocate, b.Deallocate) && a.Statements == b.Statements
}

func TestClassifyTracked(t *testing.T) {
	var seen []string
	record := func(p string) bool {
		seen = append(seen, p)
		return p == "search_path"
	}
	cases := []struct {
		sql     string
		tracked func(string) bool
		pin     Reason
		sets    bool
		seen    []string
	}{
		{"set search_path = x", nil, SetUntracked, false, nil},
		{"set search_path = x", record, None, true, []string{"search_path"}},
		{"SET Search_Path = x", record, None, true, []string{"search_path"}},
		{`SET "Search_Path" = x`, record, None, true, []string{"search_path"}},
		{"set time zone 'UTC'", record, SetUntracked, false, []string{"timezone"}},
		{"set names 'UTF8'", record, SetUntracked, false, []string{"client_encoding"}},
		{"set schema 'x'", record, None, true, []string{"search_path"}},
		{"set a.B = 1", record, SetUntracked, false, []string{"a.b"}},
		{"select set_config('SEARCH_PATH', 'x', false)", record, None, true, []string{"search_path"}},
		{"select set_config('DateStyle', 'iso', false)", record, SetUntracked, false, []string{"datestyle"}},
		{"set session characteristics as transaction isolation level serializable", record, SetUntracked, false, []string{"default_transaction_isolation"}},
		{"set session characteristics as transaction read write, deferrable", record, SetUntracked, false, []string{"default_transaction_read_only", "default_transaction_deferrable"}},
		{"reset all", nil, None, true, nil},
		{"discard all", nil, None, true, nil},
		{"set role x", record, SetRole, false, nil},
		{"set local search_path = x", record, None, false, nil},
	}
	for _, tc := range cases {
		t.Run(tc.sql, func(t *testing.T) {
			seen = nil
			got := Classify(tc.sql, tc.tracked)
			if got.Pin != tc.pin || got.SetsTracked != tc.sets {
				t.Errorf("got Pin %q SetsTracked %v, want %q %v", got.Pin, got.SetsTracked, tc.pin, tc.sets)
			}
			if !slices.Equal(seen, tc.seen) {
				t.Errorf("tracked called with %q, want %q", seen, tc.seen)
			}
		})
	}
}

func TestParseBool(t *testing.T) {
	for s, want := range map[string]bool{
		"t": true, "TRUE": true, "tr": true, "y": true, "yes": true, "on": true, "1": true, " true ": true,
		"f": false, "False": false, "n": false, "no": false, "of": false, "off": false, "0": false,
	} {
		if got, ok := parseBool(s); !ok || got != want {
			t.Errorf("parseBool(%q) = %v, %v; want %v, true", s, got, ok, want)
		}
	}
	for _, s := range []string{"", "o", "truex", "2", "yess", "offf"} {
		if _, ok := parseBool(s); ok {
			t.Errorf("parseBool(%q) ok, want not ok", s)
		}
	}
}

func TestDecodeUnicode(t *testing.T) {
	cases := []struct {
		in   string
		esc  byte
		want string
		ok   bool
	}{
		{`abc`, '\\', "abc", true},
		{`\0061b`, '\\', "ab", true},
		{`\+01F600`, '\\', "\U0001F600", true},
		{`\D83D\DE00`, '\\', "\U0001F600", true},
		{`\\`, '\\', `\`, true},
		{`!0041!!`, '!', "A!", true},
		{`\D83D`, '\\', "", false},
		{`\DE00`, '\\', "", false},
		{`\00`, '\\', "", false},
		{`\00G1`, '\\', "", false},
		{`\0000`, '\\', "", false},
		{`\+110000`, '\\', "", false},
	}
	for _, tc := range cases {
		got, ok := decodeUnicode(tc.in, tc.esc)
		if got != tc.want || ok != tc.ok {
			t.Errorf("decodeUnicode(%q, %q) = %q, %v; want %q, %v", tc.in, tc.esc, got, ok, tc.want, tc.ok)
		}
	}
}

// plainQueries are typical statements that must classify without allocating.
var plainQueries = []string{
	"SELECT id, name, email FROM users WHERE id = $1 AND deleted_at IS NULL ORDER BY created_at LIMIT 10",
	"INSERT INTO events (user_id, kind, payload) VALUES ($1, $2, $3) RETURNING id, created_at",
	"UPDATE accounts SET balance = balance - $1, updated_at = now() WHERE id = $2 AND balance >= $1",
	"select u.id, 'it''s' as s, $$dollar$$ from users u /* c */ join orders o on o.user_id = u.id -- x",
	"SELECT CONSTRAINT_NAME, REFERENCES FROM T; SELECT pg_advisory_xact_lock(1); set local work_mem = 1",
	"set search_path = app; select set_config('search_path', 'app', false)",
}

func TestClassifyAllocs(t *testing.T) {
	for _, q := range plainQueries {
		allocs := testing.AllocsPerRun(100, func() { Classify(q, trackedParams) })
		if allocs != 0 {
			t.Errorf("Classify(%q): %v allocations, want 0", q, allocs)
		}
	}
}

func BenchmarkClassify(b *testing.B) {
	for _, q := range plainQueries[:3] {
		name, _, _ := strings.Cut(q, " ")
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(q)))
			for b.Loop() {
				Classify(q, trackedParams)
			}
		})
	}
}

func TestClassifyRetrySafety(t *testing.T) {
	cases := []struct {
		sql           string
		plain, commit bool
	}{
		{"", false, false},
		{"select 1", true, false},
		{"(select 1)", true, false},
		{"WITH x AS (delete from t returning *) select * from x", true, false},
		{"insert into t values (1); update t set a = 2", true, false},
		{"MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE", true, false},
		{"values (1)", true, false},
		{"table t", true, false},
		{"explain analyze delete from t", true, false},
		{"select 1; set x.y = 1", false, false},
		{"begin", false, false},
		{"create table t (a int)", false, false},
		{"CALL p()", false, true},
		{"do $$begin commit; end$$", false, true},
		{"DO 'begin end'", false, true},
		{"select 1; commit", false, true},
		{"end", false, true},
		{"commit prepared 'x'", false, true},
		{"rollback prepared 'x'", false, true},
		{"rollback", false, false},
		{"vacuum t", false, true},
		{"VACUUM (ANALYZE) t", false, true},
		{"cluster", false, true},
		{"reindex table t", false, true},
		{"create database d", false, true},
		{"drop database if exists d", false, true},
		{"alter database d set tablespace x", false, true},
		{"create tablespace x location '/x'", false, true},
		{"alter system set work_mem = '1MB'", false, true},
		{"create subscription s connection '' publication p", false, true},
		{"create index concurrently i on t (a)", false, true},
		{"CREATE UNIQUE INDEX CONCURRENTLY i ON t (a)", false, true},
		{"drop index concurrently i", false, true},
		{"alter table t detach partition p concurrently", false, true},
		{"select 'concurrently'", true, false},
		{`select "concurrently" from t`, true, false},
		{"alter table t add column a int", false, false},
	}
	for _, tc := range cases {
		got := Classify(tc.sql, trackedParams)
		if got.Plain != tc.plain || got.CommitsAlone != tc.commit {
			t.Errorf("Classify(%q): Plain %v CommitsAlone %v, want %v %v", tc.sql, got.Plain, got.CommitsAlone, tc.plain, tc.commit)
		}
	}
}

func TestClassifySignal(t *testing.T) {
	cases := []struct {
		sql  string
		want Signal
	}{
		{"select pg_cancel_backend(4194305)", Signal{Func: "pg_cancel_backend", PID: 4194305}},
		{"SELECT pg_catalog.PG_TERMINATE_BACKEND($1);", Signal{Func: "pg_terminate_backend", Param: 1}},
		{"select pg_cancel_backend($2::int4)", Signal{Func: "pg_cancel_backend", Param: 2}},
		{"select pg_cancel_backend ( 12 :: integer )", Signal{Func: "pg_cancel_backend", PID: 12}},
		{"select pg_cancel_backend(pid) from pg_stat_activity", Signal{}},
		{"select pg_cancel_backend(1), 2", Signal{}},
		{"select pg_cancel_backend(1); select 1", Signal{}},
		{"select 1; select pg_cancel_backend(1)", Signal{}},
		{"select pg_terminate_backend($1, 1000)", Signal{}},
		{"select myschema.pg_cancel_backend(1)", Signal{}},
		{"select pg_cancel_backend( '1216176256' )", Signal{Func: "pg_cancel_backend", PID: 1216176256}},
		{"select pg_cancel_backend(E'1')", Signal{}},
		{"select pg_cancel_backend('1x')", Signal{}},
		{"select 1", Signal{}},
	}
	for _, tc := range cases {
		if got := Classify(tc.sql, nil).Signal; got != tc.want {
			t.Errorf("Classify(%q).Signal = %+v, want %+v", tc.sql, got, tc.want)
		}
	}
}

func TestUnsafeEncoding(t *testing.T) {
	for name, want := range map[string]bool{
		"SJIS": true, "Shift_JIS": true, "BIG5": true, "gbk": true, "GB18030": true, "UHC": true,
		"JOHAB": true, "SHIFT_JIS_2004": true, "WIN932": true,
		"UTF8": false, "utf-8": false, "LATIN1": false, "EUC_JP": false, "SQL_ASCII": false, "": false,
	} {
		if got := UnsafeEncoding(name); got != want {
			t.Errorf("UnsafeEncoding(%q) = %v, want %v", name, got, want)
		}
	}
}
