// Package rawio reads and writes TCP sockets with raw non-blocking system calls, for the relay's
// hot path.
package rawio

import (
	"io"
	"net"
	"syscall"
	"time"
	"unsafe"
)

// Conn reads and writes a TCP socket with raw non-blocking system calls, waiting for
// readiness through the runtime's poller (syscall.RawConn), but without the scheduler
// bookkeeping of an ordinary system call.
//
// Why: a relay round trip is a handful of sub-microsecond socket calls. Each ordinary call
// enters and leaves the scheduler's syscall state, and on a busy process sysmon then retakes
// the P, wakes other threads and keeps itself on its 20 us tick; measured on a 2-core machine,
// those context switches cost more CPU than the copying. A non-blocking socket call never
// blocks, so it is safe to make without telling the scheduler.
//
// A Conn must have one reader and one writer at a time; the read and write halves keep their
// arguments in the struct so that the callbacks, bound once, allocate nothing per call.
type Conn struct {
	rc syscall.RawConn
	tc *net.TCPConn
	// writeTimeout bounds how long a Write may stay blocked (0: no bound); writeOnce is set for
	// the one attempt that needs no deadline (writeFn then does not wait for the poller).
	writeTimeout time.Duration
	writeOnce    bool

	rbuf    []byte
	rn      int
	rerr    syscall.Errno
	readFn  func(fd uintptr) bool
	wbuf    []byte
	wn      int
	werr    syscall.Errno
	writeFn func(fd uintptr) bool
}

// New returns a Conn for conn, or nil when conn is not a plain TCP socket (TLS, tests'
// pipes), in which case callers use conn's own methods.
func New(conn net.Conn) *Conn {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	r := &Conn{rc: rc, tc: tc}
	r.readFn = r.doRead
	r.writeFn = r.doWrite
	return r
}

func (r *Conn) doRead(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&r.rbuf[0])), uintptr(len(r.rbuf)))
		switch e {
		case 0:
			r.rn, r.rerr = int(n), 0
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			r.rn, r.rerr = 0, e
			return true
		}
	}
}

// Read reads into p like net.Conn.Read (deadlines set on the conn apply).
func (r *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.rbuf = p
	err := r.rc.Read(r.readFn)
	r.rbuf = nil
	if err != nil {
		return 0, err
	}
	if r.rerr != 0 {
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: r.rerr}
	}
	if r.rn == 0 {
		return 0, io.EOF
	}
	return r.rn, nil
}

func (r *Conn) doWrite(fd uintptr) bool {
	for r.wn < len(r.wbuf) {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&r.wbuf[r.wn])), uintptr(len(r.wbuf)-r.wn))
		switch e {
		case 0:
			r.wn += int(n)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return r.writeOnce // then no wait for the poller: the caller sets a deadline first
		default:
			r.werr = e
			return true
		}
	}
	return true
}

// SetWriteTimeout bounds how long a Write may wait for the peer to take its bytes: a Write
// that would block gets a write deadline d from then on (0: none). A Write that does not block
// costs no deadline.
func (r *Conn) SetWriteTimeout(d time.Duration) { r.writeTimeout = d }

// Write writes all of p like net.Conn.Write (deadlines set on the conn apply).
func (r *Conn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.wbuf, r.wn, r.werr = p, 0, 0
	if r.writeTimeout > 0 {
		r.writeOnce = true
		err := r.rc.Write(r.writeFn)
		r.writeOnce = false
		if err != nil || r.werr != 0 || r.wn == len(p) {
			return r.finishWrite(err)
		}
		_ = r.tc.SetWriteDeadline(time.Now().Add(r.writeTimeout))
		defer func() { _ = r.tc.SetWriteDeadline(time.Time{}) }()
	}
	return r.finishWrite(r.rc.Write(r.writeFn))
}

// finishWrite returns Write's result after the poller's err.
func (r *Conn) finishWrite(err error) (int, error) {
	n := r.wn
	r.wbuf = nil
	if err != nil {
		return n, err
	}
	if r.werr != 0 {
		return n, &net.OpError{Op: "write", Net: "tcp", Err: r.werr}
	}
	return n, nil
}
