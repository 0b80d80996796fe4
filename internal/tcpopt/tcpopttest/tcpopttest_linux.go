// Package tcpopttest reads a TCP socket's keepalive options back from the kernel, for the tests
// of the packages that set them (internal/tcpopt, pool, proxy).
package tcpopttest

import (
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// Sockopts is what the kernel reports for a socket, in its own units.
type Sockopts struct {
	KeepAlive, IdleSecs, IntervalSecs, Count, UserTimeoutMillis int
}

// Read returns the options of c, which must be a *net.TCPConn; it fails t otherwise.
func Read(t testing.TB, c net.Conn) Sockopts {
	t.Helper()
	tc, ok := c.(*net.TCPConn)
	if !ok {
		t.Fatalf("connection is a %T, want *net.TCPConn", c)
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got Sockopts
	var errs []error
	err = rc.Control(func(fd uintptr) {
		get := func(level, opt int) int {
			v, err := unix.GetsockoptInt(int(fd), level, opt)
			if err != nil {
				errs = append(errs, err)
			}
			return v
		}
		got = Sockopts{
			KeepAlive:         get(unix.SOL_SOCKET, unix.SO_KEEPALIVE),
			IdleSecs:          get(unix.IPPROTO_TCP, unix.TCP_KEEPIDLE),
			IntervalSecs:      get(unix.IPPROTO_TCP, unix.TCP_KEEPINTVL),
			Count:             get(unix.IPPROTO_TCP, unix.TCP_KEEPCNT),
			UserTimeoutMillis: get(unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT),
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range errs {
		t.Fatalf("getsockopt: %v", err)
	}
	return got
}
