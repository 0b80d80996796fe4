package proxy

import (
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/config"
)

// TestRelayWorkersReused checks that transaction-mode relay loops run on kept workers (no
// goroutine per transaction, and no more of them than servers were in use at once), and that
// Shutdown ends them.
func TestRelayWorkersReused(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 3 })
	conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	ctx := testCtx(t)
	for i := range 50 {
		var got int
		if err := conn.QueryRow(ctx, "select $1::int", i).Scan(&got); err != nil || got != i {
			t.Fatalf("query %d: got %d, %v", i, got, err)
		}
	}
	w := &p.srv.relays
	w.mu.Lock()
	idle := len(w.idle)
	w.mu.Unlock()
	// One client, one transaction at a time: a worker or two (one may still be parking when
	// the next transaction starts) served all 50 loops.
	if idle < 1 || idle > 2 {
		t.Errorf("%d idle relay workers after 50 sequential transactions, want 1 or 2", idle)
	}
	conn.Close(ctx)
	if err := p.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	idle, stopped := len(w.idle), w.stopped
	w.mu.Unlock()
	if idle != 0 || !stopped {
		t.Errorf("after Shutdown: %d idle workers, stopped=%v; want 0, true", idle, stopped)
	}
	w.wg.Wait() // returns only when every worker ended
}
