package rawio

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// pair returns two connected TCP sockets on loopback.
func pair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

func TestReadWriteRoundTrip(t *testing.T) {
	a, b := pair(t)
	ra, rb := New(a), New(b)
	if ra == nil || rb == nil {
		t.Fatal("New returned nil for a TCP connection")
	}
	// Larger than a socket buffer, so the writer must wait for the reader.
	msg := bytes.Repeat([]byte("0123456789abcdef"), 1<<18)
	done := make(chan error, 1)
	go func() {
		n, err := ra.Write(msg)
		if err == nil && n != len(msg) {
			err = io.ErrShortWrite
		}
		done <- err
	}()
	got := make([]byte, 0, len(msg))
	buf := make([]byte, 32<<10)
	for len(got) < len(msg) {
		n, err := rb.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("data corrupted in transit")
	}
	a.Close()
	if n, err := rb.Read(buf); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("after close: %d, %v; want 0, EOF", n, err)
	}
}

func TestReadDeadline(t *testing.T) {
	_, b := pair(t)
	rb := New(b)
	_ = b.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	_, err := rb.Read(make([]byte, 16))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("got %v, want deadline exceeded", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("deadline not honoured")
	}
}

func TestNewNonTCP(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if New(a) != nil {
		t.Fatal("New should refuse a non-TCP conn")
	}
}

func TestNoAllocs(t *testing.T) {
	a, b := pair(t)
	ra, rb := New(a), New(b)
	msg := []byte("Q\x00\x00\x00\x0dselect 1\x00")
	buf := make([]byte, 64)
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := ra.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(rb, buf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per round trip, want 0", allocs)
	}
	ra.SetWriteTimeout(time.Minute) // a write that does not block costs no deadline either
	if allocs := testing.AllocsPerRun(200, func() {
		if _, err := ra.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(rb, buf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
	}); allocs != 0 {
		t.Fatalf("%v allocations per round trip with a write timeout, want 0", allocs)
	}
}

func BenchmarkRoundTrip(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := New(c)
		buf := make([]byte, 64)
		for {
			n, err := r.Read(buf)
			if err != nil {
				return
			}
			if _, err := r.Write(buf[:n]); err != nil {
				return
			}
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	r := New(c)
	msg := []byte("Q\x00\x00\x00\x0dselect 1\x00")
	buf := make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(r, buf[:len(msg)]); err != nil {
			b.Fatal(err)
		}
	}
}

// TestWriteTimeout: a Write to a peer that reads nothing fails after the write timeout, and
// writes that do not block are unaffected (no deadline is left behind).
func TestWriteTimeout(t *testing.T) {
	a, b := pair(t)
	r := New(a)
	r.SetWriteTimeout(200 * time.Millisecond)
	if _, err := r.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(b, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("read %q, %v", buf, err)
	}
	start := time.Now()
	_, err := r.Write(make([]byte, 64<<20))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("blocked write: %v, want a deadline error", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond || d > 5*time.Second {
		t.Errorf("blocked write failed after %v, want about 200ms", d)
	}
}
