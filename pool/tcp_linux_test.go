package pool_test

import (
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/tcpopt"
	"github.com/pgsidecar/pgsidecar/internal/tcpopt/tcpopttest"
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
		want tcpopttest.Sockopts
	}{
		{"configured", &opts, tcpopttest.Sockopts{KeepAlive: 1, IdleSecs: 30, IntervalSecs: 10, Count: 3, UserTimeoutMillis: 60000}},
		{"keepalive off", &tcpopt.Options{UserTimeout: 5 * time.Second}, tcpopttest.Sockopts{KeepAlive: 0, IdleSecs: 15, IntervalSecs: 15, Count: 9, UserTimeoutMillis: 5000}},
		{"not configured", nil, tcpopttest.Sockopts{KeepAlive: 1, IdleSecs: 15, IntervalSecs: 15, Count: 9, UserTimeoutMillis: 0}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, _ := newPool(t, func(c *pool.Config) { c.TCP = tt.tcp })
			c := acquire(t, p)
			defer p.Release(c)
			execOK(t, c, "select 1")
			got := tcpopttest.Read(t, c.Conn)
			if got != tt.want {
				t.Errorf("getsockopt %+v, want %+v", got, tt.want)
			}
		})
	}
}
