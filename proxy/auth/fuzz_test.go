package auth

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// FuzzAuthenticate feeds arbitrary bytes as the client side of the exchange.
// Authenticate must not panic, must end at EOF, and must return a PgError or
// an EOF error (or nil for trust).
func FuzzAuthenticate(f *testing.F) {
	verifier, err := SCRAMVerifier("s3cret")
	if err != nil {
		f.Fatal(err)
	}
	secrets := []string{"s3cret", MD5Secret("alice", "s3cret"), verifier, "SCRAM-SHA-256$1:AA==$AA==:AA=="}
	methods := []Method{Trust, MD5, SCRAMSHA256}

	f.Add(uint8(1), uint8(0), true, msg('p', "md5"+string(bytes.Repeat([]byte("0"), 32))+"\x00"))
	f.Add(uint8(1), uint8(1), false, msg('p', "\x00"))
	f.Add(uint8(1), uint8(2), true, saslInitial("SCRAM-SHA-256", "n,,n=,r=abc"))
	f.Add(uint8(2), uint8(0), true, append(saslInitial("SCRAM-SHA-256", "n,,n=,r=abc"),
		msg('p', "c=biws,r=abc,p=AAAA")...))
	f.Add(uint8(2), uint8(2), true, append(saslInitial("SCRAM-SHA-256", "y,,n=user,r=abc"),
		msg('p', "c=eSws,r=abcdef,p=dGVzdA==")...))
	f.Add(uint8(2), uint8(3), false, saslInitial("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,n=,r=abc"))
	f.Add(uint8(2), uint8(1), true, header('p', 3))
	f.Add(uint8(2), uint8(1), true, header('p', 1<<30))
	f.Add(uint8(0), uint8(0), true, []byte{})

	f.Fuzz(func(t *testing.T, method, secret uint8, found bool, data []byte) {
		m := methods[int(method)%len(methods)]
		rw := struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(data), io.Discard}
		err := Authenticate(rw, m, "alice", secrets[int(secret)%len(secrets)], found)
		var pgErr *pgconn.PgError
		switch {
		case err == nil:
			if m != Trust {
				t.Fatalf("%s: random bytes authenticated", m)
			}
		case errors.As(err, &pgErr):
			if pgErr.Severity != "FATAL" || len(pgErr.Code) != 5 {
				t.Fatalf("bad PgError %#v", pgErr)
			}
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		default:
			t.Fatalf("unexpected error %v", err)
		}
	})
}
