// Package wire frames, scans and encodes the PostgreSQL v3 protocol messages the proxy relays.
// It does no I/O: the relay reads into a Frames buffer, walks its messages by their 5-byte
// headers, streams bodies it need not see, and collects what it forwards in a Batch, which
// passes input runs through untouched until something is rewritten.
//
//	f := wire.Frames{Buf: buf[:n]}
//	for {
//		if f.Advance(nil) {
//			continue
//		}
//		typ, length, ok, err := f.Next(maxMsg)
//		if err != nil || !ok {
//			break
//		}
//		f.R += wire.HeaderLen
//		f.Remaining = length - 4
//	}
package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// HeaderLen is the size of a message header: type byte and int32 length.
const HeaderLen = 5

// Frames tracks the framing of one direction of the relay: where the next message header
// starts, and how much of a message body that is streamed through is still to come.
type Frames struct {
	Buf       []byte
	R, W      int
	Remaining int  // body bytes of the current streamed message not yet seen
	Dropping  bool // the rest of the current message is skipped, not relayed
	// Need asks the reader to buffer this many bytes from r before scanning again (a message
	// the scanner must see whole).
	Need int
}

// Compact moves unconsumed bytes to the front of the buffer.
func (f *Frames) Compact() {
	if f.R == f.W {
		f.R, f.W = 0, 0
		return
	}
	if f.R > 0 {
		f.W = copy(f.Buf, f.Buf[f.R:f.W])
		f.R = 0
	}
}

// Header returns the type and length (excluding the type byte) of the message at f.R, or
// ok=false when fewer than HeaderLen bytes are buffered.
func (f *Frames) Header() (typ byte, length int, ok bool) {
	return HeaderOf(f.Buf[f.R:f.W])
}

// HeaderOf returns the type and length (excluding the type byte) of the message that starts
// b, or ok=false when b is shorter than a header. The length is not checked.
func HeaderOf(b []byte) (typ byte, length int, ok bool) {
	if len(b) < HeaderLen {
		return 0, 0, false
	}
	return b[0], int(binary.BigEndian.Uint32(b[1:])), true
}

// ErrBadLength is wrapped by the errors of Frames.Next.
var ErrBadLength = errors.New("invalid message length")

// Next returns the header of the message at f.r (ok=false when it is not all buffered),
// checking its length against maxMsg before anything is allocated for it.
func (f *Frames) Next(maxMsg int) (typ byte, length int, ok bool, err error) {
	typ, length, ok = f.Header()
	if ok && (length < 4 || length-4 > maxMsg) {
		return typ, length, false, fmt.Errorf("%w %d for message type %q", ErrBadLength, length, typ)
	}
	return typ, length, ok, nil
}

// Advance consumes the buffered part of a message being streamed through, reporting whether
// there was one. The bytes of a message being dropped are cut from w's output.
func (f *Frames) Advance(w *Batch) bool {
	if f.Remaining == 0 {
		return false
	}
	k := min(f.Remaining, f.W-f.R)
	if f.Dropping && w != nil {
		w.Cut(f.R + k)
	}
	f.R += k
	f.Remaining -= k
	if f.Remaining == 0 {
		f.Dropping = false
	}
	return true
}

// Batch collects what one scan sends on: runs of the input buffer passed through as they
// are, and messages the proxy rewrote or added. Until something is rewritten, the output is the
// input run itself and nothing is copied.
type Batch struct {
	F        *Frames
	Out      []byte
	Used     bool
	RunStart int
}

// Cut ends the pass-through run at the current message (f.r) and skips to skipTo.
func (w *Batch) Cut(skipTo int) {
	w.Out = append(w.Out, w.F.Buf[w.RunStart:w.F.R]...)
	w.Used = true
	w.RunStart = skipTo
}

func (w *Batch) Add(b []byte) {
	w.Out = append(w.Out, b...)
	w.Used = true
}

func (w *Batch) AddString(s string) {
	w.Out = append(w.Out, s...)
	w.Used = true
}

func (w *Batch) AddByte(b byte) {
	w.Out = append(w.Out, b)
	w.Used = true
}

// Bytes returns everything to send for the scanned part of the buffer.
func (w *Batch) Bytes() []byte {
	if !w.Used {
		return w.F.Buf[w.RunStart:w.F.R]
	}
	w.Out = append(w.Out, w.F.Buf[w.RunStart:w.F.R]...)
	return w.Out
}

// CString splits b at its first NUL: the string before it and the bytes after it.
func CString(b []byte) (s, rest []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}

// ProtocolError is a violation of the protocol by the peer that sent the bytes: for a client,
// SQLSTATE 08P01 and the end of its connection.
type ProtocolError struct{ Msg string }

func (e *ProtocolError) Error() string { return "protocol violation: " + e.Msg }

// Errorf returns a *ProtocolError with a formatted message.
func Errorf(format string, args ...any) error {
	return &ProtocolError{Msg: fmt.Sprintf(format, args...)}
}
