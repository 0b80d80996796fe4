package pool_test

import (
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pgsidecar/pgsidecar/internal/tcpopt"
	"github.com/pgsidecar/pgsidecar/pool"
)

// TestTCPOptions: the pool's upstream sockets carry Config.TCP, read back from the kernel; without
// it they keep pgconn's dialer defaults (Go's keepalive, no user timeout).
func TestTCPOptions(t *testing.T) {
	leakCheckAfterCleanup(t)
	opts := tcpopt.Options{KeepAlive: true, KeepIdle: 30 * time.Second, KeepInterval: 10 * time.Second, KeepCount: 3, UserTimeout: time.Minute}
	for _, tt := range []struct {
		name string
		tcp  *tcpopt.Options
		want [5]int // SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_USER_TIMEOUT
	}{
		{"configured", &opts, [5]int{1, 30, 10, 3, 60000}},
		{"keepalive off", &tcpopt.Options{UserTimeout: 5 * time.Second}, [5]int{0, 15, 15, 9, 5000}},
		{"not configured", nil, [5]int{1, 15, 15, 9, 0}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, _ := newPool(t, func(c *pool.Config) { c.TCP = tt.tcp })
			c := acquire(t, p)
			defer p.Release(c)
			execOK(t, c, "select 1")
			tc, ok := c.Conn.(*net.TCPConn)
			if !ok {
				t.Fatalf("server connection is a %T, want *net.TCPConn", c.Conn)
			}
			rc, err := tc.SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var got [5]int
			var gerr error
			opts := [5][2]int{
				{unix.SOL_SOCKET, unix.SO_KEEPALIVE}, {unix.IPPROTO_TCP, unix.TCP_KEEPIDLE},
				{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL}, {unix.IPPROTO_TCP, unix.TCP_KEEPCNT},
				{unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT},
			}
			if err := rc.Control(func(fd uintptr) {
				for i, o := range opts {
					v, err := unix.GetsockoptInt(int(fd), o[0], o[1])
					if err != nil {
						gerr = err
					}
					got[i] = v
				}
			}); err != nil {
				t.Fatal(err)
			}
			if gerr != nil {
				t.Fatalf("getsockopt: %v", gerr)
			}
			if got != tt.want {
				t.Errorf("getsockopt %v, want %v", got, tt.want)
			}
		})
	}
}
