package auth

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/xdg-go/scram"
)

const (
	scramMechanism  = "SCRAM-SHA-256"
	scramPrefix     = scramMechanism + "$"
	scramIterations = 4096 // PostgreSQL's default scram_iterations
	scramSaltLen    = 16   // PostgreSQL's SCRAM_DEFAULT_SALT_LEN
	scramKeyLen     = 32   // SHA-256 output
)

// SCRAMVerifier returns the SCRAM-SHA-256 verifier of password in
// PostgreSQL's format, "SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>"
// (standard base64), with a random 16-byte salt. Like PostgreSQL, the password
// is normalized with SASLprep, or used as is when SASLprep rejects it.
func SCRAMVerifier(password string) (string, error) {
	salt := make([]byte, scramSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("auth: scram salt: %w", err)
	}
	cred, err := deriveCredentials(password, salt)
	if err != nil {
		return "", err
	}
	return formatVerifier(cred), nil
}

// deriveCredentials derives the SCRAM-SHA-256 stored credentials of password
// with salt and scramIterations.
func deriveCredentials(password string, salt []byte) (scram.StoredCredentials, error) {
	client, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		// PostgreSQL uses the password as is when SASLprep fails, and so do
		// libpq and pgx.
		client, err = scram.SHA256.NewClientUnprepped("", password, "")
		if err != nil {
			return scram.StoredCredentials{}, fmt.Errorf("auth: scram client: %w", err)
		}
	}
	cred, err := client.GetStoredCredentialsWithError(scram.KeyFactors{Salt: string(salt), Iters: scramIterations})
	if err != nil {
		return scram.StoredCredentials{}, fmt.Errorf("auth: derive scram credentials: %w", err)
	}
	return cred, nil
}

func formatVerifier(c scram.StoredCredentials) string {
	b64 := base64.StdEncoding.EncodeToString
	return scramPrefix + strconv.Itoa(c.Iters) + ":" + b64([]byte(c.Salt)) + "$" + b64(c.StoredKey) + ":" + b64(c.ServerKey)
}

// isSCRAMVerifier reports whether secret is meant as a SCRAM verifier (it may
// still be malformed; see parseVerifier).
func isSCRAMVerifier(secret string) bool {
	return strings.HasPrefix(secret, scramPrefix)
}

// errBadVerifier is wrapped by parseVerifier's errors. Its text and theirs
// never contain any part of the verifier.
var errBadVerifier = errors.New("invalid SCRAM-SHA-256 verifier format (want SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)")

// parseVerifier parses a verifier in PostgreSQL's format.
func parseVerifier(v string) (scram.StoredCredentials, error) {
	bad := func(what string) (scram.StoredCredentials, error) {
		return scram.StoredCredentials{}, fmt.Errorf("%w: %s", errBadVerifier, what)
	}
	rest, ok := strings.CutPrefix(v, scramPrefix)
	if !ok {
		return bad("missing prefix")
	}
	params, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return bad("missing '$' before keys")
	}
	iterStr, saltB64, ok := strings.Cut(params, ":")
	if !ok {
		return bad("missing ':' after iterations")
	}
	iters, err := strconv.Atoi(iterStr)
	if err != nil || iters <= 0 {
		return bad("bad iteration count")
	}
	salt, err := base64.StdEncoding.DecodeString(saltB64)
	if err != nil || len(salt) == 0 {
		return bad("bad salt")
	}
	storedB64, serverB64, ok := strings.Cut(keys, ":")
	if !ok {
		return bad("missing ':' between keys")
	}
	stored, err := base64.StdEncoding.DecodeString(storedB64)
	if err != nil || len(stored) != scramKeyLen {
		return bad("bad StoredKey")
	}
	server, err := base64.StdEncoding.DecodeString(serverB64)
	if err != nil || len(server) != scramKeyLen {
		return bad("bad ServerKey")
	}
	return scram.StoredCredentials{
		KeyFactors: scram.KeyFactors{Salt: string(salt), Iters: iters},
		StoredKey:  stored,
		ServerKey:  server,
	}, nil
}

// mockCredentials returns credentials for user that no password matches, with
// the same salt and iteration count a plain-text secret of user gets.
func mockCredentials(user string) scram.StoredCredentials {
	return scram.StoredCredentials{
		KeyFactors: scram.KeyFactors{Salt: string(userSalt(user)), Iters: scramIterations},
		StoredKey:  mockBytes("scram-stored-key", user),
		ServerKey:  mockBytes("scram-server-key", user),
	}
}

// userSalt is the salt used for user when its secret is not a SCRAM verifier:
// stable per user for the life of the process, whether the user exists or not.
func userSalt(user string) []byte {
	return mockBytes("scram-salt", user)[:scramSaltLen]
}

// authSCRAM runs the SASL SCRAM-SHA-256 exchange. An unknown user, an MD5
// secret or a malformed verifier runs the exchange with mock credentials and
// fails.
func authSCRAM(rw io.ReadWriter, user, secret string, found bool, creds *Credentials) error {
	var cred scram.StoredCredentials
	var doomed string // why authentication fails whatever the client sends
	switch {
	case !found:
		doomed = fmt.Sprintf("user %q is not configured", user)
	case isSCRAMVerifier(secret):
		c, err := parseVerifier(secret)
		if err != nil {
			doomed = fmt.Sprintf("user %q: %v", user, err)
			break
		}
		cred = c
	case isMD5Secret(secret):
		doomed = fmt.Sprintf("user %q has an MD5 secret, which cannot be used for SCRAM-SHA-256", user)
	default:
		c, err := creds.scramFor(user, secret)
		if err != nil {
			doomed = fmt.Sprintf("user %q: %v", user, err)
			break
		}
		cred = c
	}
	if doomed != "" {
		cred = mockCredentials(user)
	}

	if err := writeMessage(rw, &pgproto3.AuthenticationSASL{AuthMechanisms: []string{scramMechanism}}); err != nil {
		return err
	}
	body, err := readMessage(rw, 'p', "SASL")
	if err != nil {
		return err
	}
	var first pgproto3.SASLInitialResponse
	if err := first.Decode(body); err != nil {
		return protocolViolation("invalid SASL initial response")
	}
	// pgproto3 skips the data length; check it as PostgreSQL does (-1: none).
	lenAt := bytes.IndexByte(body, 0) + 1
	switch n := int32(binary.BigEndian.Uint32(body[lenAt:])); {
	case n == -1 && len(first.Data) == 0:
	case n < 0 || int(n) != len(first.Data):
		return protocolViolation("invalid SASL initial response length")
	}
	if first.AuthMechanism != scramMechanism {
		return protocolViolation("client selected an invalid SASL authentication mechanism")
	}

	// PostgreSQL ignores the user name in the SCRAM messages (libpq and pgx
	// send an empty one): the credentials are those of the startup user.
	server, err := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) { return cred, nil })
	if err != nil {
		return fmt.Errorf("auth: scram server: %w", err)
	}
	conv := server.NewConversation()
	out, err := conv.Step(string(first.Data))
	if err != nil {
		return fmt.Errorf("auth: scram client-first-message: %w: %w", protocolViolation("malformed SCRAM message"), err)
	}
	if conv.AuthzID() != "" {
		return newPgError(retry.CodeFeatureNotSupported, "client uses authorization identity, but it is not supported")
	}
	if err := writeMessage(rw, &pgproto3.AuthenticationSASLContinue{Data: []byte(out)}); err != nil {
		return err
	}

	body, err = readMessage(rw, 'p', "SASL")
	if err != nil {
		return err
	}
	var final pgproto3.SASLResponse
	if err := final.Decode(body); err != nil {
		return protocolViolation("invalid SASL response")
	}
	out, err = conv.Step(string(final.Data))
	switch {
	case err != nil && out != scram.ErrInvalidProof:
		// Checked first so that a malformed message gets the same answer
		// for an unknown user as for a known one.
		return fmt.Errorf("auth: scram client-final-message: %w: %w", protocolViolation("malformed SCRAM message"), err)
	case doomed != "":
		return failed(user, doomed)
	case err != nil:
		return failed(user, "password does not match")
	case !conv.Valid():
		return failed(user, "scram conversation not valid")
	}
	return writeMessage(rw, &pgproto3.AuthenticationSASLFinal{Data: []byte(out)})
}
