package health

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// do sends a request to h and returns the status code and body.
func do(t *testing.T, h http.Handler, method, path string) (int, string, http.Header) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	return rec.Code, rec.Body.String(), rec.Header()
}

func TestProbesAcrossStates(t *testing.T) {
	defer goleak.VerifyNone(t)
	errUpstream := errors.New("upstream 10.0.0.1:5432 unreachable")

	type want struct {
		code int
		body string
	}
	tests := []struct {
		name     string
		started  bool
		draining bool
		ready    func(context.Context) error
		live     want
		startup  want
		readyz   want
		status   string
		readyErr string
	}{
		{
			name:    "fresh",
			live:    want{200, "ok"},
			startup: want{503, "not started"},
			readyz:  want{503, "not started"},
			status:  StatusStarting,
		},
		{
			name:     "starting with upstream down",
			ready:    func(context.Context) error { return errUpstream },
			live:     want{200, "ok"},
			startup:  want{503, "not started"},
			readyz:   want{503, "not started"},
			status:   StatusStarting,
			readyErr: errUpstream.Error(),
		},
		{
			name:    "started, nil Ready",
			started: true,
			live:    want{200, "ok"},
			startup: want{200, "ok"},
			readyz:  want{200, "ok"},
			status:  StatusOK,
		},
		{
			name:    "started, Ready ok",
			started: true,
			ready:   func(context.Context) error { return nil },
			live:    want{200, "ok"},
			startup: want{200, "ok"},
			readyz:  want{200, "ok"},
			status:  StatusOK,
		},
		{
			name:     "started, upstream down",
			started:  true,
			ready:    func(context.Context) error { return errUpstream },
			live:     want{200, "ok"},
			startup:  want{200, "ok"},
			readyz:   want{503, errUpstream.Error()},
			status:   StatusNotReady,
			readyErr: errUpstream.Error(),
		},
		{
			name:     "draining",
			started:  true,
			draining: true,
			ready:    func(context.Context) error { return nil },
			live:     want{200, "ok"},
			startup:  want{200, "ok"},
			readyz:   want{503, "draining"},
			status:   StatusDraining,
		},
		{
			name:     "draining before start",
			draining: true,
			live:     want{200, "ok"},
			startup:  want{503, "not started"},
			readyz:   want{503, "draining"},
			status:   StatusDraining,
		},
		{
			name:     "draining does not call Ready",
			started:  true,
			draining: true,
			ready: func(context.Context) error {
				panic("Ready called while draining")
			},
			live:    want{200, "ok"},
			startup: want{200, "ok"},
			readyz:  want{503, "draining"},
			status:  StatusDraining,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewServer(Options{
				Ready:  tt.ready,
				Status: func() any { return map[string]int{"pools": 1} },
			})
			if tt.started {
				s.SetStarted()
			}
			if tt.draining {
				s.SetDraining()
			}
			h := s.handler()
			for _, ep := range []struct {
				path string
				want want
			}{
				{"/livez", tt.live},
				{"/startupz", tt.startup},
				{"/readyz", tt.readyz},
			} {
				code, body, hdr := do(t, h, http.MethodGet, ep.path)
				if code != ep.want.code || body != ep.want.body {
					t.Errorf("GET %s = %d %q, want %d %q", ep.path, code, body, ep.want.code, ep.want.body)
				}
				if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
					t.Errorf("GET %s Content-Type = %q", ep.path, ct)
				}
			}

			code, body, hdr := do(t, h, http.MethodGet, "/api/health")
			if code != http.StatusOK {
				t.Fatalf("GET /api/health = %d, want 200", code)
			}
			if ct := hdr.Get("Content-Type"); ct != "application/json" {
				t.Errorf("GET /api/health Content-Type = %q", ct)
			}
			var rep struct {
				Status     string         `json:"status"`
				Started    bool           `json:"started"`
				Draining   bool           `json:"draining"`
				ReadyError string         `json:"ready_error"`
				Details    map[string]int `json:"details"`
			}
			if err := json.Unmarshal([]byte(body), &rep); err != nil {
				t.Fatalf("decode /api/health %q: %v", body, err)
			}
			if rep.Status != tt.status || rep.Started != tt.started || rep.Draining != tt.draining ||
				rep.ReadyError != tt.readyErr || rep.Details["pools"] != 1 {
				t.Errorf("/api/health = %+v, want status %q started %v draining %v ready_error %q details pools=1",
					rep, tt.status, tt.started, tt.draining, tt.readyErr)
			}
		})
	}
}

func TestLivezNeverCallsReady(t *testing.T) {
	defer goleak.VerifyNone(t)
	s := NewServer(Options{Ready: func(context.Context) error {
		t.Error("Ready called by /livez")
		return nil
	}})
	s.SetStarted()
	if code, body, _ := do(t, s.handler(), http.MethodGet, "/livez"); code != 200 || body != "ok" {
		t.Errorf("GET /livez = %d %q", code, body)
	}
}

func TestReadyDeadline(t *testing.T) {
	defer goleak.VerifyNone(t)
	s := NewServer(Options{Ready: func(ctx context.Context) error {
		dl, ok := ctx.Deadline()
		if !ok {
			t.Error("Ready called without a deadline")
		} else if d := time.Until(dl); d > readyTimeout {
			t.Errorf("Ready deadline in %s, want <= %s", d, readyTimeout)
		}
		return nil
	}})
	s.SetStarted()
	if code, _, _ := do(t, s.handler(), http.MethodGet, "/readyz"); code != 200 {
		t.Errorf("GET /readyz = %d, want 200", code)
	}
}

func TestReadyTimeout(t *testing.T) {
	defer goleak.VerifyNone(t)
	s := NewServer(Options{Ready: func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	}})
	s.readyTimeout = 10 * time.Millisecond
	s.SetStarted()
	code, body, _ := do(t, s.handler(), http.MethodGet, "/readyz")
	if code != 503 || body != "readiness check timed out after 10ms" {
		t.Errorf("GET /readyz = %d %q, want 503 timeout", code, body)
	}
}

func TestMethods(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := NewServer(Options{}).handler()
	for _, tt := range []struct {
		method, path string
		code         int
	}{
		{http.MethodPost, "/livez", http.StatusMethodNotAllowed},
		{http.MethodHead, "/livez", http.StatusOK},
		{http.MethodGet, "/quitquitquit", http.StatusNotFound}, // EnableQuit unset
		{http.MethodPost, "/quitquitquit", http.StatusNotFound},
		{http.MethodGet, "/nope", http.StatusNotFound},
	} {
		if code, _, _ := do(t, h, tt.method, tt.path); code != tt.code {
			t.Errorf("%s %s = %d, want %d", tt.method, tt.path, code, tt.code)
		}
	}
}

func TestAPIHealthUnencodableStatus(t *testing.T) {
	defer goleak.VerifyNone(t)
	s := NewServer(Options{Status: func() any { return make(chan int) }})
	if code, _, _ := do(t, s.handler(), http.MethodGet, "/api/health"); code != http.StatusInternalServerError {
		t.Errorf("GET /api/health = %d, want 500", code)
	}
}

func TestMetrics(t *testing.T) {
	defer goleak.VerifyNone(t)
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{
		Name: prometheus.BuildFQName("pgsidecar", "test", "events_total"),
		Help: "Events seen by the test.",
	})
	reg.MustRegister(c)
	c.Add(3)

	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatalf("GatherAndLint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("lint %s: %s", p.Metric, p.Text)
	}

	code, body, _ := do(t, NewServer(Options{Gatherer: reg}).handler(), http.MethodGet, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics = %d", code)
	}
	if !strings.Contains(body, "pgsidecar_test_events_total 3") {
		t.Errorf("GET /metrics lacks the counter:\n%s", body)
	}
	if strings.Contains(body, "go_goroutines") {
		t.Errorf("GET /metrics serves the default registry:\n%s", body)
	}
	// A scraper that asks for OpenMetrics gets it.
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	req.Header.Set("Accept", "application/openmetrics-text;version=1.0.0")
	rec := httptest.NewRecorder()
	NewServer(Options{Gatherer: reg}).handler().ServeHTTP(rec, req)
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/openmetrics-text") {
		t.Errorf("OpenMetrics asked, got Content-Type %q", ct)
	}
	if !strings.Contains(rec.Body.String(), "# EOF") {
		t.Errorf("OpenMetrics body lacks # EOF:\n%s", rec.Body.String())
	}
}

// failingCollector fails to collect, beside a healthy metric.
type failingCollector struct{ desc *prometheus.Desc }

func (f failingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- f.desc }
func (f failingCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.NewInvalidMetric(f.desc, errors.New("boom"))
}

func TestMetricsContinueOnError(t *testing.T) {
	defer goleak.VerifyNone(t)
	reg := prometheus.NewRegistry()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "pgsidecar_ok", Help: "A healthy gauge."})
	g.Set(1)
	reg.MustRegister(g, failingCollector{prometheus.NewDesc("pgsidecar_broken", "Always fails.", nil, nil)})

	code, body, _ := do(t, NewServer(Options{Gatherer: reg}).handler(), http.MethodGet, "/metrics")
	if code != http.StatusOK || !strings.Contains(body, "pgsidecar_ok 1") {
		t.Errorf("GET /metrics = %d:\n%s\nwant 200 with the healthy gauge", code, body)
	}
}

func TestMetricsNilGatherer(t *testing.T) {
	defer goleak.VerifyNone(t)
	if code, _, _ := do(t, NewServer(Options{}).handler(), http.MethodGet, "/metrics"); code != http.StatusOK {
		t.Errorf("GET /metrics = %d, want 200", code)
	}
}

// get fetches url over a real connection without keep-alive.
func get(t *testing.T, c *http.Client, method, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return resp.StatusCode, string(b)
}

func TestStartShutdown(t *testing.T) {
	defer goleak.VerifyNone(t)
	s := NewServer(Options{Addr: "127.0.0.1:0", EnableQuit: true})
	if s.Addr() != nil {
		t.Errorf("Addr before Start = %v, want nil", s.Addr())
	}
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := s.Start(); err == nil {
		t.Error("second Start succeeded")
	}
	base := "http://" + s.Addr().String()
	tr := &http.Transport{DisableKeepAlives: true}
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	defer tr.CloseIdleConnections()

	if code, body := get(t, c, http.MethodGet, base+"/livez"); code != 200 || body != "ok" {
		t.Errorf("GET /livez = %d %q", code, body)
	}
	if code, _ := get(t, c, http.MethodGet, base+"/startupz"); code != 503 {
		t.Errorf("GET /startupz before SetStarted = %d", code)
	}
	s.SetStarted()
	if code, _ := get(t, c, http.MethodGet, base+"/startupz"); code != 200 {
		t.Errorf("GET /startupz after SetStarted = %d", code)
	}
	if code, _ := get(t, c, http.MethodGet, base+"/readyz"); code != 200 {
		t.Errorf("GET /readyz = %d", code)
	}
	s.SetDraining()
	if code, body := get(t, c, http.MethodGet, base+"/readyz"); code != 503 || body != "draining" {
		t.Errorf("GET /readyz while draining = %d %q", code, body)
	}

	select {
	case <-s.QuitRequested():
		t.Fatal("quit requested before POST")
	default:
	}
	if code, _ := get(t, c, http.MethodGet, base+"/quitquitquit"); code != http.StatusMethodNotAllowed {
		t.Errorf("GET /quitquitquit = %d, want 405", code)
	}
	for range 2 { // a second POST must not panic on a closed channel
		if code, _ := get(t, c, http.MethodPost, base+"/quitquitquit"); code != 200 {
			t.Errorf("POST /quitquitquit = %d", code)
		}
	}
	select {
	case <-s.QuitRequested():
	default:
		t.Error("QuitRequested not closed after POST /quitquitquit")
	}

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	if err := s.Start(); err == nil {
		t.Error("Start after Shutdown succeeded")
	}
	if _, err := c.Get(base + "/livez"); err == nil {
		t.Error("server still answers after Shutdown")
	}
}

func TestShutdownBeforeStart(t *testing.T) {
	defer goleak.VerifyNone(t)
	if err := NewServer(Options{}).Shutdown(t.Context()); err != nil {
		t.Errorf("Shutdown before Start: %v", err)
	}
}

func TestStartListenError(t *testing.T) {
	defer goleak.VerifyNone(t)
	if err := NewServer(Options{Addr: "127.0.0.1:notaport"}).Start(); err == nil {
		t.Error("Start with a bad address succeeded")
	}
}

// A request stuck in Ready past the Shutdown deadline is cut off, and
// Shutdown still returns only after the serving goroutine is gone.
func TestShutdownDeadline(t *testing.T) {
	defer goleak.VerifyNone(t)
	entered := make(chan struct{})
	s := NewServer(Options{
		Addr: "127.0.0.1:0",
		Ready: func(ctx context.Context) error {
			close(entered)
			<-ctx.Done()
			return ctx.Err()
		},
	})
	s.SetStarted()
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	reqDone := make(chan struct{})
	go func() {
		defer close(reqDone)
		resp, err := c.Get("http://" + s.Addr().String() + "/readyz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
		}
	}()
	<-entered

	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want DeadlineExceeded", err)
	}
	<-reqDone
}
