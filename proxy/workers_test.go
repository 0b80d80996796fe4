package proxy

import (
	"runtime"
	"testing"
	"time"

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

// blockTask is a task that waits for release, telling started when it runs.
type blockTask struct{ started, release chan struct{} }

func (t blockTask) run(*relayState) {
	t.started <- struct{}{}
	<-t.release
}

// TestWorkersTrim: a burst of tasks leaves as many idle workers; trim ends all but the ones
// asked for, their goroutines included, and the workers left still run tasks.
func TestWorkersTrim(t *testing.T) {
	var w workers[blockTask]
	defer w.stop()
	const burst = 20
	started, release := make(chan struct{}), make(chan struct{})
	for range burst {
		w.start(blockTask{started, release})
		<-started
	}
	before := runtime.NumGoroutine()
	close(release)
	waitIdle := func(want int) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			w.mu.Lock()
			n := len(w.idle)
			w.mu.Unlock()
			if n == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d idle workers, want %d", n, want)
			}
		}
	}
	waitIdle(burst)
	w.trim(3)
	w.mu.Lock()
	idle := len(w.idle)
	w.mu.Unlock()
	if idle != 3 {
		t.Errorf("%d idle workers after trim(3)", idle)
	}
	// The ended workers' goroutines go (trim returns once they are in their deferred calls;
	// the runtime may count them a moment longer).
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > before-(burst-3); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after trim, %d before: want %d fewer", runtime.NumGoroutine(), before, burst-3)
		}
	}
	started2, release2 := make(chan struct{}), make(chan struct{})
	w.start(blockTask{started2, release2})
	<-started2
	close(release2)
	w.trim(10) // fewer idle than that: nothing to end
	waitIdle(3)
}
