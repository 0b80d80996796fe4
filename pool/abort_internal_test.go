package pool

import (
	"errors"
	"io"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/rawio"
)

// blockingReader hands its first read to the test and waits for the test before reading on,
// as a relay loop stuck writing to a client that reads nothing; it records the read error.
type blockingReader struct {
	buf      []byte
	got      chan []byte
	release  chan struct{}
	n        int
	finalErr error
}

func (r *blockingReader) ReadBuffer() []byte { return r.buf }

func (r *blockingReader) Handle(n int, err error) bool {
	if n > 0 {
		r.n++
		if r.n == 1 {
			r.got <- append([]byte(nil), r.buf[:n]...)
			<-r.release
		}
	}
	if err != nil {
		r.finalErr = err
		return false
	}
	return true
}

// TestAbortDoesNotWaitForReadEach: ReadEach hands the server's bytes to its reader; Abort,
// while the reader is busy with them inside ReadEach, returns at once (Close would wait for
// ReadEach), the server side sees the connection end, and ReadEach ends with io.EOF handed to
// the reader.
func TestAbortDoesNotWaitForReadEach(t *testing.T) {
	client, server := tcpPair(t)
	c := &Conn{Conn: client, raw: rawio.New(client)}
	r := &blockingReader{buf: make([]byte, 64), got: make(chan []byte, 1), release: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- c.ReadEach(r) }()
	if _, err := server.Write([]byte("reply")); err != nil {
		t.Fatal(err)
	}
	if got := <-r.got; string(got) != "reply" {
		t.Fatalf("ReadEach handed %q, want %q", got, "reply")
	}
	aborted := make(chan error, 1)
	go func() { aborted <- c.Abort() }()
	select {
	case err := <-aborted:
		if err != nil {
			t.Fatalf("Abort: %v", err)
		}
	case <-time.After(5 * time.Second):
		close(r.release)
		t.Fatal("Abort waited for the reader inside ReadEach")
	}
	// The server's end sees the connection end.
	_ = server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := server.Read(make([]byte, 8)); n != 0 || !errors.Is(err, io.EOF) {
		t.Errorf("server side read after Abort: %d, %v; want 0, EOF", n, err)
	}
	close(r.release)
	select {
	case err := <-done:
		if err != nil || !errors.Is(r.finalErr, io.EOF) {
			t.Errorf("ReadEach: %v, reader saw %v; want nil and EOF", err, r.finalErr)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReadEach did not end after Abort")
	}
	if err := c.Conn.Close(); err != nil {
		t.Errorf("Close after Abort: %v", err)
	}
}
