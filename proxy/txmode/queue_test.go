package txmode

import (
	"testing"

	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

// TestRespQueueBounded: a client that always keeps one request in flight never lets the
// reply queue empty; its storage must still follow what is in flight.
func TestRespQueueBounded(t *testing.T) {
	var q Queue
	q.push(Entry{msg: 'Q'})
	maxCap := 0
	for i := 0; i < 10_000_000; i++ {
		q.push(Entry{msg: 'Q'})
		q.pop()
		maxCap = max(maxCap, cap(q.e))
	}
	if q.len() != 1 {
		t.Fatalf("queue holds %d entries, want 1", q.len())
	}
	if maxCap > 4*respQueueKeep {
		t.Errorf("queue capacity reached %d entries for 1 in flight", maxCap)
	}
	// A burst is let go once it has drained.
	for i := 0; i < 100_000; i++ {
		q.push(Entry{msg: 'S'})
	}
	for q.len() > 0 {
		q.pop()
	}
	if cap(q.e) > respQueueKeep {
		t.Errorf("an empty queue keeps %d entries of storage", cap(q.e))
	}
}

// TestNeedsServerDroppedTail: the rest of a message being dropped may lie beyond what is
// buffered (found by a COPY test: it panicked).
func TestNeedsServerDroppedTail(t *testing.T) {
	f := wire.Frames{Buf: make([]byte, 16), W: 10, Remaining: 35000, Dropping: true}
	if NeedsServer(&f) {
		t.Error("a dropped message's tail needs a server")
	}
	f = wire.Frames{Buf: []byte{'H', 0, 0, 0, 4, 'Q', 0, 0, 0, 5, 0}, W: 11}
	if !NeedsServer(&f) {
		t.Error("a Query after a Flush needs none")
	}
}
