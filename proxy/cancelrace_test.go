package proxy

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/config"
)

// TestCancelHitsOnlyItsOwnQuery: with one server shared by two clients, client A cancels its
// query just as it completes, 200 times, while client B runs short queries in a loop. A cancel
// that arrives after A's query finished must not hit B's query on the same server.
func TestCancelHitsOnlyItsOwnQuery(t *testing.T) {
	c := cluster(t)
	ctx := testCtx(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 1 })
	a := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	b := p.connect(t, pgx.QueryExecModeSimpleProtocol)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var bErrs []error
	bRuns := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := b.Exec(ctx, "select pg_sleep(0.01)"); err != nil {
				bErrs = append(bErrs, err)
				if len(bErrs) > 5 {
					return
				}
			}
			bRuns++
		}
	}()
	cancelled := 0
	for i := 0; i < 200; i++ {
		done := make(chan error, 1)
		go func() {
			_, err := a.Exec(ctx, "select pg_sleep(0.05)")
			done <- err
		}()
		// Near completion: the query's own 50 ms, less or more a few ms, plus the wait for
		// the server that B may hold.
		time.Sleep(time.Duration(40+rand.IntN(20)) * time.Millisecond)
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := a.PgConn().CancelRequest(cctx); err != nil {
			t.Fatalf("cancel request: %v", err)
		}
		cancel()
		if err := <-done; err != nil {
			if pe := pgErrorOf(err); pe == nil || pe.Code != "57014" {
				t.Fatalf("A's query: %v", err)
			}
			cancelled++
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("A's query was cancelled %d times of 200; B ran %d queries", cancelled, bRuns)
	for _, err := range bErrs {
		t.Errorf("B got an error: %v", err)
	}
	if bRuns == 0 {
		t.Error("B ran no query")
	}
}
