package health

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

// testDSN is a DSN whose password must never show up anywhere.
const (
	testPassword = "s3cretpw"
	testDSN      = "postgres://app:" + testPassword + "@db.internal:5432/app?sslmode=disable"
)

// syncBuffer is a bytes.Buffer safe for a logger used from several
// goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// scripted returns a check function that returns the results of script in
// order: '+' succeeds, '-' fails with an error quoting the password.
func scripted(t *testing.T, script string) func(context.Context) error {
	t.Helper()
	i := 0
	return func(context.Context) error {
		if i >= len(script) {
			t.Fatalf("check %d called, script has %d steps", i+1, len(script))
		}
		c := script[i]
		i++
		if c == '-' {
			return fmt.Errorf("connect: password %s rejected by db.internal", testPassword)
		}
		return nil
	}
}

func TestProberStateMachine(t *testing.T) {
	defer goleak.VerifyNone(t)
	tests := []struct {
		name         string
		failures     int    // FailureThreshold (0: default 3)
		successes    int    // SuccessThreshold (0: default 2)
		script       string // check results: '+' ok, '-' error
		want         string // Healthy after each check: 'H' or 'U'
		toHealthy    float64
		toUnhealthy  float64
		consecFail   int
		consecSucc   int
		wantLastErr  bool
		healthyGauge float64 // pgsidecar_upstream_healthy at the end
	}{
		{
			name: "first success is healthy at once", script: "+", want: "H",
			toHealthy: 1, consecSucc: 1, healthyGauge: 1,
		},
		{
			name: "first failure is unhealthy at once", script: "-", want: "U",
			toUnhealthy: 1, consecFail: 1, wantLastErr: true,
		},
		{
			name: "failures below the threshold keep it healthy", script: "+--+--+", want: "HHHHHHH",
			toHealthy: 1, consecSucc: 1, healthyGauge: 1,
		},
		{
			name: "default failure threshold is 3", script: "+---", want: "HHHU",
			toHealthy: 1, toUnhealthy: 1, consecFail: 3, wantLastErr: true,
		},
		{
			name: "more failures do not count twice", script: "+-----", want: "HHHUUU",
			toHealthy: 1, toUnhealthy: 1, consecFail: 5, wantLastErr: true,
		},
		{
			name: "default success threshold is 2", script: "+---+-++", want: "HHHUUUUH",
			toHealthy: 2, toUnhealthy: 1, consecSucc: 2, healthyGauge: 1,
		},
		{
			name: "recovery from a failed first check needs the success threshold", script: "-++", want: "UUH",
			toHealthy: 1, toUnhealthy: 1, consecSucc: 2, healthyGauge: 1,
		},
		{
			name: "thresholds of 1 flip at every change", failures: 1, successes: 1, script: "+-+-", want: "HUHU",
			toHealthy: 2, toUnhealthy: 2, consecFail: 1, wantLastErr: true,
		},
		{
			name: "custom thresholds", failures: 2, successes: 3, script: "+--+++", want: "HHUUUH",
			toHealthy: 2, toUnhealthy: 1, consecSucc: 3, healthyGauge: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if len(tt.script) != len(tt.want) {
				t.Fatalf("bad test: script %q and want %q differ in length", tt.script, tt.want)
			}
			reg := prometheus.NewRegistry()
			var logs syncBuffer
			p := NewProber(ProberOptions{
				Name:             "primary",
				ConnString:       testDSN,
				FailureThreshold: tt.failures,
				SuccessThreshold: tt.successes,
				Logger:           slog.New(slog.NewTextHandler(&logs, nil)),
			}, NewProberMetrics(reg))
			p.check = scripted(t, tt.script)

			if p.Healthy() || p.Checked() {
				t.Fatal("a new prober is healthy or checked")
			}
			var got strings.Builder
			for range tt.script {
				p.probe(t.Context())
				if p.Healthy() {
					got.WriteByte('H')
				} else {
					got.WriteByte('U')
				}
			}
			if got.String() != tt.want {
				t.Errorf("states = %s, want %s (script %s)", got.String(), tt.want, tt.script)
			}

			st := p.Status()
			if !st.Checked || st.Name != "primary" {
				t.Errorf("status = %+v", st)
			}
			if st.ConsecutiveFailures != tt.consecFail || st.ConsecutiveSuccesses != tt.consecSucc {
				t.Errorf("consecutive failures/successes = %d/%d, want %d/%d",
					st.ConsecutiveFailures, st.ConsecutiveSuccesses, tt.consecFail, tt.consecSucc)
			}
			if (st.LastError != "") != tt.wantLastErr {
				t.Errorf("LastError = %q", st.LastError)
			}
			if st.LastCheck.IsZero() {
				t.Error("LastCheck not set")
			}

			// Metrics.
			m := p.m
			if v := testutil.ToFloat64(m.healthy); v != tt.healthyGauge {
				t.Errorf("healthy gauge = %v, want %v", v, tt.healthyGauge)
			}
			oks := float64(strings.Count(tt.script, "+"))
			errs := float64(strings.Count(tt.script, "-"))
			if v := testutil.ToFloat64(m.ok); v != oks {
				t.Errorf("checks_total{result=ok} = %v, want %v", v, oks)
			}
			if v := testutil.ToFloat64(m.failed); v != errs {
				t.Errorf("checks_total{result=error} = %v, want %v", v, errs)
			}
			if v := testutil.ToFloat64(m.toHealthy); v != tt.toHealthy {
				t.Errorf("state_changes_total{state=healthy} = %v, want %v", v, tt.toHealthy)
			}
			if v := testutil.ToFloat64(m.toUnhealthy); v != tt.toUnhealthy {
				t.Errorf("state_changes_total{state=unhealthy} = %v, want %v", v, tt.toUnhealthy)
			}
			if n := testutil.CollectAndCount(reg, "pgsidecar_upstream_check_duration_seconds"); n != 1 {
				t.Errorf("check_duration_seconds series = %d, want 1", n)
			}
			problems, err := testutil.GatherAndLint(reg)
			if err != nil {
				t.Fatal(err)
			}
			for _, pr := range problems {
				t.Errorf("metric lint: %s: %s", pr.Metric, pr.Text)
			}

			// Each transition is logged once, at the right level, redacted.
			out := logs.String()
			if n := strings.Count(out, `level=INFO msg="upstream healthy"`); float64(n) != tt.toHealthy {
				t.Errorf("%d healthy logs, want %v:\n%s", n, tt.toHealthy, out)
			}
			if n := strings.Count(out, `level=WARN msg="upstream unhealthy"`); float64(n) != tt.toUnhealthy {
				t.Errorf("%d unhealthy logs, want %v:\n%s", n, tt.toUnhealthy, out)
			}
			if strings.Contains(out, testPassword) {
				t.Errorf("log leaks the password:\n%s", out)
			}
			if tt.toHealthy+tt.toUnhealthy > 0 && !strings.Contains(out, "dsn=") {
				t.Errorf("log lacks the redacted dsn:\n%s", out)
			}
		})
	}
}

func TestProberMetricsExposition(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewProberMetrics(reg)
	p := NewProber(ProberOptions{Name: "primary", ConnString: testDSN}, m)
	q := NewProber(ProberOptions{Name: "replica", ConnString: testDSN}, m)
	p.check = scripted(t, "+")
	q.check = scripted(t, "-")
	p.probe(t.Context())
	q.probe(t.Context())

	want := `
# HELP pgsidecar_upstream_checks_total Upstream health checks completed, by result (ok or error).
# TYPE pgsidecar_upstream_checks_total counter
pgsidecar_upstream_checks_total{result="error",upstream="primary"} 0
pgsidecar_upstream_checks_total{result="error",upstream="replica"} 1
pgsidecar_upstream_checks_total{result="ok",upstream="primary"} 1
pgsidecar_upstream_checks_total{result="ok",upstream="replica"} 0
# HELP pgsidecar_upstream_healthy Whether the upstream passes its health checks (1) or not, or has not been checked yet (0).
# TYPE pgsidecar_upstream_healthy gauge
pgsidecar_upstream_healthy{upstream="primary"} 1
pgsidecar_upstream_healthy{upstream="replica"} 0
# HELP pgsidecar_upstream_state_changes_total Upstream health state changes, by the state entered (healthy or unhealthy).
# TYPE pgsidecar_upstream_state_changes_total counter
pgsidecar_upstream_state_changes_total{state="healthy",upstream="primary"} 1
pgsidecar_upstream_state_changes_total{state="healthy",upstream="replica"} 0
pgsidecar_upstream_state_changes_total{state="unhealthy",upstream="primary"} 0
pgsidecar_upstream_state_changes_total{state="unhealthy",upstream="replica"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"pgsidecar_upstream_checks_total", "pgsidecar_upstream_healthy", "pgsidecar_upstream_state_changes_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(reg, "pgsidecar_upstream_check_duration_seconds"); n != 2 {
		t.Errorf("check_duration_seconds series = %d, want 2", n)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, pr := range problems {
		t.Errorf("metric lint: %s: %s", pr.Metric, pr.Text)
	}
}

func TestProberNilMetrics(t *testing.T) {
	p := NewProber(ProberOptions{Name: "x", ConnString: testDSN}, nil)
	p.check = scripted(t, "+")
	p.probe(t.Context())
	if !p.Healthy() {
		t.Error("not healthy")
	}
}

func TestProberDefaults(t *testing.T) {
	p := NewProber(ProberOptions{ConnString: testDSN}, nil)
	o := p.opts
	if o.Query != "SELECT 1" || o.Interval != 5*time.Second || o.Timeout != 2*time.Second ||
		o.FailureThreshold != 3 || o.SuccessThreshold != 2 {
		t.Errorf("defaults = %+v", o)
	}
}

func TestProberTimeout(t *testing.T) {
	defer goleak.VerifyNone(t)
	p := NewProber(ProberOptions{Name: "slow", ConnString: testDSN, Timeout: 10 * time.Millisecond}, nil)
	p.check = func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	}
	p.probe(t.Context())
	st := p.Status()
	if !st.Checked || st.Healthy || !strings.Contains(st.LastError, "deadline exceeded") {
		t.Errorf("status after a timed-out check = %+v", st)
	}
	if st.LastLatency < 5*time.Millisecond {
		t.Errorf("LastLatency = %v, want about the timeout", st.LastLatency)
	}
}

func TestProberCancelledCheckIsNotRecorded(t *testing.T) {
	defer goleak.VerifyNone(t)
	p := NewProber(ProberOptions{Name: "x", ConnString: testDSN}, nil)
	ctx, cancel := context.WithCancel(t.Context())
	p.check = func(ctx context.Context) error {
		cancel() // shutdown while the check is in flight
		<-ctx.Done()
		return ctx.Err()
	}
	p.probe(ctx)
	if st := p.Status(); st.Checked || st.ConsecutiveFailures != 0 {
		t.Errorf("a check cut short by shutdown was recorded: %+v", st)
	}
	p.probe(ctx) // ctx already done: no check at all
	if testutil.ToFloat64(p.m.failed) != 0 {
		t.Error("failure counted")
	}
}

func TestProberRedaction(t *testing.T) {
	p := NewProber(ProberOptions{Name: "primary", ConnString: testDSN}, nil)
	p.check = scripted(t, "-")
	p.probe(t.Context())
	st := p.Status()
	if !strings.Contains(st.LastError, "password xxxxx rejected") {
		t.Errorf("LastError = %q, want the password masked", st.LastError)
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	js := string(b)
	if strings.Contains(js, testPassword) {
		t.Errorf("status JSON leaks the password: %s", js)
	}
	for _, key := range []string{`"name":"primary"`, `"upstream":"postgres://app:xxxxx@db.internal:5432/app?sslmode=disable"`,
		`"checked":true`, `"healthy":false`, `"consecutive_failures":1`, `"last_latency_seconds":`, `"last_check":"`} {
		if !strings.Contains(js, key) {
			t.Errorf("status JSON lacks %s: %s", key, js)
		}
	}
	err = ReadyWhen(p)(t.Context())
	if err == nil || strings.Contains(err.Error(), testPassword) {
		t.Errorf("ReadyWhen = %v", err)
	}
}

func TestProbeStatusJSONBeforeFirstCheck(t *testing.T) {
	p := NewProber(ProberOptions{Name: "primary", ConnString: testDSN}, nil)
	b, err := json.Marshal(p.Status())
	if err != nil {
		t.Fatal(err)
	}
	js := string(b)
	for _, absent := range []string{"last_latency_seconds", "last_check", "last_error"} {
		if strings.Contains(js, absent) {
			t.Errorf("unchecked status JSON has %s: %s", absent, js)
		}
	}
}

func TestProberInvalidDSN(t *testing.T) {
	const pw = "hunter2pw"
	p := NewProber(ProberOptions{Name: "bad", ConnString: "postgres://u:" + pw + "@db:notaport/x"}, nil)
	p.probe(t.Context()) // the real check: fails without touching the network
	st := p.Status()
	if st.Healthy || !strings.Contains(st.LastError, "invalid connection string") || strings.Contains(st.LastError, pw) {
		t.Errorf("status = %+v", st)
	}
}

func TestProberRun(t *testing.T) {
	defer goleak.VerifyNone(t)
	p := NewProber(ProberOptions{Name: "x", ConnString: testDSN, Interval: time.Millisecond}, nil)
	calls := make(chan struct{})
	p.check = func(ctx context.Context) error {
		select {
		case calls <- struct{}{}:
		case <-ctx.Done():
		}
		return nil
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Run(ctx)
	}()
	for range 3 { // the first check runs at once, the others every Interval
		select {
		case <-calls:
		case <-time.After(10 * time.Second):
			t.Fatal("no check")
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if !p.Healthy() {
		t.Error("not healthy after successful checks")
	}
}

func TestReadyWhen(t *testing.T) {
	newProber := func(name, script string) *Prober {
		p := NewProber(ProberOptions{Name: name, ConnString: testDSN, FailureThreshold: 1}, nil)
		p.check = scripted(t, script)
		for range script {
			p.probe(t.Context())
		}
		return p
	}
	tests := []struct {
		name    string
		probers []*Prober
		want    []string // substrings of the error; nil means ready
		notWant []string
	}{
		{name: "no probers", want: []string{"no upstream"}},
		{name: "not checked yet", probers: []*Prober{newProber("a", "")},
			want: []string{"upstream a (postgres://app:xxxxx@db.internal:5432/app?sslmode=disable) not checked yet"}},
		{name: "healthy", probers: []*Prober{newProber("a", "+")}},
		{name: "all healthy", probers: []*Prober{newProber("a", "+"), newProber("b", "+-++")}},
		{name: "one unhealthy", probers: []*Prober{newProber("a", "+"), newProber("b", "+-")},
			want: []string{"upstream b (", ") unhealthy: connect: password xxxxx rejected"}, notWant: []string{"upstream a"}},
		{name: "both unhealthy", probers: []*Prober{newProber("a", "-"), newProber("b", "+-")},
			want: []string{"upstream a (", "; upstream b ("}},
		{name: "recovering", probers: []*Prober{newProber("a", "-+")},
			want: []string{"upstream a (", "unhealthy: recovering, 1/2 checks ok"}},
		{name: "first check failed", probers: []*Prober{newProber("a", "-")},
			want: []string{"upstream a (", "unhealthy: connect:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ReadyWhen(tt.probers...)(t.Context())
			if tt.want == nil {
				if err != nil {
					t.Errorf("ReadyWhen = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatal("ReadyWhen = nil, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("ReadyWhen = %q, want it to contain %q", err, w)
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(err.Error(), w) {
					t.Errorf("ReadyWhen = %q, want it not to contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), testPassword) {
				t.Errorf("ReadyWhen leaks the password: %q", err)
			}
		})
	}
}

// TestReadyWhenServesReadyz checks the wiring cmd uses: /readyz follows
// the prober.
func TestReadyWhenServesReadyz(t *testing.T) {
	defer goleak.VerifyNone(t)
	p := NewProber(ProberOptions{Name: "default", ConnString: testDSN, FailureThreshold: 1}, nil)
	p.check = scripted(t, "+-")
	s := NewServer(Options{Ready: ReadyWhen(p)})
	s.SetStarted()
	h := s.handler()
	if code, body, _ := do(t, h, "GET", "/readyz"); code != 503 || !strings.Contains(body, "not checked yet") {
		t.Errorf("before the first check: /readyz = %d %q", code, body)
	}
	p.probe(t.Context())
	if code, body, _ := do(t, h, "GET", "/readyz"); code != 200 {
		t.Errorf("healthy: /readyz = %d %q", code, body)
	}
	p.probe(t.Context())
	if code, body, _ := do(t, h, "GET", "/readyz"); code != 503 || !strings.Contains(body, "upstream default (") {
		t.Errorf("unhealthy: /readyz = %d %q", code, body)
	}
}

// TestProberPostgres runs the real check against a throwaway cluster that
// is stopped and started again.
func TestProberPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	c := pgtest.Must(t, pgtest.Options{})

	reg := prometheus.NewRegistry()
	var logs syncBuffer
	p := NewProber(ProberOptions{
		Name:             "default",
		ConnString:       c.DSN("postgres"),
		Interval:         50 * time.Millisecond,
		Timeout:          2 * time.Second,
		FailureThreshold: 3,
		SuccessThreshold: 2,
		Logger:           slog.New(slog.NewTextHandler(&logs, nil)),
	}, NewProberMetrics(reg))
	ready := ReadyWhen(p)
	if err := ready(t.Context()); err == nil {
		t.Fatal("ready before the first check")
	}

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Run(ctx)
	}()
	stopRun := func() {
		cancel()
		<-done
	}
	defer stopRun()

	waitFor(t, p, "healthy after the first check", func(st ProbeStatus) bool { return st.Checked })
	if st := p.Status(); !st.Healthy || st.ConsecutiveSuccesses < 1 || st.LastError != "" {
		t.Fatalf("first check against a running server: %+v", st)
	}
	if err := ready(t.Context()); err != nil {
		t.Fatalf("ready: %v", err)
	}

	sctx, scancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer scancel()
	if err := c.Stop(sctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, p, "unhealthy after the server stopped", func(st ProbeStatus) bool { return !st.Healthy })
	if st := p.Status(); st.ConsecutiveFailures < 3 || st.LastError == "" {
		t.Errorf("unhealthy before the failure threshold: %+v", st)
	}
	if err := ready(t.Context()); err == nil || !strings.Contains(err.Error(), "upstream default (") {
		t.Errorf("ready while stopped = %v", err)
	}
	if v := testutil.ToFloat64(p.m.toUnhealthy); v != 1 {
		t.Errorf("state_changes_total{state=unhealthy} = %v, want 1", v)
	}

	if err := c.StartAgain(sctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, p, "healthy after the server started again", func(st ProbeStatus) bool { return st.Healthy })
	if st := p.Status(); st.ConsecutiveSuccesses < 2 {
		t.Errorf("healthy before the success threshold: %+v", st)
	}
	if v := testutil.ToFloat64(p.m.toHealthy); v != 2 {
		t.Errorf("state_changes_total{state=healthy} = %v, want 2", v)
	}
	if v := testutil.ToFloat64(p.m.healthy); v != 1 {
		t.Errorf("healthy gauge = %v, want 1", v)
	}

	stopRun()
	goleak.VerifyNone(t)

	out := logs.String()
	if strings.Count(out, "upstream unhealthy") != 1 || strings.Count(out, "upstream healthy") != 2 {
		t.Errorf("transition logs:\n%s", out)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, pr := range problems {
		t.Errorf("metric lint: %s: %s", pr.Metric, pr.Text)
	}
}

// waitFor polls p's status until cond holds, for at most 30 seconds.
func waitFor(t *testing.T, p *Prober, what string, cond func(ProbeStatus) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond(p.Status()) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s: %+v", what, p.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
