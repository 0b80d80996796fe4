// Package tcpopt applies TCP keepalive and TCP_USER_TIMEOUT settings to sockets, the same way
// on both sides of the proxy: the server connections the pool dials and the client connections
// the proxy accepts.
//
// Keepalive probes find a peer that vanished while the connection was idle (a crashed host, a
// NAT or load balancer that forgot the flow); TCP_USER_TIMEOUT finds one that vanished while
// data was in flight, which keepalive does not cover and the kernel otherwise retries for about
// fifteen minutes.
//
//	opts := tcpopt.Options{
//		KeepAlive:    true,
//		KeepIdle:     30 * time.Second,
//		KeepInterval: 10 * time.Second,
//		KeepCount:    3,
//		UserTimeout:  time.Minute,
//	}
//	if err := opts.Apply(conn); err != nil {
//		conn.Close()
//		return err
//	}
package tcpopt

import (
	"crypto/tls"
	"fmt"
	"math"
	"net"
	"time"
)

// Limits of the Linux kernel (include/net/tcp.h); larger values are refused with EINVAL.
const (
	MaxKeepIdle     = 32767 * time.Second // MAX_TCP_KEEPIDLE
	MaxKeepInterval = 32767 * time.Second // MAX_TCP_KEEPINTVL
	MaxKeepCount    = 127                 // MAX_TCP_KEEPCNT
	// MaxUserTimeout is the largest TCP_USER_TIMEOUT: the option is an int of milliseconds.
	MaxUserTimeout = math.MaxInt32 * time.Millisecond
)

// Options are the TCP settings of one side of the proxy. The zero value turns keepalive off and
// leaves TCP_USER_TIMEOUT at the kernel's default (off). A negative duration or count leaves
// that option as the socket has it.
type Options struct {
	// KeepAlive turns keepalive probes on (SO_KEEPALIVE). false turns them off, also overriding
	// the probes every 15 s that Go's dialers and listeners enable by default.
	KeepAlive bool
	// KeepIdle is how long a connection stays idle before the first probe (TCP_KEEPIDLE). The
	// kernel counts whole seconds, so it is rounded up. 0 = Go's default, 15 s.
	KeepIdle time.Duration
	// KeepInterval is the time between unanswered probes (TCP_KEEPINTVL), rounded up to whole
	// seconds. 0 = Go's default, 15 s.
	KeepInterval time.Duration
	// KeepCount is how many probes may go unanswered before the connection is dropped
	// (TCP_KEEPCNT). 0 = Go's default, 9.
	KeepCount int
	// UserTimeout is TCP_USER_TIMEOUT, rounded up to whole milliseconds: how long sent data may
	// stay unacknowledged before the kernel drops the connection. With keepalive on, it also
	// replaces KeepCount as the limit for unanswered probes (Linux drops the connection at the
	// first unanswered probe after UserTimeout without input), so KeepIdle + KeepInterval *
	// KeepCount is the natural value. 0 = the kernel's default: off, retransmissions give up
	// after about 15 minutes (net.ipv4.tcp_retries2). Linux only; ignored elsewhere.
	UserTimeout time.Duration
}

// Apply sets o on c's socket. c may be a *net.TCPConn or a *tls.Conn over one; any other
// connection (a Unix socket, a pipe, a wrapper) is left alone and Apply returns nil. Apply may
// be called on a connection in use; it does not touch its data.
func (o Options) Apply(c net.Conn) error {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	tcp, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	if err := tcp.SetKeepAliveConfig(o.keepAliveConfig()); err != nil {
		return fmt.Errorf("set tcp keepalive: %w", err)
	}
	if err := setUserTimeout(tcp, o.UserTimeout); err != nil {
		return fmt.Errorf("set TCP_USER_TIMEOUT: %w", err)
	}
	return nil
}

// keepAliveConfig maps o to net's form, where zero fields also mean Go's defaults.
func (o Options) keepAliveConfig() net.KeepAliveConfig {
	if !o.KeepAlive {
		// Negative values leave the other options alone: only SO_KEEPALIVE is switched off.
		return net.KeepAliveConfig{Enable: false, Idle: -1, Interval: -1, Count: -1}
	}
	return net.KeepAliveConfig{Enable: true, Idle: o.KeepIdle, Interval: o.KeepInterval, Count: o.KeepCount}
}

// Accepted applies to each connection a listener accepts what ApplyToListener could not set on
// the listener itself. The zero value applies nothing.
type Accepted struct {
	o                  Options
	keepAliveInherited bool
}

// Apply sets on c what its listener did not give it.
func (a Accepted) Apply(c net.Conn) error {
	if !a.keepAliveInherited {
		return a.o.Apply(c)
	}
	if a.o.UserTimeout <= 0 {
		return nil // the kernel's default, as accepted
	}
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	tcp, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	if err := setUserTimeout(tcp, a.o.UserTimeout); err != nil {
		return fmt.Errorf("set TCP_USER_TIMEOUT: %w", err)
	}
	return nil
}
