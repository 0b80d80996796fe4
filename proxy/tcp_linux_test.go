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
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.TCPKeepAlive = true
		cfg.TCPKeepIdle = 40 * time.Second
		cfg.TCPKeepInterval = 7 * time.Second
		cfg.TCPKeepCount = 4
		cfg.TCPUserTimeout = 45 * time.Second
	})
	conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	if _, err := conn.Exec(testCtx(t), "select 1"); err != nil {
		t.Fatal(err)
	}
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
	if want := [5]int{1, 40, 7, 4, 45000}; got != want {
		t.Errorf("client socket (SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_USER_TIMEOUT) = %v, want %v", got, want)
	}
}
