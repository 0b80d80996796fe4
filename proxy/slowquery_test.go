package proxy

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/config"
)

// syncBuffer is a bytes.Buffer that a logger may write while a test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestSlowQueryLog: a request slower than slow_query_threshold gives exactly one slow-query
// line, with its duration, database, user and statement text, and never its parameter values;
// faster ones give none. Both pool modes.
func TestSlowQueryLog(t *testing.T) {
	c := cluster(t)
	for _, mode := range []string{config.PoolModeTransaction, config.PoolModeSession} {
		t.Run(mode, func(t *testing.T) {
			var logs syncBuffer
			p := startProxyLogging(t, c, func(cfg *config.Config) {
				cfg.PoolMode = mode
				cfg.SlowQueryThreshold = 200 * time.Millisecond
			}, &logs)
			ctx := testCtx(t)
			conn := p.connect(t, pgx.QueryExecModeCacheStatement)
			const secret = "0.3000001" // a parameter value: must never be logged
			for range 3 {
				if _, err := conn.Exec(ctx, "select 1"); err != nil {
					t.Fatal(err)
				}
			}
			start := time.Now()
			if _, err := conn.Exec(ctx, "select pg_sleep($1::float8), 'slow marker'", secret); err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			conn.Close(ctx)
			var lines []string
			for line := range strings.Lines(logs.String()) {
				if strings.Contains(line, `"msg":"slow query"`) {
					lines = append(lines, line)
				}
			}
			if len(lines) != 1 {
				t.Fatalf("%d slow-query lines, want 1:\n%s", len(lines), logs.String())
			}
			line := lines[0]
			for _, want := range []string{`"query":"select pg_sleep($1::float8), 'slow marker'"`, `"user":"postgres"`, `"database":"postgres"`, `"duration_seconds":0.3`} {
				if !strings.Contains(line, want) {
					t.Errorf("slow-query line lacks %s:\n%s", want, line)
				}
			}
			if strings.Contains(logs.String(), secret) {
				t.Errorf("a parameter value reached the log:\n%s", logs.String())
			}
			t.Logf("took %v: %s", took, line)
		})
	}
}
