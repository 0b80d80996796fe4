package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

// Method is a client authentication method, named as in pg_hba.conf.
type Method string

// The supported methods.
const (
	Trust       Method = "trust"
	MD5         Method = "md5"
	SCRAMSHA256 Method = "scram-sha-256"
)

// ParseMethod returns the Method named s (case-insensitive, surrounding space
// ignored), or an error naming the accepted values.
func ParseMethod(s string) (Method, error) {
	switch m := Method(strings.ToLower(strings.TrimSpace(s))); m {
	case Trust, MD5, SCRAMSHA256:
		return m, nil
	}
	return "", fmt.Errorf("auth: unknown method %q (want %q, %q or %q)", s, Trust, MD5, SCRAMSHA256)
}

// maxBodyLen caps the body of a message read during authentication (the
// length field minus its own 4 bytes). PostgreSQL allows 65535 bytes for an
// authentication token.
const maxBodyLen = 64 << 10

// Authenticate runs the server side of the authentication exchange for method
// with the client on rw, after the client's StartupMessage was read. user is
// the user from the StartupMessage; secret is that user's configured secret
// (plain text, "md5<hex>" or a SCRAM verifier) and found is false when the
// user is not configured, in which case the exchange still runs and fails
// like a wrong password.
//
// Authenticate reads exactly the messages of the exchange, one at a time, and
// nothing after them. It returns nil when the client is authenticated; see the
// package documentation for the errors it returns.
func Authenticate(rw io.ReadWriter, method Method, user, secret string, found bool) error {
	return AuthenticateWith(rw, method, user, secret, found, nil)
}

// AuthenticateWith is Authenticate with the SCRAM credentials of plain-text passwords taken
// from creds (nil: derived at every login).
func AuthenticateWith(rw io.ReadWriter, method Method, user, secret string, found bool, creds *Credentials) error {
	switch method {
	case Trust:
		return nil
	case MD5:
		if found && isSCRAMVerifier(secret) {
			return authSCRAM(rw, user, secret, found, creds)
		}
		return authMD5(rw, user, secret, found)
	case SCRAMSHA256:
		return authSCRAM(rw, user, secret, found, creds)
	}
	return fmt.Errorf("auth: unknown method %q: %w", method,
		newPgError(retry.CodeInvalidAuthorization, fmt.Sprintf("authentication method not supported for user %q", user)))
}

func newPgError(code, msg string) *pgconn.PgError {
	return &pgconn.PgError{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: msg}
}

// failed returns the error for a failed authentication of user: the same
// PgError whatever the reason, wrapped with reason (for the proxy's log) when
// reason is not empty. reason must never contain a secret.
func failed(user, reason string) error {
	pgErr := newPgError(retry.CodeInvalidPassword, fmt.Sprintf("password authentication failed for user %q", user))
	if reason == "" {
		return pgErr
	}
	return fmt.Errorf("auth: %s: %w", reason, pgErr)
}

// protocolViolation returns a 08P01 PgError with msg.
func protocolViolation(msg string) *pgconn.PgError {
	return newPgError(retry.CodeProtocolViolation, msg)
}

// readMessage reads one message of type want from r: the 5-byte header, then
// exactly the body. what names the expected message in errors, as PostgreSQL
// does ("password", "SASL").
func readMessage(r io.Reader, want byte, what string) ([]byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("auth: read %s response: %w", what, err)
	}
	if hdr[0] != want {
		return nil, protocolViolation(fmt.Sprintf("expected %s response, got message type %d", what, hdr[0]))
	}
	_, n, _ := wire.HeaderOf(hdr[:])
	if n < 4 || n-4 > maxBodyLen {
		return nil, protocolViolation(fmt.Sprintf("invalid message length %d", n))
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("auth: read %s response: %w", what, err)
	}
	return body, nil
}

// encoder is a pgproto3 message.
type encoder interface {
	Encode(dst []byte) ([]byte, error)
}

// writeMessage encodes msg and writes it in one Write.
func writeMessage(w io.Writer, msg encoder) error {
	buf, err := msg.Encode(nil)
	if err != nil {
		return fmt.Errorf("auth: encode %T: %w", msg, err)
	}
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("auth: write %T: %w", msg, err)
	}
	return nil
}

// mockKey is a random key drawn once per process. It derives the mock
// credentials of users that are not configured, and the salt of users whose
// secret is in plain text, so that both are stable per user name (like
// PostgreSQL's mock authentication nonce) and indistinguishable.
var mockKey = sync.OnceValue(func() []byte {
	k := make([]byte, 32)
	// crypto/rand.Read never returns an error; it crashes the program if the
	// system's random source fails.
	_, _ = rand.Read(k)
	return k
})

// mockBytes returns 32 bytes derived from mockKey, purpose and user.
func mockBytes(purpose, user string) []byte {
	mac := hmac.New(sha256.New, mockKey())
	mac.Write([]byte(purpose))
	mac.Write([]byte{0})
	mac.Write([]byte(user))
	return mac.Sum(nil)
}
