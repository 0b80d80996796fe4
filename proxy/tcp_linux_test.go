package proxy

import (
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sys/unix"

	"github.com/pgsidecar/pgsidecar/config"
)

// TestClientTCPOptions: accepted client sockets carry the tcp_* settings, read back from the
// kernel.
func TestClientTCPOptions(t *testing.T) {
	c := cluster(t)
	for _, tt := range []struct {
		name string
		set  func(*config.Config)
		want [5]int // SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_USER_TIMEOUT
	}{
		{"configured", func(cfg *config.Config) {
			cfg.TCPKeepAlive = true
			cfg.TCPKeepIdle = 40 * time.Second
			cfg.TCPKeepInterval = 7 * time.Second
			cfg.TCPKeepCount = 4
			cfg.TCPUserTimeout = 45 * time.Second
		}, [5]int{1, 40, 7, 4, 45000}},
		{"keepalive off", func(cfg *config.Config) {
			cfg.TCPKeepAlive = false
			cfg.TCPUserTimeout = 0
		}, [5]int{0, -1, -1, -1, 0}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := startProxy(t, c, tt.set)
			conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
			if _, err := conn.Exec(testCtx(t), "select 1"); err != nil {
				t.Fatal(err)
			}
			got := clientSocketOptions(t, p)
			for i := range got {
				if tt.want[i] >= 0 && got[i] != tt.want[i] {
					t.Errorf("client socket (SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_USER_TIMEOUT) = %v, want %v (-1: any)", got, tt.want)
					break
				}
			}
		})
	}
}

// clientSocketOptions reads the keepalive options of the proxy's only client socket.
func clientSocketOptions(t *testing.T, p *testProxy) [5]int {
	t.Helper()
	p.srv.mu.Lock()
	var sock net.Conn
	for sess := range p.srv.sessions {
		sock = sess.conn
	}
	p.srv.mu.Unlock()
	tc, ok := sock.(*net.TCPConn)
	if !ok {
		t.Fatalf("client connection is a %T, want *net.TCPConn", sock)
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	opts := [5][2]int{
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE}, {unix.IPPROTO_TCP, unix.TCP_KEEPIDLE},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL}, {unix.IPPROTO_TCP, unix.TCP_KEEPCNT},
		{unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT},
	}
	var got [5]int
	var gerr error
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
	return got
}
