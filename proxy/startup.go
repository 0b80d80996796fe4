package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

// Startup packet codes (protocol version numbers and special requests), as in PostgreSQL's
// pqcomm.h.
const (
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
	codeCancelRequest = 80877102
	protoMajor3       = 3
)

// maxStartupPacketLen is PostgreSQL's MAX_STARTUP_PACKET_LENGTH: anything longer is hostile.
const maxStartupPacketLen = 10000

// startup is a parsed startup-phase packet.
type startup struct {
	// code is the protocol version (major<<16 | minor) or one of the special request codes.
	code uint32
	// params holds the StartupMessage parameters (user, database, options, ...), in order.
	params []param
	// unknownOptions lists "_pq_." protocol options, which this server does not support.
	unknownOptions []string
	// cancelPID and cancelKey are set for a CancelRequest.
	cancelPID uint32
	cancelKey []byte
}

type param struct{ name, value string }

func (s *startup) get(name string) string {
	for _, p := range s.params {
		if p.name == name {
			return p.value
		}
	}
	return ""
}

// readStartup reads exactly one startup-phase packet (no read-ahead: after it the connection may
// switch to TLS or to the relay).
//
// The first read asks for 8 bytes, the least a valid packet has, so that an SSLRequest (which
// most clients send first) takes one system call, without reading past a valid packet.
func readStartup(r io.Reader) (*startup, error) {
	var hdr [8]byte
	got := 0
	for got < 4 {
		n, err := r.Read(hdr[got:])
		got += n
		if err != nil && got < 4 {
			if errors.Is(err, io.EOF) && got > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("read startup packet length: %w", err)
		}
	}
	n := int(binary.BigEndian.Uint32(hdr[:]))
	if n < 8 || n > maxStartupPacketLen {
		return nil, wire.Errorf("invalid startup packet length %d", n)
	}
	body := make([]byte, n-4)
	copy(body, hdr[4:got])
	if _, err := io.ReadFull(r, body[got-4:]); err != nil {
		return nil, fmt.Errorf("read startup packet: %w", err)
	}
	return parseStartup(body)
}

// parseStartup decodes a startup packet body (everything after the length word).
func parseStartup(body []byte) (*startup, error) {
	if len(body) < 4 {
		return nil, wire.Errorf("startup packet too short")
	}
	s := &startup{code: binary.BigEndian.Uint32(body)}
	rest := body[4:]
	switch s.code {
	case codeSSLRequest, codeGSSENCRequest:
		if len(rest) != 0 {
			return nil, wire.Errorf("invalid length of encryption request")
		}
		return s, nil
	case codeCancelRequest:
		// 4 bytes of PID, then a key of 4 bytes (protocol 3.0) up to 256 bytes (3.2).
		if len(rest) < 8 || len(rest) > 4+256 {
			return nil, wire.Errorf("invalid length of cancel request")
		}
		s.cancelPID = binary.BigEndian.Uint32(rest)
		s.cancelKey = bytes.Clone(rest[4:])
		return s, nil
	}
	if s.code>>16 != protoMajor3 {
		return nil, &unsupportedProtocolError{code: s.code}
	}
	for {
		if len(rest) == 0 {
			return nil, wire.Errorf("startup packet is not terminated")
		}
		if rest[0] == 0 {
			if len(rest) != 1 {
				return nil, wire.Errorf("trailing bytes after startup packet parameters")
			}
			break
		}
		name, after, ok := cutCString(rest)
		if !ok {
			return nil, wire.Errorf("unterminated startup parameter name")
		}
		value, after2, ok := cutCString(after)
		if !ok {
			return nil, wire.Errorf("missing value for startup parameter %q", name)
		}
		rest = after2
		if strings.HasPrefix(name, "_pq_.") {
			s.unknownOptions = append(s.unknownOptions, name)
			continue
		}
		s.params = append(s.params, param{name: name, value: value})
	}
	if s.get("user") == "" {
		return nil, &startupError{code: retry.CodeInvalidAuthorization, msg: "no PostgreSQL user name specified in startup packet"}
	}
	return s, nil
}

func cutCString(b []byte) (string, []byte, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", nil, false
	}
	return string(b[:i]), b[i+1:], true
}

// unsupportedProtocolError is a startup asking for a protocol major version other than 3.
type unsupportedProtocolError struct{ code uint32 }

func (e *unsupportedProtocolError) Error() string {
	return fmt.Sprintf("unsupported frontend protocol %d.%d: server supports 3.0 to 3.0", e.code>>16, e.code&0xffff)
}

// startupError is a well-formed startup the server refuses, with the SQLSTATE to send.
type startupError struct{ code, msg string }

func (e *startupError) Error() string { return e.msg }
