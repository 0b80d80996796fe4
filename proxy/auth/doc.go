// Package auth runs the server side of PostgreSQL client authentication for
// the proxy: the messages exchanged between the client's StartupMessage and
// the AuthenticationOk that the proxy sends when authentication succeeds.
//
// Three methods are supported, with PostgreSQL's semantics:
//
//   - [Trust]: no exchange at all.
//   - [MD5]: AuthenticationMD5Password with a random salt, answered by a
//     PasswordMessage. A user whose secret is a SCRAM verifier is moved to
//     SCRAM-SHA-256 instead, as PostgreSQL does.
//   - [SCRAMSHA256]: SASL with the SCRAM-SHA-256 mechanism (RFC 5802,
//     RFC 7677, no channel binding), run by github.com/xdg-go/scram.
//
// A configured secret is one of: a plain-text password, an MD5 secret
// ("md5" followed by 32 lower-case hex digits, see [MD5Secret]) or a SCRAM
// verifier in PostgreSQL's format (see [SCRAMVerifier]). An MD5 secret cannot
// be used for SCRAM-SHA-256; such a user always fails to authenticate under
// that method.
//
// A user that is not configured goes through the same exchange as one that
// is, with mock credentials, and fails with the same error as a wrong
// password, so that a client cannot find out which users exist. The mock
// salt shown to a client for an unknown user is stable for a given user name
// for the life of the process, as it is for a configured user.
//
// # Contract with the caller
//
// [Authenticate] reads exactly the messages of the exchange from the
// connection, one at a time and never ahead, so the caller can keep reading
// the same connection afterwards. It writes each authentication request as a
// single Write. On success it returns nil and the caller sends
// AuthenticationOk, ParameterStatus, BackendKeyData and ReadyForQuery. On
// failure the error is one of:
//
//   - an error for which errors.As finds a *pgconn.PgError (severity FATAL,
//     SQLSTATE 28P01 for a failed authentication, 08P01 for a protocol
//     violation): send it to the client as an ErrorResponse and close. The
//     error text around the PgError may say why, for the proxy's log (for
//     example that the user is not configured); it never contains a secret.
//   - an error wrapping io.EOF or io.ErrUnexpectedEOF: the client hung up;
//     close without writing.
//   - any other error (a failed write): close.
//
// Example, in the proxy after the StartupMessage:
//
//	err := auth.Authenticate(conn, cfg.AuthMethod, user, secret, found)
//	var pgErr *pgconn.PgError
//	switch {
//	case err == nil:
//		// send AuthenticationOk, ParameterStatus..., BackendKeyData, ReadyForQuery
//	case errors.As(err, &pgErr):
//		// send pgErr as an ErrorResponse, log err, close
//	default:
//		// client gone or write failed: close
//	}
package auth
