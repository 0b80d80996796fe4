package proxy

// Client login through the proxy, and the proxy's answers to bad input, with real clients (pgx,
// lib/pq) and raw TCP connections.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/lib/pq"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/pgsidecar/pgsidecar/proxy/auth"
)

// loginConn is a raw client connection that reads messages exactly, without read-ahead, so
// that the end of the stream is seen where it is.
type loginConn struct {
	t    testing.TB
	conn net.Conn
}

func loginDial(t testing.TB, addr string) *loginConn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	return &loginConn{t: t, conn: conn}
}

func (lc *loginConn) write(b []byte) {
	lc.t.Helper()
	if _, err := lc.conn.Write(b); err != nil {
		lc.t.Fatalf("write: %v", err)
	}
}

// read reads one message; err is the read error at a message boundary or inside one.
func (lc *loginConn) read() (typ byte, body []byte, err error) {
	var hdr [5]byte
	if _, err := io.ReadFull(lc.conn, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[1:]))
	if n < 4 || n > 1<<20 {
		return 0, nil, errors.New("bad length from proxy: " + strconv.Itoa(n))
	}
	body = make([]byte, n-4)
	if _, err := io.ReadFull(lc.conn, body); err != nil {
		return 0, nil, err
	}
	return hdr[0], body, nil
}

func (lc *loginConn) mustRead() (byte, []byte) {
	lc.t.Helper()
	typ, body, err := lc.read()
	if err != nil {
		lc.t.Fatalf("read: %v", err)
	}
	return typ, body
}

// startup sends a v3.0 StartupMessage.
func (lc *loginConn) startup(user, database string) {
	lc.t.Helper()
	lc.write(withLength(startupBody(startupV30, "user", user, "database", database)))
}

// untilReady reads the login response up to ReadyForQuery and returns the message types seen.
func (lc *loginConn) untilReady() string {
	lc.t.Helper()
	var seen []byte
	for {
		typ, body := lc.mustRead()
		seen = append(seen, typ)
		switch typ {
		case 'E':
			lc.t.Fatalf("login failed: %s", describeError(body))
		case 'R':
			if binary.BigEndian.Uint32(body) != 0 {
				lc.t.Fatalf("unexpected authentication request %d", binary.BigEndian.Uint32(body))
			}
		case 'Z':
			return string(seen)
		}
	}
}

// query runs a simple query and returns the first column of the first row (or "").
func (lc *loginConn) query(sql string) (value string, status byte) {
	lc.t.Helper()
	q, _ := (&pgproto3.Query{String: sql}).Encode(nil)
	lc.write(q)
	for {
		typ, body := lc.mustRead()
		switch typ {
		case 'E':
			lc.t.Fatalf("query %q: %s", sql, describeError(body))
		case 'D':
			var d pgproto3.DataRow
			if err := d.Decode(body); err != nil {
				lc.t.Fatal(err)
			}
			if value == "" && len(d.Values) > 0 {
				value = string(d.Values[0])
			}
		case 'Z':
			return value, body[0]
		}
	}
}

// expectFatal reads until an ErrorResponse, checks its SQLSTATE and FATAL severity, and then
// checks that the proxy closed the connection (EOF) without sending anything else.
func (lc *loginConn) expectFatal(code string) {
	lc.t.Helper()
	_ = lc.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var other []byte
	for {
		typ, body, err := lc.read()
		if err != nil {
			lc.t.Fatalf("want ErrorResponse %s, got %v after messages %q", code, err, other)
		}
		if typ != 'E' {
			other = append(other, typ)
			continue
		}
		var e pgproto3.ErrorResponse
		if err := e.Decode(body); err != nil {
			lc.t.Fatal(err)
		}
		if e.Code != code || e.Severity != "FATAL" {
			lc.t.Fatalf("got %s %s %q, want FATAL %s", e.Severity, e.Code, e.Message, code)
		}
		if len(other) > 0 {
			lc.t.Errorf("messages before the error: %q", other)
		}
		break
	}
	lc.expectEOF()
}

// expectEOF checks that the peer closed the connection and sent nothing (more).
func (lc *loginConn) expectEOF() {
	lc.t.Helper()
	_ = lc.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [256]byte
	n, err := lc.conn.Read(b[:])
	if errors.Is(err, syscall.ECONNRESET) {
		lc.t.Fatalf("want a clean close (EOF), got a TCP reset: the proxy closed the socket with client bytes still unread (%v)", err)
	}
	if n != 0 || !errors.Is(err, io.EOF) {
		lc.t.Fatalf("want EOF, got %d bytes %q, err %v", n, b[:n], err)
	}
}

func describeError(body []byte) string {
	var e pgproto3.ErrorResponse
	if err := e.Decode(body); err != nil {
		return "undecodable ErrorResponse: " + err.Error()
	}
	return e.Severity + " " + e.Code + " " + e.Message
}

// stillWorks runs a query on a client that must not be disturbed by another client's trouble.
func stillWorks(t testing.TB, conn *pgx.Conn) {
	t.Helper()
	var n int
	// Simple protocol: this checks the session, not prepared-statement handling.
	if err := conn.QueryRow(testCtx(t), "select 7", pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil || n != 7 {
		t.Fatalf("bystander client: %v (got %d)", err, n)
	}
}

func wantCode(t testing.TB, err error, code string) {
	t.Helper()
	var pgErr *pgconn.PgError
	var pqErr *pq.Error
	switch {
	case errors.As(err, &pgErr):
		if pgErr.Code != code {
			t.Fatalf("got SQLSTATE %s (%s), want %s", pgErr.Code, pgErr.Message, code)
		}
	case errors.As(err, &pqErr):
		if string(pqErr.Code) != code {
			t.Fatalf("got SQLSTATE %s (%s), want %s", pqErr.Code, pqErr.Message, code)
		}
	default:
		t.Fatalf("got %v (%T), want a server error with SQLSTATE %s", err, err, code)
	}
}

// uniqueRole creates a login role named prefix_<random> upstream and returns its name.
func uniqueRole(t testing.TB, prefix string) string {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := prefix + "_" + hex.EncodeToString(b[:])
	if _, err := direct(t, cluster(t)).Exec(testCtx(t), `create role "`+name+`" login`); err != nil {
		t.Fatal(err)
	}
	return name
}

// pgxConnect connects with pgx to dsn; the connection is closed at the end of the test.
func pgxConnect(t testing.TB, dsn string) (*pgx.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err == nil {
		t.Cleanup(func() { _ = conn.Close(context.Background()) })
	}
	return conn, err
}

func userDSN(p *testProxy, user, password, database, extra string) string {
	u := user
	if password != "" {
		u += ":" + password
	}
	return "postgres://" + u + "@" + p.addr + "/" + database + "?sslmode=disable" + extra
}

// ---------------------------------------------------------------------------------------------

func TestLoginBadStartupInput(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, nil)
	bystander := p.connect(t, pgx.QueryExecModeSimpleProtocol)

	rng := mrand.New(mrand.NewPCG(1, 2))
	random := make([]byte, 512)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	random[0] |= 0x80 // a length word that is out of range, so the proxy does not wait for more

	lenWord := func(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }
	unterminated := withLength(codeBody(startupV30, []byte("user\x00postgres\x00database\x00post")...))
	tests := []struct {
		name string
		send []byte
		code string
	}{
		{"random bytes", random, retry.CodeProtocolViolation},
		{"HTTP request", []byte("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"), retry.CodeProtocolViolation},
		{"TLS ClientHello without SSLRequest", []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03}, retry.CodeProtocolViolation},
		{"length 5", append(lenWord(5), 'x'), retry.CodeProtocolViolation},
		{"length 0", lenWord(0), retry.CodeProtocolViolation},
		{"length 10001", lenWord(10001), retry.CodeProtocolViolation},
		{"length 1<<30", lenWord(1 << 30), retry.CodeProtocolViolation},
		{"negative length", lenWord(0xFFFFFFFF), retry.CodeProtocolViolation},
		{"unterminated parameters", unterminated, retry.CodeProtocolViolation},
		{"trailing bytes", withLength(append(startupBody(startupV30, "user", "postgres"), 'z')), retry.CodeProtocolViolation},
		{"no user", withLength(startupBody(startupV30, "database", "postgres")), "28000"},
		{"protocol 2.0", withLength(startupBody(2<<16, "user", "postgres")), retry.CodeFeatureNotSupported},
		{"SSLRequest with extra bytes", withLength(codeBody(codeSSLRequest, 0, 0, 0, 0)), retry.CodeProtocolViolation},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stillWorks(t, bystander)
			lc := loginDial(t, p.addr)
			lc.write(tt.send)
			lc.expectFatal(tt.code)
			stillWorks(t, bystander)
		})
	}

	t.Run("EOF in the middle of the startup packet", func(t *testing.T) {
		stillWorks(t, bystander)
		lc := loginDial(t, p.addr)
		full := withLength(startupBody(startupV30, "user", "postgres", "database", "postgres"))
		lc.write(full[:len(full)-6])
		if err := lc.conn.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		// Nothing to say to a client that went away: the proxy just closes.
		lc.expectEOF()
		stillWorks(t, bystander)
	})

	t.Run("EOF inside the length word", func(t *testing.T) {
		lc := loginDial(t, p.addr)
		lc.write([]byte{0, 0})
		if err := lc.conn.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		lc.expectEOF()
		stillWorks(t, bystander)
	})
}

func TestLoginTimeout(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.ClientLoginTimeout = 300 * time.Millisecond })
	bystander := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	lc := loginDial(t, p.addr)
	lc.write([]byte{0, 0, 0, 40, 0, 3}) // half a startup packet, then silence
	start := time.Now()
	lc.expectEOF()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("closed after %v, want about client_login_timeout (300ms)", d)
	}
	stillWorks(t, bystander)
}

func TestLoginBadMessageAfterLogin(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.MaxMessageSize = 4096 })
	bystander := p.connect(t, pgx.QueryExecModeSimpleProtocol)

	tests := []struct {
		name string
		send []byte
	}{
		{"unknown type '!'", fmsg('!', []byte("hello"))},
		{"unknown type NUL", fmsg(0, nil)},
		{"password message after login", fmsg('p', []byte("secret\x00"))},
		{"length 3", rawHeader('Q', 3)},
		{"length 0", rawHeader('S', 0)},
		{"negative length", rawHeader('Q', 0xFFFFFFFF)},
		{"Query over max_message_size", append(rawHeader('Q', 4+5000), []byte("select 1 -- ")...)},
		{"Bind over max_message_size", append(rawHeader('B', 4+4097), make([]byte, 64)...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stillWorks(t, bystander)
			lc := loginDial(t, p.addr)
			lc.startup("postgres", "postgres")
			lc.untilReady()
			if v, _ := lc.query("select 1"); v != "1" {
				t.Fatalf("select 1 = %q", v)
			}
			lc.write(tt.send)
			lc.expectFatal(retry.CodeProtocolViolation)
			stillWorks(t, bystander)
		})
	}

	t.Run("message at max_message_size passes", func(t *testing.T) {
		lc := loginDial(t, p.addr)
		lc.startup("postgres", "postgres")
		lc.untilReady()
		sql := "select '" + strings.Repeat("a", 4096-len("select ''")-1) + "'"
		q, _ := (&pgproto3.Query{String: sql}).Encode(nil)
		if len(q)-5 != 4096 {
			t.Fatalf("body is %d bytes", len(q)-5)
		}
		if v, _ := lc.query(sql); len(v) != 4096-len("select ''")-1 {
			t.Fatalf("got %d bytes back", len(v))
		}
	})

	t.Run("inside a transaction: rolled back, server reused", func(t *testing.T) {
		admin := direct(t, c)
		table := "login_badmsg_tx"
		if _, err := admin.Exec(testCtx(t), "drop table if exists "+table+"; create table "+table+" (v int)"); err != nil {
			t.Fatal(err)
		}
		lc := loginDial(t, p.addr)
		lc.startup("postgres", "postgres")
		lc.untilReady()
		if _, st := lc.query("begin; insert into " + table + " values (1)"); st != 'T' {
			t.Fatalf("status %q, want T", st)
		}
		lc.write(fmsg('!', nil))
		lc.expectFatal(retry.CodeProtocolViolation)
		var n int
		if err := admin.QueryRow(testCtx(t), "select count(*) from "+table).Scan(&n); err != nil || n != 0 {
			t.Fatalf("rows after the client broke the protocol mid-transaction: %d (%v), want 0", n, err)
		}
		stillWorks(t, bystander)
	})
}

// TestLoginCommitBeforeProtocolError sends a COMMIT and, in the same write, an invalid message.
// PostgreSQL handles messages one at a time: the COMMIT runs and is answered, then the bad
// message gets 08P01. A proxy must not make the outcome depend on how the bytes were split
// into reads.
func TestLoginCommitBeforeProtocolError(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, nil)
	admin := direct(t, c)
	for _, target := range []struct{ name, addr string }{
		{"postgres", net.JoinHostPort(c.Host(), strconv.Itoa(c.Port()))},
		{"proxy", p.addr},
	} {
		t.Run(target.name, func(t *testing.T) {
			table := "login_commit_then_bad_" + target.name
			if _, err := admin.Exec(testCtx(t), "drop table if exists "+table+"; create table "+table+" (v int)"); err != nil {
				t.Fatal(err)
			}
			lc := loginDial(t, target.addr)
			lc.startup("postgres", "postgres")
			lc.untilReady()
			if _, st := lc.query("begin"); st != 'T' {
				t.Fatalf("status %q after begin", st)
			}
			if _, st := lc.query("insert into " + table + " values (1)"); st != 'T' {
				t.Fatalf("status %q after insert", st)
			}
			commit, _ := (&pgproto3.Query{String: "commit"}).Encode(nil)
			lc.write(append(commit, fmsg('!', nil)...))

			var got []string
			for {
				typ, body, err := lc.read()
				if err != nil {
					got = append(got, "read error: "+err.Error())
					break
				}
				switch typ {
				case 'C':
					got = append(got, "C "+strings.TrimRight(string(body), "\x00"))
				case 'Z':
					got = append(got, "Z "+string(body))
				case 'E':
					var e pgproto3.ErrorResponse
					_ = e.Decode(body)
					got = append(got, "E "+e.Code)
				default:
					got = append(got, string(typ))
				}
			}
			want := []string{"C COMMIT", "Z I", "E 08P01", "read error: EOF"}
			if strings.Join(got, " | ") != strings.Join(want, " | ") {
				t.Errorf("responses %q, want %q", got, want)
			}
			var n int
			if err := admin.QueryRow(testCtx(t), "select count(*) from "+table).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 1 {
				t.Errorf("rows committed: %d, want 1 (the COMMIT sent before the bad message was lost)", n)
			}
		})
	}
}

func TestLoginEncryptionRequestsWithoutTLS(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, nil)
	ssl := withLength(codeBody(codeSSLRequest))
	gss := withLength(codeBody(codeGSSENCRequest))
	for _, tt := range []struct {
		name     string
		requests [][]byte
	}{
		{"SSLRequest", [][]byte{ssl}},
		{"GSSENCRequest", [][]byte{gss}},
		{"GSSENCRequest then SSLRequest", [][]byte{gss, ssl}},
		{"SSLRequest then GSSENCRequest", [][]byte{ssl, gss}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			lc := loginDial(t, p.addr)
			for _, r := range tt.requests {
				lc.write(r)
				var b [1]byte
				if _, err := io.ReadFull(lc.conn, b[:]); err != nil || b[0] != 'N' {
					t.Fatalf("answer %q, %v; want 'N'", b[:], err)
				}
			}
			lc.startup("postgres", "postgres")
			if seen := lc.untilReady(); !strings.HasPrefix(seen, "R") || !strings.Contains(seen, "K") {
				t.Fatalf("login messages %q", seen)
			}
			if v, st := lc.query("select 40 + 2"); v != "42" || st != 'I' {
				t.Fatalf("query: %q %q", v, st)
			}
		})
	}

	t.Run("SSLRequest pipelined with the startup packet", func(t *testing.T) {
		// Without TLS this is harmless: the answer is 'N' and the startup is read next.
		lc := loginDial(t, p.addr)
		lc.write(append(slices.Clone(ssl), withLength(startupBody(startupV30, "user", "postgres", "database", "postgres"))...))
		var b [1]byte
		if _, err := io.ReadFull(lc.conn, b[:]); err != nil || b[0] != 'N' {
			t.Fatalf("answer %q, %v", b[:], err)
		}
		lc.untilReady()
	})
}

// writeSelfSignedCert writes a certificate for 127.0.0.1/localhost and its key into dir.
func writeSelfSignedCert(t testing.TB, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "pgsidecar test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func TestLoginTLS(t *testing.T) {
	c := cluster(t)
	certFile, keyFile := writeSelfSignedCert(t, t.TempDir())
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.TLS.CertFile, cfg.TLS.KeyFile = certFile, keyFile
	})

	t.Run("pgx sslmode=require", func(t *testing.T) {
		conn, err := pgxConnect(t, "postgres://postgres@"+p.addr+"/postgres?sslmode=require")
		if err != nil {
			t.Fatal(err)
		}
		tc, ok := conn.PgConn().Conn().(*tls.Conn)
		if !ok {
			t.Fatalf("connection is %T, want *tls.Conn", conn.PgConn().Conn())
		}
		if v := tc.ConnectionState().Version; v < tls.VersionTLS12 {
			t.Fatalf("TLS version %x", v)
		}
		var n int
		if err := conn.QueryRow(testCtx(t), "select 1", pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil || n != 1 {
			t.Fatalf("select 1: %d %v", n, err)
		}
	})

	t.Run("pgx sslmode=verify-full with the test CA", func(t *testing.T) {
		conn, err := pgxConnect(t, "postgres://postgres@"+p.addr+"/postgres?sslmode=verify-full&sslrootcert="+certFile)
		if err != nil {
			t.Fatal(err)
		}
		stillWorks(t, conn)
	})

	t.Run("lib/pq sslmode=require", func(t *testing.T) {
		db, err := sql.Open("postgres", "postgres://postgres@"+p.addr+"/postgres?sslmode=require")
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var n int
		if err := db.QueryRowContext(testCtx(t), "select 3").Scan(&n); err != nil || n != 3 {
			t.Fatalf("select 3: %d %v", n, err)
		}
	})

	t.Run("sslmode=disable still works", func(t *testing.T) {
		conn, err := pgxConnect(t, p.dsn("postgres", "postgres"))
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := conn.PgConn().Conn().(*tls.Conn); ok {
			t.Fatal("sslmode=disable got TLS")
		}
		stillWorks(t, conn)
	})

	t.Run("TLS 1.1 refused", func(t *testing.T) {
		lc := loginDial(t, p.addr)
		lc.write(withLength(codeBody(codeSSLRequest)))
		var b [1]byte
		if _, err := io.ReadFull(lc.conn, b[:]); err != nil || b[0] != 'S' {
			t.Fatalf("answer %q, %v; want 'S'", b[:], err)
		}
		tc := tls.Client(lc.conn, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}) //nolint:gosec // testing the refusal
		err := tc.HandshakeContext(testCtx(t))
		if err == nil {
			t.Fatalf("TLS %x handshake succeeded", tc.ConnectionState().Version)
		}
		if !strings.Contains(err.Error(), "remote error") && !strings.Contains(err.Error(), "protocol version") {
			t.Fatalf("handshake error %v, want the server's protocol version alert", err)
		}
	})

	t.Run("startup pipelined after SSLRequest is not read as plaintext", func(t *testing.T) {
		// CVE-2021-23214 shape: bytes sent before the TLS handshake must not be taken as the
		// startup packet inside TLS, nor answered in plaintext.
		lc := loginDial(t, p.addr)
		lc.write(append(withLength(codeBody(codeSSLRequest)), withLength(startupBody(startupV30, "user", "postgres", "database", "postgres"))...))
		var b [1]byte
		if _, err := io.ReadFull(lc.conn, b[:]); err != nil || b[0] != 'S' {
			t.Fatalf("answer %q, %v; want 'S'", b[:], err)
		}
		_ = lc.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		rest, err := io.ReadAll(lc.conn)
		if len(rest) > 0 && rest[0] == 'R' {
			t.Fatalf("plaintext authentication response after 'S': %q", rest)
		}
		if err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("read: %v", err)
		}
	})

	t.Run("SSLRequest inside TLS refused", func(t *testing.T) {
		lc := loginDial(t, p.addr)
		lc.write(withLength(codeBody(codeSSLRequest)))
		var b [1]byte
		if _, err := io.ReadFull(lc.conn, b[:]); err != nil || b[0] != 'S' {
			t.Fatalf("answer %q, %v", b[:], err)
		}
		tc := tls.Client(lc.conn, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // self-signed test cert
		if err := tc.HandshakeContext(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		if _, err := tc.Write(withLength(codeBody(codeSSLRequest))); err != nil {
			t.Fatal(err)
		}
		_ = tc.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, _ := io.ReadAll(tc)
		if len(got) > 0 && got[0] != 'E' {
			t.Fatalf("answer to SSLRequest inside TLS: %q", got)
		}
	})
}

func TestLoginNegotiateProtocolVersion(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, nil)

	lc := loginDial(t, p.addr)
	lc.write(withLength(startupBody(3<<16|5, "user", "postgres", "database", "postgres", "_pq_.x", "1")))
	typ, body := lc.mustRead()
	if typ != 'v' {
		t.Fatalf("first message %q (%s), want NegotiateProtocolVersion", typ, describeError(body))
	}
	var npv pgproto3.NegotiateProtocolVersion
	if err := npv.Decode(body); err != nil {
		t.Fatal(err)
	}
	if npv.NewestMinorProtocol != 0 || len(npv.UnrecognizedOptions) != 1 || npv.UnrecognizedOptions[0] != "_pq_.x" {
		t.Fatalf("NegotiateProtocolVersion %+v, want minor 0 and [_pq_.x]", npv)
	}
	if seen := lc.untilReady(); !strings.HasPrefix(seen, "R") || !strings.Contains(seen, "K") {
		t.Fatalf("login messages after NegotiateProtocolVersion: %q", seen)
	}
	if v, _ := lc.query("select 5"); v != "5" {
		t.Fatalf("select 5 = %q", v)
	}

	// A 3.2 client negotiates down to 3.0 and gets a 4-byte cancel key.
	for _, method := range []string{"trust", "scram-sha-256"} {
		t.Run("pgx max_protocol_version=3.2 "+method, func(t *testing.T) {
			q := p
			user, pw := "postgres", ""
			if method != "trust" {
				user, pw = uniqueRole(t, "npv"), "pw"
				q = startProxy(t, c, func(cfg *config.Config) {
					cfg.AuthType = method
					cfg.Users = []config.User{{Name: user, Password: pw}}
				})
			}
			conn, err := pgxConnect(t, userDSN(q, user, pw, "postgres", "&max_protocol_version=3.2"))
			if err != nil {
				t.Fatal(err)
			}
			if k := conn.PgConn().SecretKey(); len(k) != 4 {
				t.Fatalf("cancel key of %d bytes after negotiating 3.0", len(k))
			}
			stillWorks(t, conn)
		})
	}
}

func TestLoginAuthSCRAM(t *testing.T) {
	c := cluster(t)
	alice, bob := uniqueRole(t, "alice"), uniqueRole(t, "bob")
	verifier, err := auth.SCRAMVerifier("pw")
	if err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.AuthType = config.AuthSCRAMSHA256
		cfg.Users = []config.User{{Name: alice, Password: verifier}, {Name: bob, Password: "plainpw"}}
	})
	tests := []struct {
		name, user, password string
		code                 string // "" means success
	}{
		{"verifier, right password", alice, "pw", ""},
		{"plain secret, right password", bob, "plainpw", ""},
		{"verifier, wrong password", alice, "nope", "28P01"},
		{"plain secret, wrong password", bob, "pw", "28P01"},
		{"verifier, empty password", alice, "", "28P01"},
		{"unknown user", "mallory_no_such_user", "pw", "28P01"},
	}
	for _, tt := range tests {
		t.Run("pgx "+tt.name, func(t *testing.T) {
			conn, err := pgxConnect(t, userDSN(p, tt.user, tt.password, "postgres", ""))
			if tt.code != "" {
				wantCode(t, err, tt.code)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var who string
			if err := conn.QueryRow(testCtx(t), "select current_user", pgx.QueryExecModeSimpleProtocol).Scan(&who); err != nil || who != tt.user {
				t.Fatalf("current_user %q %v, want %q", who, err, tt.user)
			}
		})
		t.Run("lib/pq "+tt.name, func(t *testing.T) {
			db, err := sql.Open("postgres", userDSN(p, tt.user, tt.password, "postgres", ""))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			var who string
			err = db.QueryRowContext(testCtx(t), "select current_user").Scan(&who)
			if tt.code != "" {
				wantCode(t, err, tt.code)
				return
			}
			if err != nil || who != tt.user {
				t.Fatalf("current_user %q %v, want %q", who, err, tt.user)
			}
		})
	}

	t.Run("raw client gets SASL, not trust", func(t *testing.T) {
		lc := loginDial(t, p.addr)
		lc.startup(alice, "postgres")
		typ, body := lc.mustRead()
		if typ != 'R' || binary.BigEndian.Uint32(body) != 10 || !strings.Contains(string(body[4:]), "SCRAM-SHA-256") {
			t.Fatalf("got %q %q, want AuthenticationSASL offering SCRAM-SHA-256", typ, body)
		}
		// Garbage instead of SASLInitialResponse.
		lc.write(fmsg('p', []byte("garbage")))
		lc.expectFatal(retry.CodeProtocolViolation)
	})
}

func TestLoginAuthMD5(t *testing.T) {
	c := cluster(t)
	carol, dave, erin := uniqueRole(t, "carol"), uniqueRole(t, "dave"), uniqueRole(t, "erin")
	verifier, err := auth.SCRAMVerifier("erinpw")
	if err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.AuthType = config.AuthMD5
		cfg.Users = []config.User{
			{Name: carol, Password: auth.MD5Secret(carol, "carolpw")},
			{Name: dave, Password: "davepw"},
			{Name: erin, Password: verifier}, // md5 method with a SCRAM secret uses SCRAM, as PostgreSQL does
		}
	})
	tests := []struct {
		name, user, password string
		code                 string
	}{
		{"md5 secret, right password", carol, "carolpw", ""},
		{"md5 secret, wrong password", carol, "x", "28P01"},
		{"plain secret, right password", dave, "davepw", ""},
		{"plain secret, wrong password", dave, "carolpw", "28P01"},
		{"scram secret under md5, right password", erin, "erinpw", ""},
		{"scram secret under md5, wrong password", erin, "x", "28P01"},
		{"unknown user", "mallory_no_such_user", "x", "28P01"},
	}
	for _, tt := range tests {
		t.Run("pgx "+tt.name, func(t *testing.T) {
			conn, err := pgxConnect(t, userDSN(p, tt.user, tt.password, "postgres", ""))
			if tt.code != "" {
				wantCode(t, err, tt.code)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			stillWorks(t, conn)
		})
		t.Run("lib/pq "+tt.name, func(t *testing.T) {
			db, err := sql.Open("postgres", userDSN(p, tt.user, tt.password, "postgres", ""))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			var n int
			err = db.QueryRowContext(testCtx(t), "select 1").Scan(&n)
			if tt.code != "" {
				wantCode(t, err, tt.code)
				return
			}
			if err != nil || n != 1 {
				t.Fatalf("select 1: %d %v", n, err)
			}
		})
	}
}

// TestLoginTrustOnlyOnLoopback listens on the wildcard address, which is not a loopback
// listener: trust must be refused there unless auth_trust_remote is set.
func TestLoginTrustOnlyOnLoopback(t *testing.T) {
	c := cluster(t)
	loopbackAddr := func(p *testProxy) string {
		_, port, err := net.SplitHostPort(p.addr)
		if err != nil {
			t.Fatal(err)
		}
		return net.JoinHostPort("127.0.0.1", port)
	}
	t.Run("refused", func(t *testing.T) {
		p := startProxy(t, c, func(cfg *config.Config) { cfg.Listen = []string{"0.0.0.0:0"} })
		lc := loginDial(t, loopbackAddr(p))
		lc.startup("postgres", "postgres")
		lc.expectFatal(retry.CodeInvalidAuthorization)
	})
	t.Run("auth_trust_remote", func(t *testing.T) {
		p := startProxy(t, c, func(cfg *config.Config) {
			cfg.Listen = []string{"0.0.0.0:0"}
			cfg.AuthTrustRemote = true
		})
		lc := loginDial(t, loopbackAddr(p))
		lc.startup("postgres", "postgres")
		lc.untilReady()
	})
	t.Run("password auth on a remote listener", func(t *testing.T) {
		user := uniqueRole(t, "remote")
		p := startProxy(t, c, func(cfg *config.Config) {
			cfg.Listen = []string{"0.0.0.0:0"}
			cfg.AuthType = config.AuthSCRAMSHA256
			cfg.Users = []config.User{{Name: user, Password: "pw"}}
		})
		p.addr = loopbackAddr(p)
		conn, err := pgxConnect(t, userDSN(p, user, "pw", "postgres", ""))
		if err != nil {
			t.Fatal(err)
		}
		stillWorks(t, conn)
	})
}

func TestLoginUnknownDatabase(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, nil)
	bystander := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	_, err := pgxConnect(t, p.dsn("no_such_db_xyz", "postgres"))
	wantCode(t, err, "3D000")

	// The raw exchange: authentication succeeds first, then the upstream's FATAL 3D000.
	lc := loginDial(t, p.addr)
	lc.startup("postgres", "no_such_db_xyz")
	lc.expectFatal("3D000")
	stillWorks(t, bystander)

	user := uniqueRole(t, "nodb")
	ps := startProxy(t, c, func(cfg *config.Config) {
		cfg.AuthType = config.AuthSCRAMSHA256
		cfg.Users = []config.User{{Name: user, Password: "pw"}}
	})
	_, err = pgxConnect(t, userDSN(ps, user, "pw", "no_such_db_xyz", ""))
	wantCode(t, err, "3D000")
	_, err = pgxConnect(t, userDSN(ps, user, "wrong", "no_such_db_xyz", ""))
	wantCode(t, err, "28P01") // auth comes first: no upstream information before it
}

func TestLoginMaxClientConn(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.MaxClientConn = 3 })
	var conns []*pgx.Conn
	for i := 0; i < 3; i++ {
		conn, err := pgxConnect(t, p.dsn("postgres", "postgres"))
		if err != nil {
			t.Fatalf("client %d: %v", i+1, err)
		}
		conns = append(conns, conn)
	}
	_, err := pgxConnect(t, p.dsn("postgres", "postgres"))
	wantCode(t, err, retry.CodeTooManyConnections)

	// Failed logins do not use up slots.
	for i := 0; i < 3; i++ {
		_, err := pgxConnect(t, p.dsn("postgres", "postgres"))
		wantCode(t, err, retry.CodeTooManyConnections)
	}
	for _, conn := range conns {
		stillWorks(t, conn)
	}

	if err := conns[0].Close(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, err := pgxConnect(t, p.dsn("postgres", "postgres"))
		if err == nil {
			stillWorks(t, conn)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no slot freed 5s after a client left: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, err = pgxConnect(t, p.dsn("postgres", "postgres"))
	wantCode(t, err, retry.CodeTooManyConnections)
}

func TestLoginBackendKeyData(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, nil)
	conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	other := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	var backendPID uint32
	if err := conn.QueryRow(testCtx(t), "select pg_backend_pid()").Scan(&backendPID); err != nil {
		t.Fatal(err)
	}
	if conn.PgConn().PID() == backendPID {
		t.Fatalf("client sees the upstream's pid %d as its BackendKeyData", backendPID)
	}
	if conn.PgConn().PID() == other.PgConn().PID() {
		t.Fatalf("two clients share the cancel pid %d", conn.PgConn().PID())
	}
	if len(conn.PgConn().SecretKey()) != 4 {
		t.Fatalf("secret key of %d bytes for a 3.0 client", len(conn.PgConn().SecretKey()))
	}

	// The minted key cancels the client's running query.
	go func() {
		time.Sleep(300 * time.Millisecond)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.PgConn().CancelRequest(ctx)
	}()
	start := time.Now()
	_, err := conn.Exec(testCtx(t), "select pg_sleep(20)")
	wantCode(t, err, "57014")
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("cancel took %v", d)
	}
	stillWorks(t, conn)
}

func TestLoginShutdown(t *testing.T) {
	c := cluster(t)
	admin := direct(t, c)
	table := "login_shutdown"
	if _, err := admin.Exec(testCtx(t), "drop table if exists "+table+"; create table "+table+" (v int)"); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, c, nil)

	idle := loginDial(t, p.addr)
	idle.startup("postgres", "postgres")
	idle.untilReady()
	if v, _ := idle.query("select 1"); v != "1" {
		t.Fatal("idle client query")
	}

	busy := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	tx, err := busy.Begin(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(testCtx(t), "insert into "+table+" values (1)"); err != nil {
		t.Fatal(err)
	}

	const drain = 10 * time.Second
	shutdownDone := make(chan error, 1)
	shutdownStart := time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), drain)
		defer cancel()
		shutdownDone <- p.srv.Shutdown(ctx)
	}()

	// The idle client is told and disconnected at once.
	idle.expectFatal(retry.CodeAdminShutdown)

	// New clients are not accepted.
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", p.addr, time.Second)
		if err != nil {
			break
		}
		_ = conn.Close()
		if time.Now().After(deadline) {
			t.Fatal("proxy still accepts connections during shutdown")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The busy client finishes its transaction within the drain window.
	time.Sleep(200 * time.Millisecond)
	if _, err := tx.Exec(testCtx(t), "insert into "+table+" values (2)"); err != nil {
		t.Fatalf("insert during drain: %v", err)
	}
	if err := tx.Commit(testCtx(t)); err != nil {
		t.Fatalf("commit during drain: %v", err)
	}
	var n int
	if err := admin.QueryRow(testCtx(t), "select count(*) from "+table).Scan(&n); err != nil || n != 2 {
		t.Fatalf("rows after commit during drain: %d %v, want 2", n, err)
	}

	// Once its transaction is over, the client is idle: it is told 57P01 and let go, and
	// Shutdown returns without waiting for its deadline.
	select {
	case err := <-shutdownDone:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("Shutdown still waiting 5s after the last transaction ended (drain deadline %v): the client that finished its transaction was not disconnected", drain)
		err := <-shutdownDone
		t.Logf("Shutdown returned after %v: %v", time.Since(shutdownStart).Round(100*time.Millisecond), err)
	}
	err = busy.Ping(testCtx(t))
	if err == nil {
		t.Fatal("client still usable after Shutdown")
	}
	t.Logf("busy client after shutdown: %v", err)
}

// TestTLSCertificateReload: after the certificate files change, new TLS logins get the new
// certificate, and a connection made before goes on.
func TestTLSCertificateReload(t *testing.T) {
	c := cluster(t)
	dir := t.TempDir()
	certFile, keyFile := writeSelfSignedCert(t, dir)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.TLS.CertFile, cfg.TLS.KeyFile = certFile, keyFile })
	peerCert := func(conn *pgx.Conn) []byte {
		t.Helper()
		tc, ok := conn.PgConn().Conn().(*tls.Conn)
		if !ok {
			t.Fatalf("connection is %T, want TLS", conn.PgConn().Conn())
		}
		return tc.ConnectionState().PeerCertificates[0].Raw
	}
	tlsURL := "postgres://postgres@" + p.addr + "/postgres?sslmode=require"
	old, err := pgxConnect(t, tlsURL)
	if err != nil {
		t.Fatal(err)
	}
	oldCert := peerCert(old)
	writeSelfSignedCert(t, dir) // a new key and certificate, in place
	waitFor(t, testCtx(t), 10*time.Second, "new logins to get the new certificate", func() error {
		conn, err := pgxConnect(t, tlsURL)
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		if bytes.Equal(peerCert(conn), oldCert) {
			return errors.New("still the old certificate")
		}
		return nil
	})
	stillWorks(t, old)
}
