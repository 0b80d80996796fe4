package main

import (
	"io"
	"log/slog"
	"testing"

	"github.com/pgsidecar/pgsidecar/pool"
)

func TestProcsGovernor(t *testing.T) {
	g := newProcsGovernor(1, 2, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	var sets []int
	g.set = func(n int) { sets = append(sets, n) }
	stats := func(waiting, inUse int) []pool.Stat {
		// Two pools, to check that they are summed.
		return []pool.Stat{{Waiting: waiting / 2, InUse: inUse / 2}, {Waiting: waiting - waiting/2, InUse: inUse - inUse/2}}
	}
	steps := []struct {
		waiting, inUse int
		want           int // GOMAXPROCS after the sample
	}{
		{0, 4, 1},
		{100, 20, 1}, // deep, once
		{100, 20, 2}, // deep twice: raised
		{60, 20, 2},  // between the thresholds: stays
		{10, 20, 2},  // shallow...
		{10, 20, 2}, {10, 20, 2}, {10, 20, 2}, {10, 20, 2}, {10, 20, 2}, {10, 20, 2},
		{10, 20, 1}, // ...eight times: lowered
		{0, 0, 1},   // idle
	}
	for i, s := range steps {
		g.sample(stats(s.waiting, s.inUse))
		if g.current != s.want {
			t.Fatalf("step %d (%d waiting, %d in use): GOMAXPROCS %d, want %d", i, s.waiting, s.inUse, g.current, s.want)
		}
	}
	if len(sets) != 2 || sets[0] != 2 || sets[1] != 1 {
		t.Errorf("GOMAXPROCS set to %v, want [2 1]", sets)
	}
	if newProcsGovernor(1, 0, nil, nil).enabled() || newProcsGovernor(0, 2, nil, nil).enabled() {
		t.Error("governor enabled with max_procs_queued 0 or max_procs 0")
	}
}
