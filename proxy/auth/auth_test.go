package auth

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/lib/pq"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// result is what the test server saw for one connection.
type result struct {
	authCode uint32 // the first Authentication request's code (0: none sent)
	err      error  // what Authenticate returned
}

// testServer accepts connections, reads the StartupMessage, runs Authenticate
// and answers like PostgreSQL.
type testServer struct {
	ln      net.Listener
	method  Method
	secrets map[string]string
	results chan result
	wg      sync.WaitGroup
}

func startServer(t *testing.T, method Method, secrets map[string]string) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{ln: ln, method: method, secrets: secrets, results: make(chan result, 64)}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.serve(t, conn)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		s.wg.Wait()
	})
	return s
}

// recordingConn remembers the first bytes written.
type recordingConn struct {
	net.Conn
	first []byte
}

func (c *recordingConn) Write(p []byte) (int, error) {
	if c.first == nil {
		c.first = append([]byte{}, p...)
	}
	return c.Conn.Write(p)
}

func (s *testServer) serve(t *testing.T, conn net.Conn) {
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Error(err)
		return
	}
	msg, err := pgproto3.NewBackend(conn, conn).ReceiveStartupMessage()
	if err != nil {
		t.Errorf("receive startup message: %v", err)
		return
	}
	sm, ok := msg.(*pgproto3.StartupMessage)
	if !ok {
		t.Errorf("got %T, want StartupMessage", msg)
		return
	}
	user := sm.Parameters["user"]
	secret, found := s.secrets[user]
	rc := &recordingConn{Conn: conn}
	err = Authenticate(rc, s.method, user, secret, found)
	r := result{err: err}
	if len(rc.first) >= 9 && rc.first[0] == 'R' {
		r.authCode = binary.BigEndian.Uint32(rc.first[5:9])
	}
	s.results <- r

	var buf []byte
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		msgs := []pgproto3.BackendMessage{
			&pgproto3.AuthenticationOk{},
			&pgproto3.ParameterStatus{Name: "server_version", Value: "15"},
			&pgproto3.ParameterStatus{Name: "client_encoding", Value: "UTF8"},
			&pgproto3.ParameterStatus{Name: "DateStyle", Value: "ISO, MDY"},
			&pgproto3.ParameterStatus{Name: "integer_datetimes", Value: "on"},
			&pgproto3.ParameterStatus{Name: "standard_conforming_strings", Value: "on"},
			&pgproto3.BackendKeyData{ProcessID: 42, SecretKey: []byte{1, 2, 3, 4}},
			&pgproto3.ReadyForQuery{TxStatus: 'I'},
		}
		for _, m := range msgs {
			if buf, err = m.Encode(buf); err != nil {
				t.Error(err)
				return
			}
		}
	case errors.As(err, &pgErr):
		er := &pgproto3.ErrorResponse{
			Severity: pgErr.Severity, SeverityUnlocalized: pgErr.SeverityUnlocalized,
			Code: pgErr.Code, Message: pgErr.Message,
		}
		if buf, err = er.Encode(nil); err != nil {
			t.Error(err)
			return
		}
	default:
		return // client gone
	}
	if _, err := conn.Write(buf); err != nil {
		return
	}
	// Wait for the client to hang up (Terminate then EOF, or just EOF).
	_, _ = io.Copy(io.Discard, conn)
}

func (s *testServer) port() string {
	return fmt.Sprint(s.ln.Addr().(*net.TCPAddr).Port)
}

func (s *testServer) nextResult(t *testing.T) result {
	t.Helper()
	select {
	case r := <-s.results:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no result from server")
		return result{}
	}
}

func connectPgx(t *testing.T, s *testServer, user, password string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg, err := pgconn.ParseConfig("host=127.0.0.1 port=" + s.port() + " dbname=app sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	cfg.User = user
	cfg.Password = password
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	if got := conn.ParameterStatus("server_version"); got != "15" {
		t.Errorf("server_version = %q, want 15", got)
	}
	return conn.Close(ctx)
}

func connectPq(t *testing.T, s *testServer, user, password string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pq.NewConnector(fmt.Sprintf("host=127.0.0.1 port=%s dbname=app sslmode=disable user='%s' password='%s'", s.port(), user, password))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := c.Connect(ctx)
	if err != nil {
		return err
	}
	return conn.Close()
}

const (
	authCodeMD5  = 5
	authCodeSASL = 10
)

func TestAuthenticateClients(t *testing.T) {
	const user, password = "alice", "s3cret"
	verifier, err := SCRAMVerifier(password)
	if err != nil {
		t.Fatal(err)
	}
	formats := map[string]string{
		"plain":  password,
		"md5":    MD5Secret(user, password),
		"scram":  verifier,
		"badver": "SCRAM-SHA-256$4096:c2FsdA==$notbase64!:x",
	}
	tests := []struct {
		method   Method
		secret   string // key in secrets; "" for an unknown user
		wantOK   bool   // with the right password
		wantCode uint32 // authentication request sent; 0 for none
	}{
		{Trust, "plain", true, 0},
		{Trust, "", true, 0},
		{MD5, "plain", true, authCodeMD5},
		{MD5, "md5", true, authCodeMD5},
		{MD5, "scram", true, authCodeSASL},
		{MD5, "badver", false, authCodeSASL},
		{MD5, "", false, authCodeMD5},
		{SCRAMSHA256, "plain", true, authCodeSASL},
		{SCRAMSHA256, "scram", true, authCodeSASL},
		{SCRAMSHA256, "md5", false, authCodeSASL},
		{SCRAMSHA256, "badver", false, authCodeSASL},
		{SCRAMSHA256, "", false, authCodeSASL},
	}
	clients := []struct {
		name    string
		connect func(*testing.T, *testServer, string, string) error
		code    func(error) (string, bool)
	}{
		{"pgx", connectPgx, func(err error) (string, bool) {
			var e *pgconn.PgError
			if errors.As(err, &e) {
				return e.Code, true
			}
			return "", false
		}},
		{"pq", connectPq, func(err error) (string, bool) {
			var e *pq.Error
			if errors.As(err, &e) {
				return string(e.Code), true
			}
			return "", false
		}},
	}
	for _, tt := range tests {
		secrets := map[string]string{}
		if tt.secret != "" {
			secrets[user] = formats[tt.secret]
		}
		for _, c := range clients {
			for _, pw := range []string{password, "wrong"} {
				name := fmt.Sprintf("%s/%s/%s/%s", c.name, tt.method, cmpOr(tt.secret, "unknown"), map[bool]string{true: "right", false: "wrong"}[pw == password])
				t.Run(name, func(t *testing.T) {
					s := startServer(t, tt.method, secrets)
					err := c.connect(t, s, user, pw)
					r := s.nextResult(t)
					if r.authCode != tt.wantCode {
						t.Errorf("authentication request %d, want %d", r.authCode, tt.wantCode)
					}
					wantOK := tt.method == Trust || tt.wantOK && pw == password
					if wantOK {
						if err != nil || r.err != nil {
							t.Fatalf("connect: %v (server: %v), want success", err, r.err)
						}
						return
					}
					if code, ok := c.code(err); !ok || code != "28P01" {
						t.Fatalf("connect: %v, want SQLSTATE 28P01", err)
					}
					var pgErr *pgconn.PgError
					if !errors.As(r.err, &pgErr) || pgErr.Code != "28P01" || pgErr.Severity != "FATAL" ||
						pgErr.Message != `password authentication failed for user "alice"` {
						t.Fatalf("server error %v, want FATAL 28P01 password authentication failed", r.err)
					}
					if tt.secret == "badver" && !strings.Contains(r.err.Error(), "invalid SCRAM-SHA-256 verifier format") {
						t.Errorf("server error %q does not mention the bad verifier", r.err)
					}
					if strings.Contains(r.err.Error(), "notbase64") || strings.Contains(r.err.Error(), password) {
						t.Errorf("server error %q contains the secret", r.err)
					}
				})
			}
		}
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// TestAuthenticateSASLprep checks that passwords SASLprep changes or rejects
// are derived as pgx derives them. (pgx normalizes with PRECIS, not SASLprep:
// for a password with a soft hyphen, which SASLprep removes, pgx fails
// against PostgreSQL and against this package alike, so it is not here.)
func TestAuthenticateSASLprep(t *testing.T) {
	for _, password := range []string{"pass\u00a0word", "emoji\U0001F600", "\u05d0abc"} {
		verifier, err := SCRAMVerifier(password)
		if err != nil {
			t.Fatal(err)
		}
		for kind, secret := range map[string]string{"plain": password, "scram": verifier} {
			t.Run(fmt.Sprintf("%q/%s", password, kind), func(t *testing.T) {
				s := startServer(t, SCRAMSHA256, map[string]string{"bob": secret})
				if err := connectPgx(t, s, "bob", password); err != nil {
					t.Fatalf("connect: %v", err)
				}
				if r := s.nextResult(t); r.err != nil {
					t.Fatalf("server: %v", r.err)
				}
			})
		}
	}
}

// scriptedConn is the client side of an exchange: reply computes what the
// client sends after reading everything the server wrote so far.
type scriptedConn struct {
	written []byte
	pending []byte
	reply   func(written []byte) []byte
	replied bool
}

func (c *scriptedConn) Write(p []byte) (int, error) {
	c.written = append(c.written, p...)
	return len(p), nil
}

func (c *scriptedConn) Read(p []byte) (int, error) {
	if !c.replied {
		c.replied = true
		c.pending = c.reply(c.written)
	}
	if len(c.pending) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

func msg(typ byte, body string) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(4+len(body)))
	return append(b, body...)
}

func header(typ byte, length int32) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(length))
	return b
}

func saslInitial(mech, data string) []byte {
	n := make([]byte, 4)
	binary.BigEndian.PutUint32(n, uint32(len(data)))
	return msg('p', mech+"\x00"+string(n)+data)
}

func TestAuthenticateTranscripts(t *testing.T) {
	const trailing = "Q\x00\x00\x00\x0dselect 1\x00"
	static := func(b ...[]byte) func([]byte) []byte {
		return func([]byte) []byte {
			var out []byte
			for _, x := range b {
				out = append(out, x...)
			}
			return out
		}
	}
	md5Reply := func(password string) func([]byte) []byte {
		return func(w []byte) []byte {
			// w is AuthenticationMD5Password: R, len, 5, salt.
			salt := string(w[9:13])
			inner := MD5Secret("alice", password)[3:]
			resp := MD5Secret(salt, inner) // md5(inner + salt)
			return append(msg('p', resp+"\x00"), trailing...)
		}
	}
	tests := []struct {
		name     string
		method   Method
		reply    func([]byte) []byte
		wantCode string // SQLSTATE; "" for success
		wantErr  error  // errors.Is target when wantCode is ""
		unread   string // bytes that must be left unread
	}{
		{"md5 ok, reads no further", MD5, md5Reply("s3cret"), "", nil, trailing},
		{"md5 wrong password", MD5, md5Reply("nope"), "28P01", nil, trailing},
		{"md5 wrong type", MD5, static(msg('Q', "select 1\x00")), "08P01", nil, "select 1\x00"},
		{"md5 length < 4", MD5, static(header('p', 3)), "08P01", nil, ""},
		{"md5 length huge", MD5, static(header('p', 1<<30)), "08P01", nil, ""},
		{"md5 length negative", MD5, static(header('p', -1)), "08P01", nil, ""},
		{"md5 no NUL", MD5, static(msg('p', "md5abc")), "08P01", nil, ""},
		{"md5 two NULs", MD5, static(msg('p', "md5\x00abc\x00")), "08P01", nil, ""},
		{"md5 hang up", MD5, static(), "", io.EOF, ""},
		{"md5 hang up in header", MD5, static([]byte{'p', 0}), "", io.ErrUnexpectedEOF, ""},
		{"md5 hang up in body", MD5, static(header('p', 40), []byte("md5")), "", io.ErrUnexpectedEOF, ""},
		{"md5 hang up before body", MD5, static(header('p', 40)), "", io.ErrUnexpectedEOF, ""},
		{"scram wrong mechanism", SCRAMSHA256, static(saslInitial("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,n=,r=abc")), "08P01", nil, ""},
		{"scram bad data length", SCRAMSHA256, static(msg('p', "SCRAM-SHA-256\x00\x00\x00\x00\x20n,,n=,r=a")), "08P01", nil, ""},
		{"scram no data", SCRAMSHA256, static(msg('p', "SCRAM-SHA-256\x00\xff\xff\xff\xff")), "08P01", nil, ""},
		{"scram no mechanism terminator", SCRAMSHA256, static(msg('p', "SCRAM-SHA-256")), "08P01", nil, ""},
		{"scram malformed first", SCRAMSHA256, static(saslInitial("SCRAM-SHA-256", "garbage")), "08P01", nil, ""},
		{"scram authzid", SCRAMSHA256, static(saslInitial("SCRAM-SHA-256", "n,a=bob,n=,r=abc")), "0A000", nil, ""},
		{"scram channel binding required", SCRAMSHA256, static(saslInitial("SCRAM-SHA-256", "p=tls-unique,,n=,r=abc")), "08P01", nil, ""},
		{"scram hang up after server-first", SCRAMSHA256, static(saslInitial("SCRAM-SHA-256", "n,,n=,r=abc")), "", io.EOF, ""},
		{"scram malformed final", SCRAMSHA256, static(saslInitial("SCRAM-SHA-256", "n,,n=,r=abc"), msg('p', "garbage")), "08P01", nil, ""},
		{"scram wrong type for final", SCRAMSHA256, static(saslInitial("SCRAM-SHA-256", "n,,n=,r=abc"), msg('d', "x")), "08P01", nil, "x"},
	}
	for _, tt := range tests {
		for _, found := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/found=%v", tt.name, found), func(t *testing.T) {
				c := &scriptedConn{reply: tt.reply}
				err := Authenticate(c, tt.method, "alice", "s3cret", found)
				wantCode := tt.wantCode
				if !found && wantCode == "" && tt.wantErr == nil {
					wantCode = "28P01"
				}
				var pgErr *pgconn.PgError
				switch {
				case wantCode != "":
					if !errors.As(err, &pgErr) || pgErr.Code != wantCode || pgErr.Severity != "FATAL" {
						t.Fatalf("Authenticate: %v, want FATAL %s", err, wantCode)
					}
				case tt.wantErr != nil:
					if !errors.Is(err, tt.wantErr) || errors.As(err, &pgErr) {
						t.Fatalf("Authenticate: %v, want %v and no PgError", err, tt.wantErr)
					}
				default:
					if err != nil {
						t.Fatalf("Authenticate: %v", err)
					}
				}
				if string(c.pending) != tt.unread {
					t.Errorf("left unread %q, want %q", c.pending, tt.unread)
				}
			})
		}
	}
}

// serverFirst runs an exchange up to the server-first-message and returns it.
func serverFirst(t *testing.T, user, secret string, found bool) string {
	t.Helper()
	c := &scriptedConn{reply: func([]byte) []byte { return saslInitial("SCRAM-SHA-256", "n,,n=,r=abc") }}
	if err := Authenticate(c, SCRAMSHA256, user, secret, found); !errors.Is(err, io.EOF) {
		t.Fatalf("Authenticate: %v, want EOF", err)
	}
	rest := c.written[1+binary.BigEndian.Uint32(c.written[1:5]):]
	var m pgproto3.AuthenticationSASLContinue
	if err := m.Decode(rest[5:]); err != nil {
		t.Fatal(err)
	}
	return string(m.Data)
}

func TestMockSaltStable(t *testing.T) {
	salt := func(s string) string {
		for f := range strings.SplitSeq(s, ",") {
			if v, ok := strings.CutPrefix(f, "s="); ok {
				return v
			}
		}
		t.Fatalf("no salt in %q", s)
		return ""
	}
	unknown1 := salt(serverFirst(t, "ghost", "", false))
	unknown2 := salt(serverFirst(t, "ghost", "", false))
	other := salt(serverFirst(t, "ghost2", "", false))
	plain1 := salt(serverFirst(t, "alice", "s3cret", true))
	plain2 := salt(serverFirst(t, "alice", "other", true))
	if unknown1 != unknown2 || plain1 != plain2 {
		t.Errorf("salt not stable per user: %s %s, %s %s", unknown1, unknown2, plain1, plain2)
	}
	if unknown1 == other {
		t.Errorf("different users got the same salt %s", other)
	}
	if len(unknown1) != 24 || len(plain1) != 24 {
		t.Errorf("salts %q, %q: want 16 bytes", unknown1, plain1)
	}
	if first := serverFirst(t, "ghost", "", false); !strings.HasSuffix(first, ",i=4096") {
		t.Errorf("server-first-message %q: want 4096 iterations", first)
	}
}

func TestParseMethod(t *testing.T) {
	tests := []struct {
		in      string
		want    Method
		wantErr bool
	}{
		{"trust", Trust, false},
		{"md5", MD5, false},
		{"scram-sha-256", SCRAMSHA256, false},
		{" SCRAM-SHA-256 ", SCRAMSHA256, false},
		{"password", "", true},
		{"", "", true},
		{"scram", "", true},
	}
	for _, tt := range tests {
		got, err := ParseMethod(tt.in)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("ParseMethod(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestAuthenticateUnknownMethod(t *testing.T) {
	err := Authenticate(&scriptedConn{}, Method("ldap"), "alice", "x", true)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28000" {
		t.Fatalf("Authenticate: %v, want 28000", err)
	}
}

func TestMD5Secret(t *testing.T) {
	// md5("postgres" + "postgres"), as PostgreSQL stores it.
	if got, want := MD5Secret("postgres", "postgres"), "md53175bce1d3201d16594cebf9d7eb3f9d"; got != want {
		t.Errorf("MD5Secret = %q, want %q", got, want)
	}
}
