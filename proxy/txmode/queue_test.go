package txmode

import "testing"

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
