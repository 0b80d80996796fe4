package pool

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/rawio"
	"github.com/pgsidecar/pgsidecar/internal/tcpopt"
)

// Conn is one upstream server connection, authenticated and then hijacked from pgconn so that
// the proxy can relay raw protocol frames over it.
//
// A Conn is owned by exactly one party at a time: the pool while it is idle, the holder between
// Acquire and Release/Destroy. Only the owner may read from or write to it.
type Conn struct {
	net.Conn

	// PID and SecretKey are the server's BackendKeyData, used to cancel its running query.
	PID       uint32
	SecretKey []byte
	// Params holds the ParameterStatus values the server reported at startup.
	Params map[string]string

	hijacked *pgconn.HijackedConn
	pool     *Pool
	// addr is the server address the connection is connected to, in serverAddr's form.
	addr    string
	created time.Time
	// lifetime is this connection's own server_lifetime, with jitter applied.
	lifetime time.Duration
	// lastUsed is when the connection was last released to the pool.
	lastUsed time.Time

	// buf is the read buffer used by the proxy's relay; it lives as long as the connection so
	// that a busy server connection never allocates per transaction.
	buf []byte
	// raw does the relay's socket I/O on plain TCP connections; nil for TLS. loop reads it for
	// ReadEach, made on first use.
	raw  *rawio.Conn
	loop *rawio.ReadLoop
	// peek checks the idle connection before reuse; set on first use.
	peek *peeker
	// cancelTLS is the TLS configuration the connection was made with (nil without TLS): a
	// cancel request carries the secret key, so it goes over TLS too.
	cancelTLS *tls.Config

	// Tag is the holder's per-connection state (the proxy keeps which statements are prepared
	// on the server here). The pool never reads it; it lives and dies with the connection.
	Tag any

	// held is set while the connection is handed out (guarded by the pool's mu); a second
	// Release or Destroy of the same hand-out is a bug that would give one server to two holders.
	held bool
	// deadlineSet records that the holder set a deadline, which Release must clear.
	deadlineSet atomic.Bool
	// retired is set while the connection is handed out when it must not go back to the pool
	// (see Pool.RetireAddr); guarded by the pool's mu.
	retired bool
}

// Addr returns the server address the connection is connected to: "ip:port" for TCP (IPv6 in
// brackets), the socket path for a Unix socket. Pool.RetireAddr takes it.
func (c *Conn) Addr() string { return c.addr }

// remoteAddr returns nc's server address in the form Addr returns.
func remoteAddr(nc net.Conn) string {
	ra := nc.RemoteAddr()
	if ra == nil {
		return ""
	}
	return normalAddr(ra.String())
}

// withTCPOptions returns dial with opts applied to every connection it makes. Connections that
// are not TCP sockets (Unix sockets, a test's wrapper) are left alone.
func withTCPOptions(dial pgconn.DialFunc, opts tcpopt.Options) pgconn.DialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if err := opts.Apply(nc); err != nil {
			_ = nc.Close()
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
		return nc, nil
	}
}

// SetDeadline sets the connection's read and write deadlines (see net.Conn); Release clears
// them if set.
func (c *Conn) SetDeadline(t time.Time) error {
	c.deadlineSet.Store(true)
	return c.Conn.SetDeadline(t)
}

// SetReadDeadline sets the connection's read deadline (see net.Conn); Release clears it if set.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.deadlineSet.Store(true)
	return c.Conn.SetReadDeadline(t)
}

// SetWriteDeadline sets the connection's write deadline (see net.Conn); Release clears it if
// set.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.deadlineSet.Store(true)
	return c.Conn.SetWriteDeadline(t)
}

// Read reads from the server for the relay. Only the connection's holder may call it.
func (c *Conn) Read(p []byte) (int, error) {
	if c.raw != nil {
		return c.raw.Read(p)
	}
	return c.Conn.Read(p)
}

// ReadEach reads from the server for the relay, handing each read to rd until rd has had
// enough: see rawio.ReadLoop, which it is on plain TCP (on TLS, reads in a loop). The error of a
// read goes to rd; ReadEach returns the error of waiting for one (a deadline, a close). Only
// the connection's holder may call it, and rd must not close the connection.
func (c *Conn) ReadEach(rd rawio.Reader) error {
	if c.raw == nil {
		for {
			n, err := c.Conn.Read(rd.ReadBuffer())
			if !rd.Handle(n, err) || err != nil {
				return nil
			}
		}
	}
	if c.loop == nil {
		c.loop = rawio.NewReadLoop(c.raw)
	}
	return c.loop.Run(rd)
}

// Abort ends the connection's session with its server at once: the socket is shut down both
// ways, so that the server sees its client gone and the holder's read, waiting or next, ends
// with io.EOF. It does not close the connection: the holder still destroys it. Unlike Close,
// it never waits for the holder's read in progress to return (see ReadEach), which a relay
// blocked writing to a client that reads nothing would not do.
func (c *Conn) Abort() error {
	nc := c.Conn
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return c.Conn.Close() // tests' pipes: they have no reads to wait for
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = syscall.Shutdown(int(fd), syscall.SHUT_RDWR) }); err != nil {
		return err
	}
	return serr
}

// Write writes to the server for the relay. Only the connection's holder may call it.
func (c *Conn) Write(p []byte) (int, error) {
	if c.raw != nil {
		return c.raw.Write(p)
	}
	return c.Conn.Write(p)
}

// ReadBuffer returns the connection's relay read buffer, allocating it on first use.
func (c *Conn) ReadBuffer() []byte {
	if c.buf == nil {
		c.buf = make([]byte, readBufferSize)
	}
	return c.buf
}

// readBufferSize fits many DataRows per read while staying small enough that a pool of a
// hundred connections costs little memory.
const readBufferSize = 32 << 10

// alive reports whether an idle connection still looks usable, with a non-blocking peek at its
// socket that consumes nothing. An idle server has nothing to say, so anything readable
// (typically the FATAL 57P01 a server sends before it exits), end of file or a socket error
// means that the connection is dead. Connections that are not sockets (tests' pipes) pass.
// Only the connection's owner may call it, with no read deadline in the past.
func (c *Conn) alive() bool {
	if c.peek == nil {
		c.peek = newPeeker(c.Conn)
	}
	return c.peek.alive()
}

// peeker peeks at a socket without blocking; its callback is bound once so that a check
// allocates nothing.
type peeker struct {
	rc     syscall.RawConn // nil: not a socket, always alive
	b      [1]byte
	errno  syscall.Errno
	peekFn func(fd uintptr) bool
}

func newPeeker(nc net.Conn) *peeker {
	if tc, ok := nc.(*tls.Conn); ok {
		// A TLS alert or record is as telling as plaintext; an idle TLS connection buffers none.
		nc = tc.NetConn()
	}
	k := &peeker{}
	if sc, ok := nc.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			k.rc = rc
		}
	}
	k.peekFn = k.doPeek
	return k
}

func (k *peeker) doPeek(fd uintptr) bool {
	for {
		// A raw call, as rawio makes them: MSG_DONTWAIT never blocks.
		_, _, k.errno = syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&k.b[0])), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		if k.errno != syscall.EINTR {
			return true // never wait for readability: that would block on a live connection
		}
	}
}

func (k *peeker) alive() bool {
	if k.rc == nil {
		return true
	}
	err := k.rc.Read(k.peekFn)
	return err == nil && k.errno == syscall.EAGAIN
}

// Created returns when the connection was established.
func (c *Conn) Created() time.Time { return c.created }

// Exec runs sql with the simple query protocol and reads its whole result. It is used for
// control statements (reset, rollback, health checks) while the proxy relays nothing, so it may
// use pgconn's own machinery. The connection must be idle.
func (c *Conn) Exec(ctx context.Context, sql string) error {
	_ = c.Conn.SetDeadline(time.Time{})
	pc, err := pgconn.Construct(c.hijacked)
	if err != nil {
		return fmt.Errorf("rebuild connection: %w", err)
	}
	_, execErr := pc.Exec(ctx, sql).ReadAll()
	if err := pc.SyncConn(ctx); err != nil {
		return fmt.Errorf("sync connection: %w", err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		return fmt.Errorf("hijack connection: %w", err)
	}
	c.hijacked = hc
	if execErr != nil {
		return fmt.Errorf("exec %q: %w", sql, execErr)
	}
	if hc.TxStatus != 'I' {
		return fmt.Errorf("exec %q: server left in transaction state %q", sql, hc.TxStatus)
	}
	return nil
}

// CancelRequest asks the server to cancel the query this connection is running, over a new
// connection to the same address, as libpq does; over TLS when this connection uses TLS (as
// libpq 17 does), with the same verification.
func (c *Conn) CancelRequest(ctx context.Context) error {
	var d net.Dialer
	raw, err := d.DialContext(ctx, c.RemoteAddr().Network(), c.RemoteAddr().String())
	if err != nil {
		return fmt.Errorf("dial for cancel: %w", err)
	}
	conn := raw
	defer func() { _ = conn.Close() }()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if c.cancelTLS != nil {
		tc, err := startTLS(ctx, raw, c.cancelTLS)
		if err != nil {
			return fmt.Errorf("cancel over TLS: %w", err)
		}
		conn = tc
	}
	msg, err := (&pgproto3.CancelRequest{ProcessID: c.PID, SecretKey: c.SecretKey}).Encode(nil)
	if err != nil {
		return fmt.Errorf("encode cancel: %w", err)
	}
	if _, err := conn.Write(msg); err != nil {
		return fmt.Errorf("send cancel: %w", err)
	}
	// The server closes the connection once it has handled the request; waiting for that keeps
	// the cancel ordered before whatever the client does next.
	var b [1]byte
	_, _ = conn.Read(b[:])
	return nil
}

// startTLS negotiates TLS on a new connection to a server (SSLRequest, then the handshake). A
// server that declines is an error: the caller's secret must not go in plain text.
func startTLS(ctx context.Context, conn net.Conn, cfg *tls.Config) (net.Conn, error) {
	sslRequest := []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}
	if _, err := conn.Write(sslRequest); err != nil {
		return nil, fmt.Errorf("send SSLRequest: %w", err)
	}
	var answer [1]byte
	if _, err := io.ReadFull(conn, answer[:]); err != nil {
		return nil, fmt.Errorf("read SSLRequest answer: %w", err)
	}
	if answer[0] != 'S' {
		return nil, fmt.Errorf("the server declined TLS (answered %q)", answer[0])
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return tc, nil
}

// tlsConfigOf returns a copy of the TLS configuration that nc, a connection cc made, was
// established with (nil for a plain connection): the one of cc's hosts whose server name it
// used.
func tlsConfigOf(cc *pgconn.Config, nc net.Conn) *tls.Config {
	tc, ok := nc.(*tls.Conn)
	if !ok {
		return nil
	}
	name := tc.ConnectionState().ServerName
	var first *tls.Config
	configs := []*tls.Config{cc.TLSConfig}
	for _, fb := range cc.Fallbacks {
		configs = append(configs, fb.TLSConfig)
	}
	for _, cfg := range configs {
		if cfg == nil {
			continue
		}
		if cfg.ServerName == name {
			return cfg.Clone()
		}
		if first == nil {
			first = cfg
		}
	}
	if first == nil {
		// Not made from cc's settings; verify as strictly as Go does by default.
		return &tls.Config{ServerName: name}
	}
	return first.Clone()
}

// QueryRows runs sql (simple protocol) while the proxy relays nothing and returns the text
// values of its last result's rows. NULLs come back as nil.
func (c *Conn) QueryRows(ctx context.Context, sql string) ([][][]byte, error) {
	_ = c.Conn.SetDeadline(time.Time{})
	pc, err := pgconn.Construct(c.hijacked)
	if err != nil {
		return nil, fmt.Errorf("rebuild connection: %w", err)
	}
	results, execErr := pc.Exec(ctx, sql).ReadAll()
	if err := pc.SyncConn(ctx); err != nil {
		return nil, fmt.Errorf("sync connection: %w", err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		return nil, fmt.Errorf("hijack connection: %w", err)
	}
	c.hijacked = hc
	if execErr != nil {
		return nil, fmt.Errorf("query %q: %w", sql, execErr)
	}
	if len(results) == 0 {
		return nil, nil
	}
	return results[len(results)-1].Rows, nil
}

// ConnStat describes one of a pool's connections, for the admin console.
type ConnStat struct {
	PID             uint32
	Addr, LocalAddr string
	Created         time.Time
	LastUsed        time.Time // when it was last released
	InUse           bool      // handed out
	Used            bool      // idle and due for the CheckDelay check before reuse
	TLS             bool
	conn            *Conn
}

// Conn returns the connection the stat describes, to match it with its holder; the caller may
// read its identity only.
func (s ConnStat) Conn() *Conn { return s.conn }

// Conns describes the pool's open connections (dials in flight excluded).
func (p *Pool) Conns() []ConnStat {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]ConnStat, 0, len(p.all))
	for c := range p.all {
		st := ConnStat{PID: c.PID, Addr: c.addr, Created: c.created, LastUsed: c.lastUsed, InUse: c.held, conn: c}
		if la := c.Conn.LocalAddr(); la != nil {
			st.LocalAddr = la.String()
		}
		_, st.TLS = c.Conn.(*tls.Conn)
		if !c.held {
			st.Used = p.needsCheck(c, now)
		}
		out = append(out, st)
	}
	return out
}
