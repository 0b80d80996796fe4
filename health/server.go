package health

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Timeouts of the HTTP server. The endpoints are small and local; a client
// that is slower than this is misbehaving.
const (
	readyTimeout      = 2 * time.Second
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 60 * time.Second
	maxHeaderBytes    = 16 << 10

	// metricsMaxInFlight bounds concurrent scrapes; further scrapes get 503.
	metricsMaxInFlight = 8
)

// Status values reported in [Report.Status] by /api/health.
const (
	StatusOK       = "ok"        // started, not draining, Ready returned nil
	StatusStarting = "starting"  // SetStarted has not been called yet
	StatusDraining = "draining"  // SetDraining has been called
	StatusNotReady = "not_ready" // started, but Ready returned an error
)

// Options configures a [Server]. The zero value of every field but Addr is
// usable.
type Options struct {
	// Addr is the TCP address to listen on, e.g. "127.0.0.1:9930".
	// "127.0.0.1:0" picks a free port; [Server.Addr] reports it after Start.
	Addr string

	// Gatherer provides the metrics served on /metrics. It should be the
	// private registry owned by cmd, never prometheus.DefaultGatherer.
	// Nil serves an empty registry.
	Gatherer prometheus.Gatherer

	// Ready reports whether pgsidecar can serve clients (its upstreams
	// reachable; a busy pool is not a reason to take a sidecar out of its
	// Service, as clients queue for it). It is called by /readyz and
	// /api/health with a context that expires after 2s and must honour it.
	// A nil return means ready; the error text is shown to HTTP clients, so
	// it must not contain secrets (use redacted DSNs). Nil Ready means
	// always ready once started.
	Ready func(ctx context.Context) error

	// Status returns a JSON-serialisable snapshot (pools, upstreams) shown
	// under "details" in /api/health. It must be safe for concurrent use
	// and must not contain secrets. Nil omits the details.
	Status func() any

	// EnableQuit serves POST /quitquitquit, which closes the channel
	// returned by [Server.QuitRequested]. It is off by default because
	// anyone who can reach Addr could then stop the process.
	EnableQuit bool

	// Logger receives the server's own errors. Nil discards them.
	Logger *slog.Logger
}

// Server is the health and metrics HTTP server. Its methods are safe for
// concurrent use. The zero value is not usable; call [NewServer].
type Server struct {
	opts         Options
	logger       *slog.Logger
	gatherer     prometheus.Gatherer
	readyTimeout time.Duration
	srv          *http.Server

	started  atomic.Bool
	draining atomic.Bool

	quitOnce sync.Once
	quit     chan struct{}

	mu      sync.Mutex    // guards the fields below
	ln      net.Listener  // set by Start
	done    chan struct{} // closed when the serving goroutine returns
	running bool          // Start succeeded
	closed  bool          // Shutdown was called
}

// NewServer returns a Server for opts. It does not listen; call
// [Server.Start].
func NewServer(opts Options) *Server {
	s := &Server{
		opts:         opts,
		logger:       opts.Logger,
		gatherer:     opts.Gatherer,
		readyTimeout: readyTimeout,
		quit:         make(chan struct{}),
	}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	if s.gatherer == nil {
		s.gatherer = prometheus.NewRegistry()
	}
	s.srv = &http.Server{
		Handler:           s.handler(),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn),
	}
	return s
}

// handler builds the endpoint mux.
func (s *Server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /livez", s.serveLive)
	mux.HandleFunc("GET /startupz", s.serveStartup)
	mux.HandleFunc("GET /readyz", s.serveReady)
	mux.HandleFunc("GET /api/health", s.serveAPIHealth)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{
		ErrorLog:            promLogger{s.logger},
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: metricsMaxInFlight,
		// Scrapers that ask for OpenMetrics get it (exemplars, created timestamps); native
		// histograms go out in the protobuf format Prometheus negotiates for them.
		EnableOpenMetrics: true,
	}))
	if s.opts.EnableQuit {
		mux.HandleFunc("POST /quitquitquit", s.serveQuit)
	}
	return mux
}

// Start listens on Options.Addr and serves in a goroutine owned by the
// Server until [Server.Shutdown]. When Start returns nil, [Server.Addr] is
// known and requests are accepted. Start may be called only once.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running || s.closed {
		return errors.New("health: start: server already started or shut down")
	}
	ln, err := net.Listen("tcp", s.opts.Addr)
	if err != nil {
		return fmt.Errorf("health: listen: %w", err)
	}
	s.ln = ln
	s.running = true
	s.done = make(chan struct{})
	go s.serve(ln, s.done)
	return nil
}

// serve runs the HTTP server on ln and closes done when it returns.
func (s *Server) serve(ln net.Listener, done chan<- struct{}) {
	defer close(done)
	if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.logger.Error("health server stopped", "addr", ln.Addr().String(), "err", err)
	}
}

// Addr returns the address the Server listens on, or nil before a
// successful [Server.Start].
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// SetStarted marks start-up as finished (the first pool warm-up is done):
// /startupz answers 200 and /readyz consults Ready from then on.
func (s *Server) SetStarted() { s.started.Store(true) }

// SetDraining marks the process as draining: /readyz answers 503
// "draining" from then on, so Kubernetes stops routing new work before
// clients are drained. It cannot be undone. /livez is unaffected.
func (s *Server) SetDraining() { s.draining.Store(true) }

// QuitRequested returns a channel that is closed on the first
// POST /quitquitquit (only served when Options.EnableQuit is set).
func (s *Server) QuitRequested() <-chan struct{} { return s.quit }

// Shutdown stops accepting connections, waits for in-flight requests and
// for the serving goroutine to return, bounded by ctx. If ctx ends first,
// remaining connections are closed and ctx's error is returned, still
// after the serving goroutine has returned. Shutdown before Start, or a
// second Shutdown, returns nil.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	running, done := s.running, s.done
	s.mu.Unlock()
	if !running {
		return nil
	}
	err := s.srv.Shutdown(ctx)
	if err != nil {
		// ctx ended with requests still in flight: force them closed so
		// no goroutine outlives the Server.
		if cerr := s.srv.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		err = fmt.Errorf("health: shutdown: %w", err)
	}
	<-done
	return err
}

// readiness reports whether the Server is ready, and why not. Ready is
// called only when started and not draining.
func (s *Server) readiness(ctx context.Context) (ok bool, reason string) {
	switch {
	case s.draining.Load():
		return false, "draining"
	case !s.started.Load():
		return false, "not started"
	}
	if err := s.checkReady(ctx); err != nil {
		return false, err.Error()
	}
	return true, ""
}

// checkReady calls Options.Ready with the ready timeout.
func (s *Server) checkReady(ctx context.Context) error {
	if s.opts.Ready == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.readyTimeout)
	defer cancel()
	err := s.opts.Ready(ctx)
	if err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return fmt.Errorf("readiness check timed out after %s", s.readyTimeout)
	}
	return err
}

func (s *Server) serveLive(w http.ResponseWriter, _ *http.Request) {
	writeText(w, http.StatusOK, "ok")
}

func (s *Server) serveStartup(w http.ResponseWriter, _ *http.Request) {
	if !s.started.Load() {
		writeText(w, http.StatusServiceUnavailable, "not started")
		return
	}
	writeText(w, http.StatusOK, "ok")
}

func (s *Server) serveReady(w http.ResponseWriter, r *http.Request) {
	if ok, reason := s.readiness(r.Context()); !ok {
		writeText(w, http.StatusServiceUnavailable, reason)
		return
	}
	writeText(w, http.StatusOK, "ok")
}

// Report is the JSON document served by /api/health.
type Report struct {
	// Status is one of StatusOK, StatusStarting, StatusDraining,
	// StatusNotReady.
	Status   string `json:"status"`
	Started  bool   `json:"started"`
	Draining bool   `json:"draining"`
	// ReadyError is the error text of Options.Ready; empty when it
	// returned nil.
	ReadyError string `json:"ready_error,omitempty"`
	// Details is the value of Options.Status, when set.
	Details any `json:"details,omitempty"`
}

// serveAPIHealth answers 200 with a Report whatever the state (the state is
// in the body; probes use /readyz). Ready is called even while starting so
// that the reason a start-up is slow is visible.
func (s *Server) serveAPIHealth(w http.ResponseWriter, r *http.Request) {
	rep := Report{
		Started:  s.started.Load(),
		Draining: s.draining.Load(),
	}
	if !rep.Draining {
		if err := s.checkReady(r.Context()); err != nil {
			rep.ReadyError = err.Error()
		}
	}
	switch {
	case rep.Draining:
		rep.Status = StatusDraining
	case !rep.Started:
		rep.Status = StatusStarting
	case rep.ReadyError != "":
		rep.Status = StatusNotReady
	default:
		rep.Status = StatusOK
	}
	if s.opts.Status != nil {
		rep.Details = s.opts.Status()
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(rep); err != nil {
		s.logger.Error("health: encode /api/health", "err", err)
		writeText(w, http.StatusInternalServerError, "cannot encode health report")
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(buf.Bytes())
}

func (s *Server) serveQuit(w http.ResponseWriter, _ *http.Request) {
	s.quitOnce.Do(func() {
		s.logger.Info("quit requested via /quitquitquit")
		close(s.quit)
	})
	writeText(w, http.StatusOK, "ok")
}

// writeText writes body as a plain-text response with code.
func writeText(w http.ResponseWriter, code int, body string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(body))
}

// promLogger adapts a *slog.Logger to promhttp.Logger.
type promLogger struct{ l *slog.Logger }

var _ promhttp.Logger = promLogger{}

// Println logs v at error level.
func (p promLogger) Println(v ...any) {
	p.l.Error(strings.TrimSuffix(fmt.Sprintln(v...), "\n"))
}
