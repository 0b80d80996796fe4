package proxy

import (
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/internal/tcpopt/tcpopttest"
)

// TestClientTCPOptions: accepted client sockets carry the tcp_* settings, read back from the
// kernel.
func TestClientTCPOptions(t *testing.T) {
	c := cluster(t)
	for _, tt := range []struct {
		name string
		set  func(*config.Config)
		want tcpopttest.Sockopts // -1: any value
	}{
		{"configured", func(cfg *config.Config) {
			cfg.TCPKeepAlive = true
			cfg.TCPKeepIdle = 40 * time.Second
			cfg.TCPKeepInterval = 7 * time.Second
			cfg.TCPKeepCount = 4
			cfg.TCPUserTimeout = 45 * time.Second
		}, tcpopttest.Sockopts{KeepAlive: 1, IdleSecs: 40, IntervalSecs: 7, Count: 4, UserTimeoutMillis: 45000}},
		{"keepalive off", func(cfg *config.Config) {
			cfg.TCPKeepAlive = false
			cfg.TCPUserTimeout = 0
		}, tcpopttest.Sockopts{KeepAlive: 0, IdleSecs: -1, IntervalSecs: -1, Count: -1, UserTimeoutMillis: 0}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := startProxy(t, c, tt.set)
			conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
			if _, err := conn.Exec(testCtx(t), "select 1"); err != nil {
				t.Fatal(err)
			}
			got := clientSocketOptions(t, p)
			want := tt.want
			for _, f := range []struct{ w, g *int }{{&want.IdleSecs, &got.IdleSecs}, {&want.IntervalSecs, &got.IntervalSecs}, {&want.Count, &got.Count}} {
				if *f.w < 0 {
					*f.w = *f.g
				}
			}
			if got != want {
				t.Errorf("client socket options %+v, want %+v (-1: any)", got, tt.want)
			}
		})
	}
}

// clientSocketOptions reads the keepalive options of the proxy's only client socket.
func clientSocketOptions(t *testing.T, p *testProxy) tcpopttest.Sockopts {
	t.Helper()
	p.srv.mu.Lock()
	var sock net.Conn
	for sess := range p.srv.sessions {
		sock = sess.conn
	}
	p.srv.mu.Unlock()
	return tcpopttest.Read(t, sock)
}
