package tcpopt_test

import (
	"crypto/tls"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/tcpopt"
	"github.com/pgsidecar/pgsidecar/internal/tcpopt/tcpopttest"
)

// sockopts is what the kernel reports for a socket.
type sockopts = tcpopttest.Sockopts

func readSockopts(t *testing.T, c net.Conn) sockopts { return tcpopttest.Read(t, c) }

// so builds the sockopts the kernel should report.
func so(keepAlive, idleSecs, intervalSecs, count, userTimeoutMillis int) sockopts {
	return sockopts{KeepAlive: keepAlive, IdleSecs: idleSecs, IntervalSecs: intervalSecs, Count: count, UserTimeoutMillis: userTimeoutMillis}
}

// tcpPair returns both ends of a loopback TCP connection: one dialled, one accepted, each with
// Go's default keepalive (15 s) already on, as the proxy's sockets are.
func tcpPair(t *testing.T) (dialed, accepted net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dialed, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dialed.Close() })
	accepted, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { accepted.Close() })
	return dialed, accepted
}

// applyCases are options and what the kernel reports once they are set, for Apply and for
// ApplyToListener alike.
var applyCases = []struct {
	name string
	opts tcpopt.Options
	want sockopts
}{
	{"pgsidecar defaults",
		tcpopt.Options{KeepAlive: true, KeepIdle: 30 * time.Second, KeepInterval: 10 * time.Second, KeepCount: 3, UserTimeout: time.Minute},
		so(1, 30, 10, 3, 60000)},
	{"rounded up to the kernel's units",
		tcpopt.Options{KeepAlive: true, KeepIdle: 1500 * time.Millisecond, KeepInterval: time.Millisecond, KeepCount: 1, UserTimeout: 1500 * time.Microsecond},
		so(1, 2, 1, 1, 2)},
	{"zero values are Go's defaults and no user timeout",
		tcpopt.Options{KeepAlive: true},
		so(1, 15, 15, 9, 0)},
	{"kernel maxima",
		tcpopt.Options{KeepAlive: true, KeepIdle: tcpopt.MaxKeepIdle, KeepInterval: tcpopt.MaxKeepInterval, KeepCount: tcpopt.MaxKeepCount, UserTimeout: tcpopt.MaxUserTimeout},
		so(1, 32767, 32767, 127, 1<<31-1)},
}

func TestApply(t *testing.T) {
	tests := applyCases
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dialed, accepted := tcpPair(t)
			for _, c := range []net.Conn{dialed, accepted} {
				if err := tt.opts.Apply(c); err != nil {
					t.Fatalf("Apply: %v", err)
				}
				if got := readSockopts(t, c); got != tt.want {
					t.Errorf("%s end: getsockopt %+v, want %+v", c.LocalAddr(), got, tt.want)
				}
			}
		})
	}
}

// TestApplyOff: keepalive off switches off the probes Go turned on, and a user timeout set
// earlier is cleared; the other keepalive options stay as they were.
func TestApplyOff(t *testing.T) {
	c, _ := tcpPair(t)
	on := tcpopt.Options{KeepAlive: true, KeepIdle: 40 * time.Second, KeepInterval: 5 * time.Second, KeepCount: 2, UserTimeout: time.Second}
	if err := on.Apply(c); err != nil {
		t.Fatal(err)
	}
	if err := (tcpopt.Options{}).Apply(c); err != nil {
		t.Fatal(err)
	}
	if got, want := readSockopts(t, c), (so(0, 40, 5, 2, 0)); got != want {
		t.Errorf("getsockopt %+v, want %+v", got, want)
	}
}

// TestApplyTLS: a TLS connection's options are set on the TCP socket under it.
func TestApplyTLS(t *testing.T) {
	c, _ := tcpPair(t)
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true}) // no handshake: only NetConn is used
	opts := tcpopt.Options{KeepAlive: true, KeepIdle: 7 * time.Second, KeepInterval: 3 * time.Second, KeepCount: 4, UserTimeout: 9 * time.Second}
	if err := opts.Apply(tc); err != nil {
		t.Fatal(err)
	}
	if got, want := readSockopts(t, c), (so(1, 7, 3, 4, 9000)); got != want {
		t.Errorf("getsockopt %+v, want %+v", got, want)
	}
}

// TestApplyNotTCP: connections that are not TCP sockets are left alone.
func TestApplyNotTCP(t *testing.T) {
	opts := tcpopt.Options{KeepAlive: true, UserTimeout: time.Second}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if err := opts.Apply(a); err != nil {
		t.Errorf("pipe: %v", err)
	}
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	uc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	if err := opts.Apply(uc); err != nil {
		t.Errorf("unix socket: %v", err)
	}
}

// TestApplyClosed: an error names the option that failed.
func TestApplyClosed(t *testing.T) {
	c, _ := tcpPair(t)
	c.Close()
	err := tcpopt.Options{KeepAlive: true}.Apply(c)
	if err == nil {
		t.Fatal("Apply on a closed connection succeeded")
	}
	t.Log(err)
}

// TestApplyToListener: connections accepted by a listener the options were set on have them,
// as Apply would have set them, with only TCP_USER_TIMEOUT set per connection.
func TestApplyToListener(t *testing.T) {
	cases := append(applyCases[:len(applyCases):len(applyCases)], struct {
		name string
		opts tcpopt.Options
		want sockopts
	}{"keepalive off",
		tcpopt.Options{KeepAlive: false, UserTimeout: 1500 * time.Microsecond},
		so(0, -1, -1, -1, 2)})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			lc := net.ListenConfig{KeepAlive: -1} // as the proxy listens: no per-connection setup
			ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			rest, err := tc.opts.ApplyToListener(ln.(*net.TCPListener))
			if err != nil {
				t.Fatal(err)
			}
			dialed, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer dialed.Close()
			accepted, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer accepted.Close()
			if err := rest.Apply(accepted); err != nil {
				t.Fatal(err)
			}
			got := readSockopts(t, accepted)
			want := tc.want
			if want.KeepAlive == 0 {
				// With keepalive off, the probe settings do not matter: compare the rest.
				got.IdleSecs, got.IntervalSecs, got.Count = -1, -1, -1
			}
			if got != want {
				t.Errorf("accepted connection: %+v, want %+v", got, want)
			}
		})
	}
}
