package txmode

import (
	"encoding/binary"
	"fmt"
	"strconv"

	"github.com/pgsidecar/pgsidecar/proxy/classify"
	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

// Drivers cancel a query by SQL, SELECT pg_cancel_backend(pid), with the PID from the
// BackendKeyData the proxy minted, which no server knows. The tracker answers such a call
// itself, as PostgreSQL would (one boolean column), when the PID is one the proxy minted, and
// asks the caller to carry it out (Events.Signals); any other PID goes to the server unchanged.

// SignalTarget decides whether a minted PID belongs to a client this client may signal
// (PostgreSQL lets a role signal its own backends); it must not block. An interface, not a
// func, so that a session is one itself: a method value would cost every client an
// allocation.
type SignalTarget interface{ MaySignal(pid int64) bool }

// SignalTargetFunc is a function that is a SignalTarget.
type SignalTargetFunc func(pid int64) bool

// MaySignal calls f.
func (f SignalTargetFunc) MaySignal(pid int64) bool { return f(pid) }

// Signal is a pg_cancel_backend or pg_terminate_backend the caller is to carry out.
type Signal struct {
	Terminate bool
	PID       int64
}

// signalCall is a call being answered by the tracker through the extended protocol: the portal
// it was bound to, and what each of its messages is answered with.
type signalCall struct {
	portal  string
	fn      string
	pid     int64
	result  bool
	formats []int16 // the Bind's result formats
}

// SetSignalTarget sets how the tracker finds out whether a minted PID may be signalled; until
// it is called, no SQL signal is answered by the tracker.
func (t *Tracker) SetSignalTarget(target SignalTarget, minted func(pid int64) bool) {
	t.signalTarget, t.minted = target, minted
}

// signal decides a call of sig for pid: whether it succeeds, noting the signal to carry out.
func (t *Tracker) signal(fn string, pid int64) bool {
	if !t.signalTarget.MaySignal(pid) {
		return false
	}
	t.signals = append(t.signals, Signal{Terminate: fn == "pg_terminate_backend", PID: pid})
	return true
}

// answersSignal reports whether the tracker answers a call of sig itself.
func (t *Tracker) answersSignal(sig classify.Signal, pid int64) bool {
	return sig.Func != "" && t.signalTarget != nil && t.minted(pid) && t.TxStatus != 'E'
}

// signalReply appends the reply to a call of fn: its RowDescription when describe, then
// (unless only describing) a WARNING when it failed, the row and its CommandComplete. format
// is the result's format code (0 text, 1 binary).
func signalReply(b []byte, fn string, result, describe, execute bool, format int16) []byte {
	if describe {
		n := 4 + 2 + len(fn) + 1 + 4 + 2 + 4 + 2 + 4 + 2
		b = append(b, 'T', byte(n>>24), byte(n>>16), byte(n>>8), byte(n), 0, 1)
		b = append(b, fn...)
		b = append(b, 0, 0, 0, 0, 0, 0, 0)    // table OID, column number
		b = append(b, 0, 0, 0, 16, 0, 1)      // type OID 16 (bool), size 1
		b = append(b, 0xff, 0xff, 0xff, 0xff) // type modifier -1
		b = append(b, byte(format>>8), byte(format))
	}
	if !execute {
		return b
	}
	v := byte('f')
	if result {
		v = 't'
	}
	if format == 1 {
		v = 0
		if result {
			v = 1
		}
	}
	b = append(b, 'D', 0, 0, 0, 11, 0, 1, 0, 0, 0, 1, v)
	return wire.AppendCommandComplete(b, "SELECT 1")
}

// signalWarning is PostgreSQL's warning for a PID that is not a backend it may signal.
func signalWarning(b []byte, pid int64) []byte {
	msg := fmt.Sprintf("PID %d is not a PostgreSQL backend process", pid)
	n := 4 + 1 + len("WARNING") + 1 + 1 + len("WARNING") + 1 + 1 + 5 + 1 + 1 + len(msg) + 1 + 1
	b = append(b, 'N', byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	b = append(b, 'S')
	b = append(b, "WARNING"...)
	b = append(b, 0, 'V')
	b = append(b, "WARNING"...)
	b = append(b, 0, 'C')
	b = append(b, "01000"...)
	b = append(b, 0, 'M')
	b = append(b, msg...)
	return append(b, 0, 0)
}

// bindArgs reads from a whole Bind body the value of parameter n (1-based) as an integer, and
// the result format codes. ok is false when the Bind is malformed or the value is not an
// integer.
func bindArgs(body []byte, n int) (pid int64, formats []int16, ok bool) {
	_, rest, ok := wire.CString(body)
	if ok {
		_, rest, ok = wire.CString(rest)
	}
	if !ok || len(rest) < 2 {
		return 0, nil, false
	}
	nf := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) < 2*nf+2 {
		return 0, nil, false
	}
	paramFormats := rest[:2*nf]
	rest = rest[2*nf:]
	np := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if n > np {
		return 0, nil, false
	}
	var value []byte
	var valueFormat int16
	for i := 1; i <= np; i++ {
		if len(rest) < 4 {
			return 0, nil, false
		}
		l := int(int32(binary.BigEndian.Uint32(rest)))
		rest = rest[4:]
		if l < 0 {
			l = 0
			if i == n {
				return 0, nil, false // NULL
			}
		}
		if len(rest) < l {
			return 0, nil, false
		}
		if i == n {
			value = rest[:l]
			switch nf {
			case 0:
			case 1:
				valueFormat = int16(binary.BigEndian.Uint16(paramFormats))
			default:
				if i <= nf {
					valueFormat = int16(binary.BigEndian.Uint16(paramFormats[2*(i-1):]))
				}
			}
		}
		rest = rest[l:]
	}
	if len(rest) < 2 {
		return 0, nil, false
	}
	nr := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) < 2*nr {
		return 0, nil, false
	}
	for i := range nr {
		formats = append(formats, int16(binary.BigEndian.Uint16(rest[2*i:])))
	}
	switch {
	case valueFormat == 0:
		v, err := strconv.ParseInt(string(value), 10, 64)
		return v, formats, err == nil
	case len(value) == 4:
		return int64(int32(binary.BigEndian.Uint32(value))), formats, true
	case len(value) == 8:
		return int64(binary.BigEndian.Uint64(value)), formats, true
	}
	return 0, nil, false
}

// resultFormat is the format of the first result column for a Bind's result format codes.
func resultFormat(formats []int16) int16 {
	if len(formats) == 0 {
		return 0
	}
	return formats[0]
}
