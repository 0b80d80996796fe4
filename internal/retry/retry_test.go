package retry_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"

	"github.com/pgsidecar/pgsidecar/internal/retry"
)

func pgErr(code string) error {
	return &pgconn.PgError{Severity: "FATAL", Code: code, Message: "test"}
}

// timeoutErr is a net.Error that timed out, as the runtime's poller returns.
type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func sysErr(op string, errno syscall.Errno) error {
	return &net.OpError{Op: op, Net: "tcp", Err: os.NewSyscallError(op, errno)}
}

func TestClassifyTable(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want retry.Class
	}{
		{"nil", nil, retry.Class{}},
		{"08006 connection_failure", pgErr("08006"), retry.Class{Retryable: true, Reason: "connection"}},
		{"08001 unable to connect", pgErr("08001"), retry.Class{Retryable: true, Reason: "connection"}},
		{"08P01 protocol violation", pgErr("08P01"), retry.Class{Retryable: true, Reason: "connection"}},
		{"53300 too_many_connections", pgErr("53300"), retry.Class{Retryable: true, Reason: "too_many_connections"}},
		{"53200 out_of_memory", pgErr("53200"), retry.Class{Reason: "other"}},
		{"57P01 admin_shutdown", pgErr("57P01"), retry.Class{Retryable: true, Reason: "shutdown"}},
		{"57P02 crash_shutdown", pgErr("57P02"), retry.Class{Retryable: true, Reason: "shutdown"}},
		{"57P03 cannot_connect_now", pgErr("57P03"), retry.Class{Retryable: true, Reason: "starting"}},
		{"57014 query_canceled", pgErr("57014"), retry.Class{Reason: "other"}},
		{"40001 serialization_failure", pgErr("40001"), retry.Class{Reason: "serialization"}},
		{"40P01 deadlock_detected", pgErr("40P01"), retry.Class{Reason: "deadlock"}},
		{"28P01 invalid_password", pgErr("28P01"), retry.Class{Reason: "auth"}},
		{"28000 invalid_authorization", pgErr("28000"), retry.Class{Reason: "auth"}},
		{"42601 syntax_error", pgErr("42601"), retry.Class{Reason: "syntax_or_permission"}},
		{"42501 insufficient_privilege", pgErr("42501"), retry.Class{Reason: "syntax_or_permission"}},
		{"23505 unique_violation", pgErr("23505"), retry.Class{Reason: "constraint"}},
		{"3D000 invalid_catalog_name", pgErr("3D000"), retry.Class{Reason: "no_database"}},
		{"22012 division_by_zero", pgErr("22012"), retry.Class{Reason: "other"}},
		{"wrapped 57P03", fmt.Errorf("connect to upstream: %w", fmt.Errorf("server error: %w", pgErr("57P03"))),
			retry.Class{Retryable: true, Reason: "starting"}},
		{"joined 28P01", errors.Join(errors.New("first host"), fmt.Errorf("server error: %w", pgErr("28P01"))),
			retry.Class{Reason: "auth"}},
		{"server error wins over EOF", errors.Join(io.EOF, pgErr("3D000")), retry.Class{Reason: "no_database"}},
		{"ECONNREFUSED", sysErr("dial", syscall.ECONNREFUSED), retry.Class{Retryable: true, Reason: "network"}},
		{"ECONNRESET", sysErr("read", syscall.ECONNRESET), retry.Class{Retryable: true, Reason: "network"}},
		{"EPIPE", sysErr("write", syscall.EPIPE), retry.Class{Retryable: true, Reason: "network"}},
		{"EHOSTUNREACH", sysErr("dial", syscall.EHOSTUNREACH), retry.Class{Retryable: true, Reason: "network"}},
		{"io.EOF", fmt.Errorf("receive message: %w", io.EOF), retry.Class{Retryable: true, Reason: "network"}},
		{"io.ErrUnexpectedEOF", fmt.Errorf("read body: %w", io.ErrUnexpectedEOF), retry.Class{Retryable: true, Reason: "network"}},
		{"dial timeout", &net.OpError{Op: "dial", Net: "tcp", Err: timeoutErr{}}, retry.Class{Retryable: true, Reason: "network"}},
		{"read timeout", &net.OpError{Op: "read", Net: "tcp", Err: timeoutErr{}}, retry.Class{Reason: "timeout"}},
		{"bare deadline", fmt.Errorf("wait: %w", context.DeadlineExceeded), retry.Class{Reason: "timeout"}},
		{"canceled", fmt.Errorf("wait: %w", context.Canceled), retry.Class{Reason: "canceled"}},
		{"temporary DNS", &net.DNSError{Err: "server misbehaving", Name: "db", IsTemporary: true}, retry.Class{Retryable: true, Reason: "network"}},
		{"no such host", &net.DNSError{Err: "no such host", Name: "db", IsNotFound: true}, retry.Class{Reason: "other"}},
		{"plain error", errors.New("boom"), retry.Class{Reason: "other"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := retry.Classify(tt.err); got != tt.want {
				t.Errorf("Classify(%v) = %+v, want %+v", tt.err, got, tt.want)
			}
		})
	}
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestClassifyRealErrors classifies errors as the standard library and pgconn really return
// them, wrapping included.
func TestClassifyRealErrors(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	network := retry.Class{Retryable: true, Reason: "network"}

	t.Run("refused dial", func(t *testing.T) {
		_, err := net.Dial("tcp", closedPort(t))
		if err == nil {
			t.Fatal("dial to a closed port succeeded")
		}
		if got := retry.Classify(err); got != network {
			t.Errorf("Classify(%v) = %+v, want %+v", err, got, network)
		}
	})

	t.Run("refused pgconn connect", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := pgconn.Connect(ctx, "postgres://u@"+closedPort(t)+"/db?sslmode=disable")
		if err == nil {
			t.Fatal("connect to a closed port succeeded")
		}
		if _, ok := errors.AsType[*pgconn.ConnectError](err); !ok {
			t.Fatalf("connect error %T is not a *pgconn.ConnectError", err)
		}
		if got := retry.Classify(fmt.Errorf("connect to upstream: %w", err)); got != network {
			t.Errorf("Classify(%v) = %+v, want %+v", err, got, network)
		}
	})

	// A server that accepts and never answers: the connect times out during startup.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	defer func() {
		silent.Close()
		for c := range accepted {
			c.Close()
		}
	}()
	dsn := "postgres://u@" + silent.Addr().String() + "/db?sslmode=disable"

	t.Run("connect timeout", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := pgconn.Connect(ctx, dsn)
		if err == nil {
			t.Fatal("connect to a silent server succeeded")
		}
		if got := retry.Classify(err); got != network {
			t.Errorf("Classify(%v) = %+v, want %+v", err, got, network)
		}
	})

	t.Run("connect canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(50*time.Millisecond, cancel)
		_, err := pgconn.Connect(ctx, dsn)
		if err == nil {
			t.Fatal("connect to a silent server succeeded")
		}
		want := retry.Class{Reason: "canceled"}
		if got := retry.Classify(err); got != want {
			t.Errorf("Classify(%v) = %+v, want %+v", err, got, want)
		}
	})
}

func TestBackoffBounds(t *testing.T) {
	b := retry.Backoff{Initial: 10 * time.Millisecond, Max: 300 * time.Millisecond}
	ceilings := []time.Duration{10, 20, 40, 80, 160, 300, 300, 300}
	for attempt, c := range ceilings {
		ceiling := c * time.Millisecond
		// The largest draw is just under the ceiling.
		if got := b.Delay(attempt, func(n int64) int64 { return n - 1 }); got != ceiling-1 {
			t.Errorf("attempt %d: largest delay %v, want %v", attempt, got, ceiling-1)
		}
		if got := b.Delay(attempt, func(int64) int64 { return 0 }); got != 0 {
			t.Errorf("attempt %d: smallest delay %v, want 0", attempt, got)
		}
		// Real draws stay in [0, ceiling) and are spread out (full jitter).
		var lo, hi time.Duration = math.MaxInt64, 0
		for range 2000 {
			d := b.Delay(attempt, nil)
			if d < 0 || d >= ceiling {
				t.Fatalf("attempt %d: delay %v outside [0, %v)", attempt, d, ceiling)
			}
			lo, hi = min(lo, d), max(hi, d)
		}
		if lo > ceiling/10 || hi < ceiling*9/10 {
			t.Errorf("attempt %d: 2000 draws span [%v, %v], want most of [0, %v)", attempt, lo, hi, ceiling)
		}
	}
	// Huge attempt numbers neither overflow nor exceed Max.
	for _, attempt := range []int{62, 63, 64, 1000, math.MaxInt} {
		if got := b.Delay(attempt, func(n int64) int64 { return n - 1 }); got != b.Max-1 {
			t.Errorf("attempt %d: largest delay %v, want %v", attempt, got, b.Max-1)
		}
	}
	huge := retry.Backoff{Initial: time.Second, Max: math.MaxInt64}
	if got := huge.Delay(100, func(n int64) int64 { return n - 1 }); got <= 0 {
		t.Errorf("Max = MaxInt64, attempt 100: delay %v, want positive", got)
	}
}

func TestBackoffDefaults(t *testing.T) {
	largest := func(n int64) int64 { return n - 1 }
	var zero retry.Backoff
	if got := zero.Delay(0, largest); got != retry.DefaultInitial-1 {
		t.Errorf("zero Backoff, attempt 0: %v, want just under %v", got, retry.DefaultInitial)
	}
	if got := zero.Delay(50, largest); got != retry.DefaultMax-1 {
		t.Errorf("zero Backoff, attempt 50: %v, want just under %v", got, retry.DefaultMax)
	}
	big := retry.Backoff{Initial: 5 * time.Second}
	if got := big.Delay(3, largest); got != 5*time.Second-1 {
		t.Errorf("Initial 5s, Max 0: %v, want just under 5s (Max defaults to at least Initial)", got)
	}
	if zero.Exhausted(1000) {
		t.Error("zero Backoff is exhausted after 1000 attempts, want unlimited")
	}
	three := retry.Backoff{MaxAttempts: 3}
	for attempts, want := range []bool{false, false, false, true, true} {
		if got := three.Exhausted(attempts); got != want {
			t.Errorf("MaxAttempts 3: Exhausted(%d) = %v, want %v", attempts, got, want)
		}
	}
}
