package tcpopt

import (
	"net"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// setUserTimeout sets TCP_USER_TIMEOUT; 0 restores the kernel's default.
func setUserTimeout(c *net.TCPConn, d time.Duration) error {
	ms := int((d + time.Millisecond - 1) / time.Millisecond)
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		// A raw call: setsockopt does not block, and an ordinary call per accepted connection
		// kept the scheduler's monitor waking every 20 us under a connection per transaction.
		v := int32(ms)
		_, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, fd, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, uintptr(unsafe.Pointer(&v)), 4, 0)
		if e != 0 {
			serr = e
		}
	}); err != nil {
		return err
	}
	if serr != nil {
		return os.NewSyscallError("setsockopt", serr)
	}
	return nil
}
