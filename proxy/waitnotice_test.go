package proxy

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/config"
)

// TestQueryWaitNotice: a client waiting for a server longer than query_wait_notice gets one
// NOTICE saying so and then its result once a server is free; a short wait gets no notice.
func TestQueryWaitNotice(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.PoolSize = 1
		cfg.QueryWaitNotice = 300 * time.Millisecond
		cfg.QueryWaitTimeout = 10 * time.Second
	})
	ctx := testCtx(t)
	holder := p.connect(t, pgx.QueryExecModeSimpleProtocol)

	var mu sync.Mutex
	var notices []string
	cc, err := pgx.ParseConfig(p.dsn("postgres", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	cc.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	cc.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		mu.Lock()
		notices = append(notices, n.Severity+" "+n.Code+" "+n.Message)
		mu.Unlock()
	}
	waiter, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	defer waiter.Close(context.Background())
	got := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), notices...)
	}

	// Free pool: no wait, no notice.
	var v int
	if err := waiter.QueryRow(ctx, "select 1").Scan(&v); err != nil || v != 1 {
		t.Fatalf("query on a free pool: %d, %v", v, err)
	}
	if n := got(); len(n) != 0 {
		t.Fatalf("notices without a wait: %q", n)
	}

	// The only server is held in a transaction for longer than query_wait_notice.
	if _, err := holder.Exec(ctx, "begin"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		var v int
		err := waiter.QueryRow(ctx, "select 42").Scan(&v)
		if err == nil && v != 42 {
			err = fmt.Errorf("got %d, want 42", v)
		}
		done <- err
	}()
	time.Sleep(800 * time.Millisecond)
	if _, err := holder.Exec(ctx, "commit"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("waiting query: %v", err)
	}
	n := got()
	if len(n) != 1 {
		t.Fatalf("notices after an 800ms wait: %q, want one", n)
	}
	if !strings.HasPrefix(n[0], "NOTICE 00000 pgsidecar: waiting for a server connection for 300ms: 1 of 1 in use, 1 clients waiting") {
		t.Errorf("notice = %q", n[0])
	}
	t.Logf("notice: %s", n[0])
}
