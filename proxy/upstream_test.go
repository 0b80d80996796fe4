package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/retry"
)

// This file tests how the proxy reaches its upstream (TLS with certificate verification,
// several hosts, credentials per user) and how it listens (several addresses, IPv6).

// upCA is a throwaway certificate authority for upstream TLS tests.
type upCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
}

func upSerial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// upNewCA generates a self-signed CA certificate and key.
func upNewCA(t testing.TB, name string) *upCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          upSerial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &upCA{cert: cert, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// serverCert issues a server certificate for localhost, 127.0.0.1 and ::1, returned as PEM.
func (ca *upCA) serverCert(t testing.TB) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: upSerial(t),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

// upWriteServerFile writes name into the cluster's data directory with mode perm, owned by the
// owner of the data directory (the postgres system user when the tests run as root), as
// PostgreSQL requires for its key file.
func upWriteServerFile(t testing.TB, c *pgtest.Cluster, name string, data []byte, perm os.FileMode) {
	t.Helper()
	fi, err := os.Stat(c.DataDir())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(c.DataDir(), name)
	if err := os.WriteFile(path, data, perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, perm); err != nil {
		t.Fatal(err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && os.Geteuid() == 0 {
		if err := os.Chown(path, int(st.Uid), int(st.Gid)); err != nil {
			t.Fatal(err)
		}
	}
}

// upStartTLSCluster starts a cluster of its own that accepts TLS with a certificate issued by
// ca. The certificate files live in the data directory (relative names in the settings).
func upStartTLSCluster(t testing.TB, ca *upCA) *pgtest.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs PostgreSQL")
	}
	if err := pgtest.Available(); err != nil {
		if pgtest.Required() {
			t.Fatalf("%v (PostgreSQL is required here: not skipping)", err)
		}
		t.Skip(err)
	}
	// ssl stays off for the first start: the files can only be written once initdb has made
	// the data directory; ALTER SYSTEM turns it on and a restart applies it.
	c := pgtest.Must(t, pgtest.Options{Settings: map[string]string{
		"ssl_cert_file": "server.crt",
		"ssl_key_file":  "server.key",
	}})
	certPEM, keyPEM := ca.serverCert(t)
	upWriteServerFile(t, c, "server.crt", certPEM, 0o644)
	upWriteServerFile(t, c, "server.key", keyPEM, 0o600)
	ctx := testCtx(t)
	if err := c.Exec(ctx, "ALTER SYSTEM SET ssl = on"); err != nil {
		t.Fatal(err)
	}
	if err := c.Restart(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	// The cluster itself must now speak TLS, or the assertions through the proxy mean nothing.
	conn, err := pgx.Connect(ctx, "postgres://postgres@127.0.0.1:"+strconv.Itoa(c.Port())+"/postgres?sslmode=require")
	if err != nil {
		t.Fatalf("direct TLS connection to the test cluster: %v", err)
	}
	defer conn.Close(context.Background())
	return c
}

// upSSLThrough connects to dsn with pgx and returns whether the session's server connection
// uses TLS, as pg_stat_ssl says.
func upSSLThrough(t testing.TB, dsn string) (bool, error) {
	t.Helper()
	conn, err := pgxConnect(t, dsn)
	if err != nil {
		return false, err
	}
	var ssl bool
	if err := conn.QueryRow(testCtx(t), "select ssl from pg_stat_ssl where pid = pg_backend_pid()").Scan(&ssl); err != nil {
		return false, err
	}
	return ssl, nil
}

func TestUpstreamTLSVerifyFull(t *testing.T) {
	dir := t.TempDir()
	ca := upNewCA(t, "pgsidecar test CA")
	wrongCA := upNewCA(t, "pgsidecar unrelated CA")
	caFile := filepath.Join(dir, "ca.pem")
	wrongCAFile := filepath.Join(dir, "wrong-ca.pem")
	if err := os.WriteFile(caFile, ca.certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(wrongCAFile, wrongCA.certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	c := upStartTLSCluster(t, ca)
	port := strconv.Itoa(c.Port())
	upstream := func(query string) func(*config.Config) {
		return func(cfg *config.Config) {
			cfg.DatabaseURL = "postgres://postgres@localhost:" + port + "/postgres?" + query
		}
	}

	t.Run("verify-full", func(t *testing.T) {
		p := startProxy(t, c, upstream("sslmode=verify-full&sslrootcert="+url.QueryEscape(caFile)))
		for i := range 3 {
			ssl, err := upSSLThrough(t, p.dsn("postgres", "postgres"))
			if err != nil {
				t.Fatalf("client %d through the proxy: %v", i, err)
			}
			if !ssl {
				t.Fatalf("client %d: the proxy's upstream connection does not use TLS (pg_stat_ssl.ssl = false) with sslmode=verify-full", i)
			}
		}
	})

	t.Run("verify-full wrong CA", func(t *testing.T) {
		p := startProxy(t, c, upstream("sslmode=verify-full&sslrootcert="+url.QueryEscape(wrongCAFile)))
		start := time.Now()
		_, err := upSSLThrough(t, p.dsn("postgres", "postgres"))
		elapsed := time.Since(start)
		if err == nil {
			t.Fatal("a client got through a proxy whose upstream certificate is signed by a CA it does not trust")
		}
		t.Logf("client error after %v: %v", elapsed.Round(time.Millisecond), err)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) {
			t.Fatalf("got %v (%T), want the proxy's ErrorResponse (*pgconn.PgError)", err, err)
		}
		if pgErr.Code != retry.CodeConnectionFailure && !strings.Contains(pgErr.Message, "certificate") {
			t.Fatalf("got SQLSTATE %s %q, want 08006 or a message about the certificate", pgErr.Code, pgErr.Message)
		}
		if !strings.Contains(pgErr.Message, "certificate") {
			t.Errorf("error message %q does not say the upstream certificate was not trusted", pgErr.Message)
		}
		// A certificate that does not verify will not verify on a retry: the client should not
		// wait out query_wait_timeout. (Only checked when localhost is one address: with a
		// refused ::1 as well, retrying is defensible.)
		if addrs, lerr := net.DefaultResolver.LookupHost(testCtx(t), "localhost"); lerr == nil && len(addrs) == 1 {
			if elapsed > p.cfg.QueryWaitTimeout/2 {
				t.Errorf("certificate failure took %v to reach the client (query_wait_timeout %v): retried as if transient",
					elapsed, p.cfg.QueryWaitTimeout)
			}
		}
	})

	t.Run("require without root cert", func(t *testing.T) {
		p := startProxy(t, c, upstream("sslmode=require"))
		ssl, err := upSSLThrough(t, p.dsn("postgres", "postgres"))
		if err != nil {
			t.Fatalf("client through the proxy: %v", err)
		}
		if !ssl {
			t.Fatal("the proxy's upstream connection does not use TLS with sslmode=require")
		}
	})

	t.Run("cancel over TLS", func(t *testing.T) {
		// A relay in front of the upstream records how every connection to it starts.
		fwd := upRecordingRelay(t, c.Port())
		p := startProxy(t, c, func(cfg *config.Config) {
			cfg.DatabaseURL = "postgres://postgres@localhost:" + strconv.Itoa(fwd.port) + "/postgres?sslmode=verify-full&sslrootcert=" + url.QueryEscape(caFile)
		})
		ctx := testCtx(t)
		conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
		done := make(chan error, 1)
		go func() {
			_, err := conn.Exec(ctx, "select pg_sleep(30)")
			done <- err
		}()
		time.Sleep(300 * time.Millisecond)
		if err := conn.PgConn().CancelRequest(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if pe, ok := errors.AsType[*pgconn.PgError](err); !ok || pe.Code != "57014" {
				t.Fatalf("cancelled query: %v, want 57014", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the cancel did not reach the query")
		}
		starts := fwd.starts()
		tlsStarts := 0
		for _, s := range starts {
			switch s {
			case "ssl":
				tlsStarts++
			case "cancel":
				t.Error("a cancel request went to the upstream in plain text")
			}
		}
		if tlsStarts < 2 {
			t.Errorf("connection starts %q: want the server connection and the cancel over TLS", starts)
		}
	})

	t.Run("disable", func(t *testing.T) {
		// Control: the same query says false without TLS, so true above is meaningful.
		p := startProxy(t, c, upstream("sslmode=disable"))
		ssl, err := upSSLThrough(t, p.dsn("postgres", "postgres"))
		if err != nil {
			t.Fatalf("client through the proxy: %v", err)
		}
		if ssl {
			t.Fatal("pg_stat_ssl.ssl is true with sslmode=disable")
		}
	})
}

func TestListenIPv6AndSeveral(t *testing.T) {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6 loopback")
	}
	_ = ln.Close()
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.Listen = []string{"127.0.0.1:0", "[::1]:0"}
	})
	addrs := p.srv.Addrs()
	if len(addrs) != 2 {
		t.Fatalf("Addrs() = %v, want two listeners", addrs)
	}
	seen := map[string]bool{}
	for i, a := range addrs {
		ta, ok := a.(*net.TCPAddr)
		if !ok {
			t.Fatalf("listener %d: address %v is %T, want *net.TCPAddr", i, a, a)
		}
		if ta.Port == 0 {
			t.Fatalf("listener %d: %v has port 0", i, a)
		}
		family := "ipv4"
		if ta.IP.To4() == nil {
			family = "ipv6"
		}
		seen[family] = true
		dsn := "postgres://postgres@" + a.String() + "/postgres?sslmode=disable"
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
			conn, err := pgxConnect(t, dsn)
			if err != nil {
				t.Fatalf("connect via %s (%s): %v", a, family, err)
			}
			var n int
			if err := conn.QueryRow(testCtx(t), "select $1::int + 1", mode, 41).Scan(&n); err != nil || n != 42 {
				t.Fatalf("query via %s (%s, %v): %v (got %d)", a, family, mode, err, n)
			}
			var addr string
			if err := conn.QueryRow(testCtx(t), "select current_database() || '/' || current_user", mode).Scan(&addr); err != nil || addr != "postgres/postgres" {
				t.Fatalf("query via %s (%s, %v): %v (got %q)", a, family, mode, err, addr)
			}
		}
	}
	if !seen["ipv4"] || !seen["ipv6"] {
		t.Fatalf("listeners %v: want one IPv4 and one IPv6 address", addrs)
	}
}

func TestUpstreamMultiHost(t *testing.T) {
	c := cluster(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	dsn := "postgres://postgres@127.0.0.1:" + strconv.Itoa(dead) + ",127.0.0.1:" + strconv.Itoa(c.Port()) + "/postgres?sslmode=disable"
	p := startProxy(t, c, func(cfg *config.Config) { cfg.DatabaseURL = dsn })
	start := time.Now()
	for i := range 3 {
		conn := p.connect(t, pgx.QueryExecModeCacheStatement)
		var port int
		if err := conn.QueryRow(testCtx(t), "select inet_server_port()").Scan(&port); err != nil {
			t.Fatalf("client %d through a multi-host upstream: %v", i, err)
		}
		if port != c.Port() {
			t.Fatalf("client %d: served by port %d, want the live host's %d", i, port, c.Port())
		}
		var n int
		if err := conn.QueryRow(testCtx(t), "select $1::int * 2", 21).Scan(&n); err != nil || n != 42 {
			t.Fatalf("client %d: %v (got %d)", i, err, n)
		}
	}
	// A refused first host costs a failed dial, not a retry with backoff.
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Errorf("three clients took %v with a dead first host", elapsed)
	}
}

func TestRouteUnknownUserPassword(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: needs PostgreSQL")
	}
	c := pgtest.Must(t, pgtest.Options{Auth: "scram-sha-256", Password: "pw"})
	ctx := testCtx(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	role := "nopw_" + hex.EncodeToString(b[:])
	if err := c.Exec(ctx, `CREATE ROLE "`+role+`" LOGIN PASSWORD 'upstream-secret'`); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.DatabaseURL = c.DSN("postgres") // holds postgres's password
	})
	if !strings.Contains(p.cfg.DatabaseURL, ":pw@") {
		t.Fatalf("test setup: the upstream URL %s carries no password", config.RedactDSN(p.cfg.DatabaseURL))
	}

	t.Run("url user", func(t *testing.T) {
		conn, err := pgxConnect(t, p.dsn("postgres", "postgres"))
		if err != nil {
			t.Fatalf("postgres (the database_url user) through the proxy: %v", err)
		}
		var user string
		if err := conn.QueryRow(testCtx(t), "select current_user").Scan(&user); err != nil || user != "postgres" {
			t.Fatalf("select current_user: %v (got %q)", err, user)
		}
	})

	t.Run("user without upstream password", func(t *testing.T) {
		start := time.Now()
		conn, err := pgxConnect(t, p.dsn("postgres", role))
		if err == nil {
			var user string
			_ = conn.QueryRow(testCtx(t), "select current_user").Scan(&user)
			t.Fatalf("%s logged in upstream (as %q) although pgsidecar has no password for it", role, user)
		}
		t.Logf("client error after %v: %v", time.Since(start).Round(time.Millisecond), err)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) {
			t.Fatalf("got %v (%T), want an ErrorResponse (*pgconn.PgError) with SQLSTATE class 28", err, err)
		}
		if pgErr.Code != retry.CodeInvalidAuthorization || !strings.Contains(pgErr.Message, "users entry") || !strings.Contains(pgErr.Message, role) {
			t.Fatalf("got SQLSTATE %s (%s), want 28000 naming the user and the settings that would give its password", pgErr.Code, pgErr.Message)
		}
		// An authentication failure is not transient: no waiting out query_wait_timeout.
		if d := time.Since(start); d > p.cfg.QueryWaitTimeout/2 {
			t.Errorf("auth failure took %v to reach the client (query_wait_timeout %v)", d, p.cfg.QueryWaitTimeout)
		}
	})

	t.Run("url user still works", func(t *testing.T) {
		conn, err := pgxConnect(t, p.dsn("postgres", "postgres"))
		if err != nil {
			t.Fatalf("postgres after a refused user: %v", err)
		}
		stillWorks(t, conn)
	})
}

// upRelay forwards TCP connections to a local port and records how each one started.
type upRelay struct {
	port int
	mu   sync.Mutex
	seen []string // "ssl", "cancel", "startup" or "other", in order
}

func (r *upRelay) starts() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.seen)
}

// upRecordingRelay starts an upRelay to 127.0.0.1:target, closed at the end of the test.
func upRecordingRelay(t testing.TB, target int) *upRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &upRelay{port: ln.Addr().(*net.TCPAddr).Port}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { r.relay(c, target) })
		}
	})
	return r
}

func (r *upRelay) relay(c net.Conn, target int) {
	defer c.Close()
	var head [8]byte
	if _, err := io.ReadFull(c, head[:]); err != nil {
		return
	}
	kind := "other"
	switch binary.BigEndian.Uint32(head[4:]) {
	case 80877103:
		kind = "ssl"
	case 80877102:
		kind = "cancel"
	case 196608:
		kind = "startup"
	}
	r.mu.Lock()
	r.seen = append(r.seen, kind)
	r.mu.Unlock()
	up, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(target))
	if err != nil {
		return
	}
	defer up.Close()
	if _, err := up.Write(head[:]); err != nil {
		return
	}
	go func() {
		_, _ = io.Copy(up, c)
		_ = up.(*net.TCPConn).CloseWrite()
	}()
	_, _ = io.Copy(c, up)
}
