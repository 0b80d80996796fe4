package proxy

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/internal/retry"
)

// allRetries sums pgsidecar_retries_total over every reason.
func allRetries(t testing.TB, p *testProxy) float64 {
	t.Helper()
	var n float64
	for _, r := range []string{retry.ReasonConnection, retry.ReasonShutdown, retry.ReasonStarting, retry.ReasonTooManyConnections,
		retry.ReasonNetwork, retry.ReasonReadOnly, retry.ReasonSerialization, retry.ReasonDeadlock,
		retry.ReasonSchemaChange, retry.ReasonStatementMissing} {
		n += retriesTotal(t, p, r)
	}
	return n
}

// TestRetryNeverRerunsCommittedWork: statements that commit on their own (DO and CALL with
// COMMIT inside) are never sent again after an error, whatever its code and severity: an
// ERROR-severity 57P01/08006/40P01 raised after the COMMIT, and a backend terminated after it.
// Each leaves exactly one row, the client gets the error, and no retry is counted.
func TestRetryNeverRerunsCommittedWork(t *testing.T) {
	c := cluster(t)
	ctx := testCtx(t)
	admin := direct(t, c)
	if _, err := admin.Exec(ctx, `create table once_t (k text);
		create procedure once_p(k text) language plpgsql as $$
		begin insert into once_t values (k); commit; perform pg_sleep(5); end $$`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "drop table once_t; drop procedure once_p") })
	p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 2; cfg.Retries = 3 })

	count := func(k string) int {
		t.Helper()
		var n int
		if err := admin.QueryRow(ctx, "select count(*) from once_t where k = $1", k).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	modes := []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec}
	for _, mode := range modes {
		for _, code := range []string{"57P01", "40P01", "08006"} {
			t.Run(fmt.Sprintf("%s/raise_%s", mode, code), func(t *testing.T) {
				k := fmt.Sprintf("%s-%s", mode, code)
				conn := p.connect(t, mode)
				before := allRetries(t, p)
				sql := fmt.Sprintf(`DO $$BEGIN INSERT INTO once_t VALUES ('%s'); COMMIT; RAISE EXCEPTION USING ERRCODE = '%s'; END$$`, k, code)
				_, err := conn.Exec(ctx, sql)
				pe := pgErrorOf(err)
				if pe == nil || pe.Code != code {
					t.Fatalf("DO: got %v, want SQLSTATE %s", err, code)
				}
				if n := count(k); n != 1 {
					t.Errorf("rows inserted: %d, want exactly 1", n)
				}
				if after := allRetries(t, p); after != before {
					t.Errorf("retries_total moved from %v to %v", before, after)
				}
				// The connection stays up and usable: an ERROR does not end it.
				var one int
				if err := conn.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
					t.Errorf("select 1 after the error: %v, %d", err, one)
				}
			})
		}
		t.Run(fmt.Sprintf("%s/call_terminated", mode), func(t *testing.T) {
			k := fmt.Sprintf("%s-call", mode)
			conn := p.connect(t, mode)
			before := allRetries(t, p)
			done := make(chan error, 1)
			go func() {
				cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				defer cancel()
				_, err := conn.Exec(cctx, "CALL once_p($1)", k)
				done <- err
			}()
			waitFor(t, ctx, 10*time.Second, "the procedure to commit its row", func() error {
				if n := count(k); n != 1 {
					return fmt.Errorf("%d rows", n)
				}
				return nil
			})
			var terminated bool
			if err := admin.QueryRow(ctx, `select pg_terminate_backend(pid) from pg_stat_activity
				where query like 'CALL once_p%' and state = 'active'`).Scan(&terminated); err != nil || !terminated {
				t.Fatalf("terminate the procedure's backend: %v, %v", err, terminated)
			}
			err := <-done
			if err == nil {
				t.Fatal("CALL succeeded after its backend was terminated: it ran again")
			}
			// Give a wrongly re-sent CALL the time to insert again.
			time.Sleep(300 * time.Millisecond)
			if n := count(k); n != 1 {
				t.Errorf("rows inserted: %d, want exactly 1 (client got %v)", n, err)
			}
			if after := allRetries(t, p); after != before {
				t.Errorf("retries_total moved from %v to %v", before, after)
			}
		})
	}
}
