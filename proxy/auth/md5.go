package auth

import (
	"crypto/md5" //nolint:gosec // MD5 is what the md5 authentication method is.
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// MD5Secret returns the MD5 secret PostgreSQL stores for user with password:
// "md5" followed by the hex MD5 of password+user.
func MD5Secret(user, password string) string {
	sum := md5.Sum([]byte(password + user)) //nolint:gosec // protocol-defined.
	return "md5" + hex.EncodeToString(sum[:])
}

// isMD5Secret reports whether secret is an MD5 secret, with PostgreSQL's rule:
// "md5" and 32 lower-case hex digits. Anything else not a SCRAM verifier is a
// plain-text password.
func isMD5Secret(secret string) bool {
	if len(secret) != 35 || !strings.HasPrefix(secret, "md5") {
		return false
	}
	for _, c := range secret[3:] {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// authMD5 runs the md5 exchange. secret is plain text or an MD5 secret.
func authMD5(rw io.ReadWriter, user, secret string, found bool) error {
	var salt [4]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return fmt.Errorf("auth: md5 salt: %w", err)
	}
	if err := writeMessage(rw, &pgproto3.AuthenticationMD5Password{Salt: salt}); err != nil {
		return err
	}
	body, err := readMessage(rw, 'p', "password")
	if err != nil {
		return err
	}
	var msg pgproto3.PasswordMessage
	if err := msg.Decode(body); err != nil || len(msg.Password)+1 != len(body) {
		return protocolViolation("invalid password packet size")
	}
	if !found {
		return failed(user, fmt.Sprintf("user %q is not configured", user))
	}
	inner := secret
	if !isMD5Secret(secret) {
		inner = MD5Secret(user, secret)
	}
	sum := md5.Sum(append([]byte(inner[3:]), salt[:]...)) //nolint:gosec // protocol-defined.
	want := "md5" + hex.EncodeToString(sum[:])
	if msg.Password == "" || subtle.ConstantTimeCompare([]byte(msg.Password), []byte(want)) != 1 {
		return failed(user, "password does not match")
	}
	return nil
}
