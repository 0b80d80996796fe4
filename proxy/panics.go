package proxy

import (
	"errors"
	"fmt"
	"runtime/debug"
)

// A panic in a session's goroutine (its client loop, its relay loop, a timer of its) ends that
// session alone: the panic is recovered where the goroutine starts, logged once with its stack
// and counted; the client gets FATAL XX000 when its stream allows; the server connection,
// whose state nobody knows then, is destroyed. Every other session goes on. The code a panic
// can unwind through releases the session's locks by defer, so that the cleanup that follows
// can take them.

// panicError is a recovered panic, as the error that ended a session.
type panicError struct {
	where string
	value any
}

func (e *panicError) Error() string { return fmt.Sprintf("internal error in %s: %v", e.where, e.value) }

// errPanic reports whether err is, or wraps, a recovered panic.
func errPanic(err error) bool {
	var pe *panicError
	return errors.As(err, &pe)
}

// recovered records a panic recovered in one of s's goroutines (where names it): it is logged
// with its stack and counted, and s's server connection will be destroyed, not reused.
func (s *session) recovered(where string, v any) *panicError {
	s.panicked.Store(true)
	s.srv.metrics.panicked()
	s.log.Error("panic in a client session; closing that session", "where", where, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
	return &panicError{where: where, value: v}
}

// protect runs fn, returning a panic in it as a *panicError.
func (s *session) protect(where string, fn func() error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = s.recovered(where, v)
		}
	}()
	return fn()
}

// recoverInTimer ends the session after a panic in one of its timer callbacks (deferred there):
// closing the client's connection makes the client loop stop and clean up.
func (s *session) recoverInTimer(where string) {
	if v := recover(); v != nil {
		s.sendError(clientError(s.recovered(where, v)))
		s.closeClient(s.conn)
	}
}

// testHooks are called at points of a session's goroutines, by tests that need a panic there.
// All nil outside tests.
type testHooks struct {
	clientBatch func(*session) // clientToServer, for each batch read from the client
	serverBatch func(*session) // serverToClient, for each batch read from a server
	queryTimer  func(*session) // the query_timeout timer
}
