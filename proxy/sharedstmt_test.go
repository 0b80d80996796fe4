package proxy

// Statements shared between clients on a server (pgsidecar_<n>): SQL that drops prepared
// statements must drop the issuing client's own, as PostgreSQL would, whichever protocol carries
// it, and must never take another client's statements from under it; a server that lost a shared
// statement anyway gets it again.

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/config"
)

// ssOutcome renders a statement's result for comparison: its single value, or its SQLSTATE.
func ssOutcome(rows [][]string, err error) string {
	if err != nil {
		if pgErr := pgErrorOf(err); pgErr != nil {
			return "error " + pgErr.Code
		}
		return "error: " + err.Error()
	}
	return txOne(rows)
}

// ssExtended runs sql through the extended protocol, as pgx does in QueryExecModeExec, and
// renders its command tag or SQLSTATE.
func ssExtended(ctx context.Context, conn *pgx.Conn, sql string) string {
	rows, err := conn.Query(ctx, sql, pgx.QueryExecModeExec)
	if err == nil {
		rows.Close()
		err = rows.Err()
	}
	if err != nil {
		return ssOutcome(nil, err)
	}
	return rows.CommandTag().String()
}

// ssSimple runs sql as a simple Query and renders its command tag or SQLSTATE.
func ssSimple(ctx context.Context, pc *pgconn.PgConn, sql string) string {
	results, err := pc.Exec(ctx, sql).ReadAll()
	if err != nil {
		return ssOutcome(nil, err)
	}
	if len(results) != 1 {
		return fmt.Sprintf("%d results", len(results))
	}
	return results[0].CommandTag.String()
}

func TestDiscardAllExtendedKeepsOthersStatements(t *testing.T) {
	c := cluster(t)
	// setup starts a proxy with one server, on which client A prepares and runs a1, and
	// returns A, B (pgx) and a check that A's statement still gives the right value.
	setup := func(t *testing.T) (a *pgconn.PgConn, b *pgx.Conn, checkA func(step string)) {
		p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 1 })
		ctx := testCtx(t)
		a = txPgconn(t, p)
		if _, err := a.Prepare(ctx, "a1", "select $1::int4 + 100", nil); err != nil {
			t.Fatal(err)
		}
		if got := ssOutcome(txExecPrepared(ctx, a, "a1", "1")); got != "101" {
			t.Fatalf("a1(1) = %s, want 101", got)
		}
		b = connectWith(t, p, pgx.QueryExecModeExec, nil)
		n := 1
		checkA = func(step string) {
			t.Helper()
			n++
			if got := ssOutcome(txExecPrepared(ctx, a, "a1", fmt.Sprint(n))); got != fmt.Sprint(100+n) {
				t.Errorf("after %s: A's a1(%d) = %s, want %d", step, n, got, 100+n)
			}
		}
		return a, b, checkA
	}

	for _, cmd := range []string{"DISCARD ALL", "DEALLOCATE ALL"} {
		t.Run(strings.ReplaceAll(strings.ToLower(cmd), " ", "_")+"_extended", func(t *testing.T) {
			_, b, checkA := setup(t)
			if got := ssExtended(testCtx(t), b, cmd); got != cmd {
				t.Fatalf("B's extended %s: %s, want %s", cmd, got, cmd)
			}
			checkA("B's extended " + cmd)
			// Still right the second time: a failure must not leave the statement broken.
			checkA("B's extended " + cmd + " and one more execution")
		})
	}

	t.Run("deallocate_shared_name", func(t *testing.T) {
		a, b, checkA := setup(t)
		ctx := testCtx(t)
		// One server: A's query runs where its statement lives, under the shared name.
		rows, err := txSimple(ctx, a, "select name from pg_prepared_statements where name like 'pgsidecar%' order by name")
		if err != nil {
			t.Fatal(err)
		}
		names := []string{"pgsidecar_1"}
		for _, r := range rows {
			if r[0] != "pgsidecar_1" {
				names = append(names, r[0])
			}
		}
		if len(rows) != 1 {
			t.Errorf("server-side statements %q, want exactly one (A's a1)", rows)
		}
		for _, name := range names {
			// B never prepared it: PostgreSQL would say it does not exist.
			if got := ssSimple(ctx, b.PgConn(), "DEALLOCATE "+name); got != "error 26000" {
				t.Errorf("B's simple DEALLOCATE %s: %s, want error 26000", name, got)
			}
			checkA("B's simple DEALLOCATE " + name)
			if got := ssExtended(ctx, b, "DEALLOCATE "+name); got != "error 26000" {
				t.Errorf("B's extended DEALLOCATE %s: %s, want error 26000", name, got)
			}
			checkA("B's extended DEALLOCATE " + name)
		}
	})
}

func TestDeallocateSameThroughBothProtocols(t *testing.T) {
	c := cluster(t)
	cmds := []string{"DEALLOCATE s1", "DEALLOCATE ALL", "DISCARD ALL"}
	protocols := []string{"simple", "extended"}

	// run prepares s1 and s2 on pc, runs cmd through the protocol and returns the outcomes of
	// cmd, then of s1 and s2 executed on each server (steered by ts; once when ts is nil).
	run := func(t *testing.T, pc *pgconn.PgConn, ts *twoServers, cmd, protocol string) []string {
		ctx := testCtx(t)
		if _, err := pc.Prepare(ctx, "s1", "select $1::int4 * 2", nil); err != nil {
			t.Fatal(err)
		}
		if _, err := pc.Prepare(ctx, "s2", "select $1::int4 * 3", nil); err != nil {
			t.Fatal(err)
		}
		// Both statements on both servers, so that each holds them when cmd runs.
		warm := func() {
			for name, want := range map[string]string{"s1": "8", "s2": "12"} {
				if got := ssOutcome(txExecPrepared(ctx, pc, name, "4")); got != want {
					t.Fatalf("%s(4) = %s, want %s", name, got, want)
				}
			}
		}
		if ts == nil {
			warm()
		} else {
			ts.on(0, warm)
			ts.on(1, warm)
		}
		var outs []string
		runCmd := func() {
			if protocol == "simple" {
				outs = append(outs, ssSimple(ctx, pc, cmd))
				return
			}
			res := pc.ExecParams(ctx, cmd, nil, nil, nil, nil).Read()
			if res.Err != nil {
				outs = append(outs, ssOutcome(nil, res.Err))
			} else {
				outs = append(outs, res.CommandTag.String())
			}
		}
		if ts == nil {
			runCmd()
		} else {
			// On server 0, so that server 1 shows what the proxy itself remembers.
			ts.on(0, runCmd)
		}
		execBoth := func() {
			outs = append(outs,
				"s1: "+ssOutcome(txExecPrepared(ctx, pc, "s1", "5")),
				"s2: "+ssOutcome(txExecPrepared(ctx, pc, "s2", "5")))
		}
		if ts == nil {
			execBoth()
		} else {
			ts.on(0, execBoth)
			ts.on(1, execBoth)
		}
		return outs
	}

	for _, cmd := range cmds {
		for _, protocol := range protocols {
			t.Run(strings.ReplaceAll(strings.ToLower(cmd), " ", "_")+"_"+protocol, func(t *testing.T) {
				ctx := testCtx(t)
				dc, err := pgconn.Connect(ctx, c.DSN("postgres"))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = dc.Close(context.Background()) })
				want := run(t, dc, nil, cmd, protocol)
				// What PostgreSQL does: the command succeeds and takes the named statements.
				tag, s2 := cmd, "s2: error 26000"
				if cmd == "DEALLOCATE s1" {
					tag, s2 = "DEALLOCATE", "s2: 15"
				}
				if exp := []string{tag, "s1: error 26000", s2}; fmt.Sprint(want) != fmt.Sprint(exp) {
					t.Fatalf("directly against PostgreSQL: %q, want %q", want, exp)
				}

				p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 2 })
				ts := newTwoServers(t, p)
				got := run(t, txPgconn(t, p), ts, cmd, protocol)
				if got[0] != want[0] {
					t.Errorf("%s via the %s protocol through the proxy: %s, directly: %s", cmd, protocol, got[0], want[0])
				}
				for i, o := range got[1:] {
					if o != want[1+i%2] {
						t.Errorf("after %s via the %s protocol, on server %d: %s, directly: %s", cmd, protocol, i/2, o, want[1+i%2])
					}
				}
			})
		}
	}
}

func TestStatementMissingOnServerReprepared(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 1 })
	ctx := testCtx(t)
	a := txPgconn(t, p)
	if _, err := a.Prepare(ctx, "m1", "select $1::int4 + 7", nil); err != nil {
		t.Fatal(err)
	}
	if got := ssOutcome(txExecPrepared(ctx, a, "m1", "1")); got != "8" {
		t.Fatalf("m1(1) = %s, want 8", got)
	}
	// The classifier does not look inside DO: the server drops the shared statements and the
	// proxy does not know.
	b := txPgconn(t, p)
	if got := ssSimple(ctx, b, "DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$"); got != "DO" {
		t.Fatalf("DO with DEALLOCATE ALL: %s", got)
	}
	rows, err := txSimple(ctx, b, "select count(*) from pg_prepared_statements")
	if err != nil {
		t.Fatal(err)
	}
	if n := txOne(rows); n != "0" {
		t.Fatalf("the server still has %s prepared statements after DEALLOCATE ALL in DO", n)
	}
	for i := 2; i <= 3; i++ {
		if got := ssOutcome(txExecPrepared(ctx, a, "m1", fmt.Sprint(i))); got != fmt.Sprint(i+7) {
			t.Errorf("m1(%d) after the server lost the statement: %s, want %d", i, got, i+7)
		}
	}
}
