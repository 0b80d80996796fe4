package proxy

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/internal/retry"
)

// TestPanicEndsOneSession: a panic in one session's client loop, relay loop or timer closes
// that session (FATAL XX000), destroys its server connection and counts in
// pgsidecar_panics_total; another session works before, during and after.
func TestPanicEndsOneSession(t *testing.T) {
	c := cluster(t)
	type site struct {
		name  string
		hooks func(boom func(*session)) testHooks
		sql   string
	}
	sites := []site{
		{"client_loop", func(b func(*session)) testHooks { return testHooks{clientBatch: b} }, "select 1"},
		{"relay_loop", func(b func(*session)) testHooks { return testHooks{serverBatch: b} }, "select 1"},
		{"query_timer", func(b func(*session)) testHooks { return testHooks{queryTimer: b} }, "select pg_sleep(3)"},
	}
	for _, st := range sites {
		t.Run(st.name, func(t *testing.T) {
			ctx := testCtx(t)
			p := startProxy(t, c, func(cfg *config.Config) {
				cfg.PoolSize = 2
				cfg.QueryTimeout = 300 * time.Millisecond
			})
			// Only the "boom" client, once it holds a server, panics.
			p.srv.hooks = st.hooks(func(s *session) {
				s.mu.Lock()
				boom := s.Params["application_name"] == "boom" && s.server != nil
				s.mu.Unlock()
				if boom {
					panic("test panic in " + st.name)
				}
			})
			other := p.connect(t, pgx.QueryExecModeSimpleProtocol)
			if v := queryInt(t, other, "select 1"); v != 1 {
				t.Fatalf("select 1 = %d", v)
			}
			cc, err := pgx.ParseConfig(p.dsn("postgres", "postgres"))
			if err != nil {
				t.Fatal(err)
			}
			cc.RuntimeParams["application_name"] = "boom"
			cc.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
			boom, err := pgx.ConnectConfig(ctx, cc)
			if err != nil {
				t.Fatal(err)
			}
			defer boom.Close(context.Background())
			if _, err := boom.Exec(ctx, "begin"); err != nil && st.name != "relay_loop" {
				t.Fatalf("begin: %v", err)
			}
			_, err = boom.Exec(ctx, st.sql)
			if pe := pgErrorOf(err); pe == nil || pe.Code != retry.CodeInternalError || pe.Severity != "FATAL" {
				// The relay loop may panic on the BEGIN's reply already.
				if st.name != "relay_loop" || !boom.IsClosed() {
					t.Fatalf("%s after the panic: %v, want FATAL XX000", st.sql, err)
				}
			}
			for i := range 5 {
				if v := queryInt(t, other, fmt.Sprintf("select %d", i)); v != int64(i) {
					t.Fatalf("select %d = %d", i, v)
				}
			}
			if got := testutil.ToFloat64(p.srv.metrics.panics); got != 1 {
				t.Errorf("pgsidecar_panics_total = %v, want 1", got)
			}
			// The server connection the panicking session held is closed, not reused.
			admin := direct(t, c)
			waitFor(t, ctx, 10*time.Second, "the panicking session's server connection to close", func() error {
				var n int
				if err := admin.QueryRow(ctx, "select count(*) from pg_stat_activity where application_name = 'boom'").Scan(&n); err != nil {
					return err
				}
				if n != 0 {
					return fmt.Errorf("%d backends still open", n)
				}
				return nil
			})
		})
	}
}
