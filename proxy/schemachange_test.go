package proxy

// A column's type changing under a client's cached statements: in transaction mode a client's
// statement is prepared on several servers, each of which learns of the change only when it
// next runs it. Whatever the proxy does about it, the client must end up with what PostgreSQL
// alone gives it (an error once, then the new rows) or better, and never with values decoded
// as the old type.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/retry"
)

// twoServers steers a client's next requests to a chosen server of a proxy with pool_size 2:
// a helper client holds the other server in an open transaction meanwhile, so the pool has only
// the chosen one to give.
type twoServers struct {
	t    testing.TB
	pids [2]int64
	h    [2]*pgx.Conn
}

func newTwoServers(t testing.TB, p *testProxy) *twoServers {
	t.Helper()
	ts := &twoServers{t: t}
	for i := range ts.h {
		ts.h[i] = connectWith(t, p, pgx.QueryExecModeSimpleProtocol, nil)
		mustExec(t, ts.h[i], "begin")
		ts.pids[i] = queryInt(t, ts.h[i], "select pg_backend_pid()")
	}
	if ts.pids[0] == ts.pids[1] {
		t.Fatalf("two open transactions share pid %d", ts.pids[0])
	}
	for _, h := range ts.h {
		mustExec(t, h, "commit")
	}
	return ts
}

// on runs fn while only server i (0 or 1) is free for it.
func (ts *twoServers) on(i int, fn func()) {
	t := ts.t
	t.Helper()
	want, other := ts.pids[i], ts.pids[1-i]
	h0, h1 := ts.h[0], ts.h[1]
	mustExec(t, h0, "begin")
	switch pid := queryInt(t, h0, "select pg_backend_pid()"); pid {
	case other:
		fn()
		mustExec(t, h0, "commit")
	case want:
		// h0 got the wanted server: h1 takes the other before h0 lets it go.
		mustExec(t, h1, "begin")
		if pid1 := queryInt(t, h1, "select pg_backend_pid()"); pid1 != other {
			t.Fatalf("helper got pid %d, want %d (the pool's servers changed: %v)", pid1, other, ts.pids)
		}
		mustExec(t, h0, "commit")
		fn()
		mustExec(t, h1, "commit")
	default:
		t.Fatalf("helper got pid %d, not one of the pool's servers %v: a server was replaced", pid, ts.pids)
	}
}

// scKind is a column type change and the values the column holds before and after it.
type scKind struct {
	name, before, alter string
	// valBefore and valAfter are the normalised value of v for row id (1..3).
	valBefore, valAfter func(id int) string
}

// The text values have the byte length of the old type's binary form: a client that decodes
// them with the old description gets a wrong number rather than a decoding error.
var scKinds = []scKind{
	{
		name:      "int4_to_text",
		before:    "v int4",
		alter:     "alter column v type text using v::text",
		valBefore: func(id int) string { return fmt.Sprintf("int:%d", 1000+id) },
		valAfter:  func(id int) string { return fmt.Sprintf("text:%d", 1000+id) },
	},
	{
		name:      "int8_to_text",
		before:    "v int8",
		alter:     "alter column v type text using v::text",
		valBefore: func(id int) string { return fmt.Sprintf("int:%d", 10000000+id) },
		valAfter:  func(id int) string { return fmt.Sprintf("text:%d", 10000000+id) },
	},
	{
		name:      "int4_to_numeric",
		before:    "v int4",
		alter:     "alter column v type numeric using v + 0.5",
		valBefore: func(id int) string { return fmt.Sprintf("int:%d", 1000+id) },
		valAfter:  func(id int) string { return fmt.Sprintf("numeric:%d.5", 1000+id) },
	},
}

// initial is the column's value for row id before the change.
func (k scKind) initial(id int) string {
	if strings.HasPrefix(k.before, "v int8") {
		return fmt.Sprint(10000000 + id)
	}
	return fmt.Sprint(1000 + id)
}

// scStep is one query of the sequence: which variant, which row, on which server (proxy only).
type scStep struct {
	after  bool
	star   bool
	id     int
	server int
}

func (s scStep) String() string {
	phase, q := "before", "cols"
	if s.after {
		phase = "after"
	}
	if s.star {
		q = "star"
	}
	return fmt.Sprintf("%s/%s/id=%d/server=%d", phase, q, s.id, s.server)
}

// scRounds returns the queries before and after the change: each round runs both variants on one
// server, alternating, so that each server prepares the statements before the change and meets
// the change on its own afterwards.
func scRounds(after bool, n int) [][]scStep {
	rounds := make([][]scStep, n)
	for r := range n {
		rounds[r] = []scStep{
			{after: after, id: 1 + r%3, server: r % 2},
			{after: after, star: true, id: 1 + (r+1)%3, server: r % 2},
		}
	}
	return rounds
}

// scNormalise renders a decoded value with its Go type, so that a number decoded from a text
// column's bytes cannot pass for the text.
func scNormalise(v any) string {
	switch x := v.(type) {
	case int16, int32, int64:
		return fmt.Sprintf("int:%d", x)
	case string:
		return "text:" + x
	case pgtype.Numeric:
		dv, err := x.Value()
		if err != nil {
			return fmt.Sprintf("numeric-error:%v", err)
		}
		return fmt.Sprintf("numeric:%v", dv)
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T:%v", v, v)
}

// scQuery runs one step and returns its outcome: "id=... v=..." or "error <SQLSTATE>" or
// "error: <text>" for a client-side failure, or "hang".
func scQuery(ctx context.Context, conn *pgx.Conn, table string, s scStep) string {
	sql := fmt.Sprintf("select id, v from %s where id = $1", table)
	if s.star {
		sql = fmt.Sprintf("select * from %s where id = $1", table)
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rows, err := conn.Query(qctx, sql, s.id)
	if err == nil {
		var out []string
		for rows.Next() {
			vals, verr := rows.Values()
			if verr != nil {
				err = verr
				break
			}
			if len(vals) != 2 {
				out = append(out, fmt.Sprintf("%d columns: %v", len(vals), vals))
				continue
			}
			out = append(out, fmt.Sprintf("id=%s v=%s", scNormalise(vals[0]), scNormalise(vals[1])))
		}
		rows.Close()
		if err == nil {
			err = rows.Err()
		}
		if err == nil {
			return strings.Join(out, "; ")
		}
	}
	if qctx.Err() != nil {
		return "hang"
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return "error " + pgErr.Code
	}
	return "error: " + err.Error()
}

// scRun creates the table, runs the sequence through conn (steered by ts, when not nil), changes
// the column's type from admin half-way, and returns each step's outcome.
func scRun(t *testing.T, admin, conn *pgx.Conn, ts *twoServers, k scKind, table string, before, after [][]scStep) []string {
	t.Helper()
	ctx := testCtx(t)
	mustExec(t, admin, fmt.Sprintf("drop table if exists %s; create table %s (id int4 primary key, %s)", table, table, k.before))
	for id := 1; id <= 3; id++ {
		mustExec(t, admin, fmt.Sprintf("insert into %s values (%d, %s)", table, id, k.initial(id)))
	}
	var outs []string
	hung := false
	run := func(rounds [][]scStep) {
		for _, round := range rounds {
			do := func() {
				for _, s := range round {
					if hung {
						outs = append(outs, "not run (after a hang)")
						continue
					}
					out := scQuery(ctx, conn, table, s)
					hung = out == "hang"
					outs = append(outs, out)
				}
			}
			if ts != nil && !hung {
				ts.on(round[0].server, do)
			} else {
				do()
			}
		}
	}
	run(before)
	mustExec(t, admin, fmt.Sprintf("alter table %s %s", table, k.alter))
	run(after)
	return outs
}

func TestColumnTypeChangeAllExecModes(t *testing.T) {
	c := cluster(t)
	admin := direct(t, c)
	before, after := scRounds(false, 4), scRounds(true, 6)
	var steps []scStep
	for _, r := range append(append([][]scStep{}, before...), after...) {
		steps = append(steps, r...)
	}
	for _, k := range scKinds {
		t.Run(k.name, func(t *testing.T) {
			for _, m := range allExecModes {
				t.Run(modeName(m), func(t *testing.T) {
					table := "sc_" + k.name
					t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "drop table if exists "+table) })

					directConn := scDirect(t, c, m)
					want := scRun(t, admin, directConn, nil, k, table, before, after)

					p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 2 })
					ts := newTwoServers(t, p)
					proxied := connectWith(t, p, m, nil)
					got := scRun(t, admin, proxied, ts, k, table, before, after)

					var diffs []string
					for i, s := range steps {
						correct := fmt.Sprintf("id=int:%d v=%s", s.id, k.valBefore(s.id))
						if s.after {
							correct = fmt.Sprintf("id=int:%d v=%s", s.id, k.valAfter(s.id))
						}
						if want[i] != correct && !strings.HasPrefix(want[i], "error") {
							t.Errorf("%s: directly against PostgreSQL got %q, want %q or an error", s, want[i], correct)
						}
						if got[i] == want[i] {
							continue
						}
						verdict := "WORSE"
						if got[i] == correct {
							verdict = "better (the new rows where PostgreSQL fails)"
						}
						diffs = append(diffs, fmt.Sprintf("  %-32s direct %-28q proxy %-28q %s", s, want[i], got[i], verdict))
						if got[i] != correct {
							t.Errorf("%s: through the proxy %q; directly %q; correct %q", s, got[i], want[i], correct)
						}
						if strings.Contains(got[i], retry.CodeProtocolViolation) {
							t.Errorf("%s: protocol violation through the proxy", s)
						}
					}
					if len(diffs) > 0 {
						t.Logf("steps that differ from PostgreSQL (schema_change retries: %v):\n%s",
							retriesTotal(t, p, "schema_change"), strings.Join(diffs, "\n"))
					}
					// A wrong decoding would stay in the client's cache: a fresh client in
					// the same mode must read the new type on either server.
					fresh := connectWith(t, p, m, nil)
					for srv := range 2 {
						ts.on(srv, func() {
							s := scStep{after: true, id: 2, server: srv}
							correct := fmt.Sprintf("id=int:2 v=%s", k.valAfter(2))
							if out := scQuery(testCtx(t), fresh, table, s); out != correct {
								t.Errorf("fresh client on server %d: %q, want %q", srv, out, correct)
							}
						})
					}
					waitServersReleased(t, p)
				})
			}
		})
	}
}

// scDirect opens a pgx connection in mode m straight to the cluster.
func scDirect(t testing.TB, c *pgtest.Cluster, m pgx.QueryExecMode) *pgx.Conn {
	t.Helper()
	cc, err := pgx.ParseConfig(c.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	cc.DefaultQueryExecMode = m
	conn, err := pgx.ConnectConfig(testCtx(t), cc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}
