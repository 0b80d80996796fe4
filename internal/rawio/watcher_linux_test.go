package rawio

import (
	"testing"
	"time"
)

type chanWaker chan struct{}

func (c chanWaker) Wake() { c <- struct{}{} }

func woken(t *testing.T, c chanWaker, want bool) {
	t.Helper()
	select {
	case <-c:
		if !want {
			t.Fatal("woken, want not")
		}
	case <-time.After(200 * time.Millisecond):
		if want {
			t.Fatal("not woken within 200ms")
		}
	}
}

func TestWatcher(t *testing.T) {
	w, err := NewWatcher()
	if err != nil {
		t.Fatal(err)
	}
	a, b := pair(t)
	ra := New(a)
	wk := make(chanWaker, 4)

	// Nothing to read: no wake. Data: one wake, and only one (one-shot).
	if err := w.Watch(ra, 1, wk); err != nil {
		t.Fatal(err)
	}
	woken(t, wk, false)
	if _, err := b.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	woken(t, wk, true)
	woken(t, wk, false)
	if w.Len() != 0 {
		t.Fatalf("Len = %d after the wake, want 0", w.Len())
	}

	// Data already there (unread) wakes at once: readiness is level-triggered.
	if err := w.Watch(ra, 2, wk); err != nil {
		t.Fatal(err)
	}
	woken(t, wk, true)
	buf := make([]byte, 8)
	if n, err := ra.Read(buf); n != 1 || err != nil {
		t.Fatalf("Read = %d, %v, want 1 byte", n, err)
	}

	// Forgotten watches do not wake.
	if err := w.Watch(ra, 3, wk); err != nil {
		t.Fatal(err)
	}
	w.Forget(3)
	if _, err := b.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	woken(t, wk, false)
	if n, err := ra.Read(buf); n != 1 || err != nil {
		t.Fatalf("Read = %d, %v, want 1 byte", n, err)
	}

	// A hang-up wakes.
	if err := w.Watch(ra, 4, wk); err != nil {
		t.Fatal(err)
	}
	_ = b.Close()
	woken(t, wk, true)

	// Close wakes the watches still waiting, and refuses new ones.
	c, _ := pair(t)
	if err := w.Watch(New(c), 5, wk); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	woken(t, wk, true)
	if err := w.Watch(New(c), 6, wk); err != ErrWatcherClosed {
		t.Fatalf("Watch after Close = %v, want ErrWatcherClosed", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close = %v, want nil", err)
	}
}

// TestWatchAllocatesNothing: a watch costs its map entry and no allocation of its own (one
// per login under a connection per transaction).
func TestWatchAllocatesNothing(t *testing.T) {
	w, err := NewWatcher()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	a, _ := pair(t)
	ra := New(a)
	wk := make(chanWaker, 4)
	n := testing.AllocsPerRun(100, func() {
		if err := w.Watch(ra, 7, wk); err != nil {
			t.Fatal(err)
		}
		w.Forget(7)
	})
	if n != 0 {
		t.Errorf("%v allocations per Watch, want 0", n)
	}
}
