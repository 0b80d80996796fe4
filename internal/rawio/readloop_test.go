package rawio

import (
	"bytes"
	"errors"
	"io"
	"os"
	"testing"
	"time"
)

// pingReader reads replies of a fixed size for TestReadLoop: each complete one is collected
// and answered with the next request, until want have come.
type pingReader struct {
	buf   []byte
	w     int
	size  int
	got   [][]byte
	want  int
	next  func() // sends the next request
	errAt error  // the read error Handle saw
}

func (r *pingReader) ReadBuffer() []byte { return r.buf[r.w:] }

func (r *pingReader) Handle(n int, err error) bool {
	r.w += n
	for r.w >= r.size {
		r.got = append(r.got, bytes.Clone(r.buf[:r.size]))
		copy(r.buf, r.buf[r.size:r.w])
		r.w -= r.size
		if len(r.got) == r.want {
			return false
		}
		r.next()
	}
	if err != nil {
		r.errAt = err
		return false
	}
	return true
}

// TestReadLoop: a request-and-reply exchange read with a ReadLoop gets every reply whole and in
// order, and after the first wait makes no read that finds nothing, where Read makes one
// before every wait.
func TestReadLoop(t *testing.T) {
	a, b := pair(t)
	c := New(a)
	const rounds, size = 200, 100
	// The peer answers each request (one byte) with a reply of size bytes numbered by round.
	go func() {
		var req [1]byte
		for i := 0; ; i++ {
			if _, err := io.ReadFull(b, req[:]); err != nil {
				return
			}
			if _, err := b.Write(bytes.Repeat([]byte{byte(i)}, size)); err != nil {
				return
			}
		}
	}()
	ask := func() {
		if _, err := c.Write([]byte{'?'}); err != nil {
			t.Error(err)
		}
	}
	r := &pingReader{buf: make([]byte, 4096), size: size, want: rounds, next: ask}
	l := NewReadLoop(c)
	ask()
	if err := l.Run(r); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(r.got) != rounds {
		t.Fatalf("got %d replies, want %d", len(r.got), rounds)
	}
	for i, g := range r.got {
		if !bytes.Equal(g, bytes.Repeat([]byte{byte(i)}, size)) {
			t.Fatalf("reply %d is %v", i, g[:8])
		}
	}
	// The first read may find nothing (the first reply may not be there yet), and an odd
	// edge may wake a wait twice; Read would find nothing about once per round.
	if l.emptyReads > rounds/20 {
		t.Errorf("ReadLoop made %d reads that found nothing in %d rounds, want at most %d", l.emptyReads, rounds, rounds/20)
	}
	t.Logf("%d empty reads in %d rounds", l.emptyReads, rounds)

	// End of file reaches the Reader; Run returns nil.
	r2 := &pingReader{buf: make([]byte, 4096), size: size, want: 1, next: func() {}}
	b.Close()
	if err := l.Run(r2); err != nil || !errors.Is(r2.errAt, io.EOF) {
		t.Fatalf("Run after the peer closed: %v, Handle saw %v; want nil and EOF", err, r2.errAt)
	}
}

// TestReadLoopDeadline: a read deadline ends a waiting Run with the deadline's error, which the
// Reader does not see, and a later Run reads what arrived meanwhile.
func TestReadLoopDeadline(t *testing.T) {
	a, b := pair(t)
	c := New(a)
	l := NewReadLoop(c)
	r := &pingReader{buf: make([]byte, 64), size: 4, want: 1, next: func() {}}
	_ = a.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if err := l.Run(r); !errors.Is(err, os.ErrDeadlineExceeded) || r.errAt != nil {
		t.Fatalf("Run: %v, Handle saw %v; want the deadline's error only", err, r.errAt)
	}
	_ = a.SetReadDeadline(time.Time{})
	if _, err := b.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if err := l.Run(r); err != nil || len(r.got) != 1 || string(r.got[0]) != "ping" {
		t.Fatalf("Run: %v, got %q", err, r.got)
	}
}

// sinkReader takes want bytes and drops them.
type sinkReader struct {
	buf     []byte
	n, want int
}

func (r *sinkReader) ReadBuffer() []byte { return r.buf }

func (r *sinkReader) Handle(n int, err error) bool {
	r.n += n
	return r.n < r.want && err == nil
}

// TestReadLoopNoAllocs: a Run allocates nothing.
func TestReadLoopNoAllocs(t *testing.T) {
	a, b := pair(t)
	l := NewReadLoop(New(a))
	r := &sinkReader{buf: make([]byte, 64)}
	msg := []byte("ping")
	allocs := testing.AllocsPerRun(100, func() {
		r.n, r.want = 0, len(msg)
		if _, err := b.Write(msg); err != nil {
			t.Fatal(err)
		}
		if err := l.Run(r); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Run: %.1f allocations, want 0", allocs)
	}
}
