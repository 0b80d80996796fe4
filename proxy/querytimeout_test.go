package proxy

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/config"
)

// TestQueryTimeoutPerRequest: query_timeout counts from each request's start, also when the
// timer was armed for an earlier request of the session; a request past it is cancelled.
func TestQueryTimeoutPerRequest(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.QueryTimeout = time.Second })
	conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	ctx := testCtx(t)
	// Back to back, each under a second, together well over it.
	for i, sleep := range []string{"0.6", "0.7", "0.7"} {
		if _, err := conn.Exec(ctx, "select pg_sleep("+sleep+")"); err != nil {
			t.Fatalf("request %d (pg_sleep(%s)) under query_timeout: %v", i, sleep, err)
		}
	}
	start := time.Now()
	_, err := conn.Exec(ctx, "select pg_sleep(5)")
	if pgErr := pgErrorOf(err); pgErr == nil || pgErr.Code != "57014" {
		t.Fatalf("request past query_timeout: %v, want 57014", err)
	}
	if elapsed := time.Since(start); elapsed < time.Second || elapsed > 3*time.Second {
		t.Errorf("cancelled after %v, want about 1s", elapsed)
	}
	var v int
	if err := conn.QueryRow(ctx, "select 5").Scan(&v); err != nil || v != 5 {
		t.Fatalf("after the cancel: %d, %v", v, err)
	}
}
