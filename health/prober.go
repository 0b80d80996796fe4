package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/config"
)

// Defaults of [ProberOptions].
const (
	DefaultProbeQuery       = "SELECT 1"
	DefaultProbeInterval    = 5 * time.Second
	DefaultProbeTimeout     = 2 * time.Second
	DefaultFailureThreshold = 3
	DefaultSuccessThreshold = 2
)

// ProberOptions configures a [Prober]. The zero value of every field but
// ConnString is usable.
type ProberOptions struct {
	// Name labels the upstream in metrics, logs and readiness errors, e.g.
	// "default" or "db1:5432". It must come from configuration, never from
	// clients, so that metric cardinality stays bounded, and it must be
	// unique among the probers sharing one [ProberMetrics].
	Name string

	// ConnString is the upstream DSN, in any form pgconn.ParseConfig
	// accepts. It is parsed once by [NewProber]; a DSN that cannot be
	// parsed makes every check fail. It is never logged or reported
	// unredacted.
	ConnString string

	// Query is the statement each check runs. Empty means "SELECT 1".
	Query string

	// Interval is the time between the starts of two checks. Zero or
	// negative means 5s. A check that takes longer than Interval delays
	// the next one; checks never overlap.
	Interval time.Duration

	// Timeout bounds one check: connect, run Query, close. Zero or
	// negative means 2s.
	Timeout time.Duration

	// FailureThreshold is the number of consecutive failed checks that
	// turn a healthy upstream unhealthy. Zero or negative means 3.
	FailureThreshold int

	// SuccessThreshold is the number of consecutive successful checks
	// that turn an unhealthy upstream healthy again. Zero or negative
	// means 2.
	SuccessThreshold int

	// Logger receives state transitions: Info when an upstream becomes
	// healthy, Warn when it becomes unhealthy, each logged once. Nil
	// discards them.
	Logger *slog.Logger
}

// ProbeStatus is a snapshot of a [Prober], as returned by
// [Prober.Status]. It holds no secret and is safe to serve in
// /api/health.
type ProbeStatus struct {
	// Name is ProberOptions.Name.
	Name string `json:"name"`
	// Upstream is the redacted DSN.
	Upstream string `json:"upstream"`
	// Checked reports whether a check has completed; before that Healthy
	// is false.
	Checked bool `json:"checked"`
	// Healthy is the state of the state machine (see [Prober]).
	Healthy bool `json:"healthy"`
	// ConsecutiveFailures and ConsecutiveSuccesses count the latest run
	// of equal results; one of them is always zero.
	ConsecutiveFailures  int `json:"consecutive_failures"`
	ConsecutiveSuccesses int `json:"consecutive_successes"`
	// LastError is the error of the latest check with secrets removed;
	// empty when it succeeded.
	LastError string `json:"last_error,omitempty"`
	// LastLatency is how long the latest check took (failed ones too).
	LastLatency time.Duration `json:"-"`
	// LastCheck is when the latest check completed; zero before the first.
	LastCheck time.Time `json:"last_check,omitzero"`
	// MaxConnections is the upstream's max_connections and Connections its client backends,
	// as the latest successful check read them (0 when they could not be read).
	MaxConnections int `json:"max_connections,omitempty"`
	Connections    int `json:"connections,omitempty"`
}

// MarshalJSON renders ProbeStatus with LastLatency in seconds under
// "last_latency_seconds".
func (s ProbeStatus) MarshalJSON() ([]byte, error) {
	type plain ProbeStatus // without the method, so no recursion
	var latency *float64
	if s.Checked {
		latency = new(s.LastLatency.Seconds())
	}
	return json.Marshal(struct {
		plain
		LastLatency *float64 `json:"last_latency_seconds,omitempty"`
	}{plain(s), latency})
}

// Prober checks one upstream PostgreSQL every Interval and keeps a health
// state with hysteresis.
//
// # States
//
// A Prober starts "unchecked": Healthy and Checked report false, the
// healthy gauge is 0, so readiness (see [ReadyWhen]) stays false until
// the first check has succeeded. The first completed check decides the
// state directly (there is no earlier state to protect), and from then on:
//
//   - healthy -> unhealthy after FailureThreshold consecutive failures;
//   - unhealthy -> healthy after SuccessThreshold consecutive successes.
//
// Each state change is logged once and counted in
// pgsidecar_upstream_state_changes_total.
//
// A check connects with pgconn (TLS, authentication and multiple hosts as
// the DSN says), runs Query, and closes, all within Timeout. A check cut
// short because Run's ctx ended is discarded, so stopping a Prober never
// turns it unhealthy.
//
// A Prober only observes: it does not touch the pools. Its methods are
// safe for concurrent use.
type Prober struct {
	opts     ProberOptions
	upstream string // redacted DSN
	secrets  []string
	logger   *slog.Logger
	m        proberSeries

	// connConfig is the parsed ConnString; parseErr is set instead when it
	// cannot be parsed.
	connConfig *pgconn.Config
	parseErr   error

	// check runs one check; tests replace it. It must honour ctx.
	check func(ctx context.Context) error

	mu sync.Mutex  // guards st
	st ProbeStatus // current state; Name and Upstream are fixed
}

// NewProber returns a Prober for opts, with its series created (at zero) on
// m. m may be nil, in which case nothing is exported. It does not probe;
// call [Prober.Run].
func NewProber(opts ProberOptions, m *ProberMetrics) *Prober {
	if opts.Query == "" {
		opts.Query = DefaultProbeQuery
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultProbeInterval
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultProbeTimeout
	}
	if opts.FailureThreshold <= 0 {
		opts.FailureThreshold = DefaultFailureThreshold
	}
	if opts.SuccessThreshold <= 0 {
		opts.SuccessThreshold = DefaultSuccessThreshold
	}
	if m == nil {
		m = NewProberMetrics(nil)
	}
	p := &Prober{
		opts:     opts,
		upstream: config.RedactDSN(opts.ConnString),
		m:        m.series(opts.Name),
	}
	p.logger = opts.Logger
	if p.logger == nil {
		p.logger = slog.New(slog.DiscardHandler)
	}
	p.logger = p.logger.With("upstream", opts.Name, "dsn", p.upstream)
	p.st = ProbeStatus{Name: opts.Name, Upstream: p.upstream}

	cc, err := pgconn.ParseConfig(opts.ConnString)
	if err != nil {
		// pgconn's message quotes the DSN with best-effort redaction;
		// report ours instead.
		p.parseErr = fmt.Errorf("invalid connection string %s", p.upstream)
	} else {
		p.connConfig = cc
		p.secrets = connSecrets(cc)
	}
	p.check = p.checkPostgres
	return p
}

// connSecrets returns the passwords of cc that an error message might
// quote. Fallback configs share the primary's password.
func connSecrets(cc *pgconn.Config) []string {
	if cc.Password == "" {
		return nil
	}
	return []string{cc.Password}
}

// Run probes every Interval, starting at once, until ctx ends. It returns
// when ctx is done and the check in flight, if any, has returned. Run must
// be called at most once; its caller owns the goroutine and waits for it.
func (p *Prober) Run(ctx context.Context) {
	t := time.NewTicker(p.opts.Interval)
	defer t.Stop()
	for {
		p.probe(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// probe runs one check bounded by Timeout and records its result, unless
// ctx ended meanwhile.
func (p *Prober) probe(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	start := time.Now()
	err := p.check(cctx)
	latency := time.Since(start)
	cancel()
	if ctx.Err() != nil {
		return // shutting down: the result says nothing about the upstream
	}
	p.record(err, latency, time.Now())
}

// checkPostgres is the real check: connect, run Query, close.
func (p *Prober) checkPostgres(ctx context.Context) error {
	if p.parseErr != nil {
		return p.parseErr
	}
	conn, err := pgconn.ConnectConfig(ctx, p.connConfig.Copy())
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	_, err = conn.Exec(ctx, p.opts.Query).ReadAll()
	if err == nil {
		p.readUsage(ctx, conn)
	}
	// The close error is ignored: the upstream has answered (or not)
	// already, and Close releases the socket whatever it returns.
	_ = conn.Close(ctx)
	if err != nil {
		return fmt.Errorf("query: %w", err)
	}
	return nil
}

// usageQuery reads how close the upstream is to max_connections. Any role may run it:
// pg_stat_activity shows every backend's type.
const usageQuery = "select current_setting('max_connections'), count(*) from pg_stat_activity where backend_type = 'client backend'"

// readUsage records the upstream's max_connections and client backends; a failure (an old
// server, a restricted role) records zeros and does not fail the check.
func (p *Prober) readUsage(ctx context.Context, conn *pgconn.PgConn) {
	var maxConns, conns int
	res, err := conn.Exec(ctx, usageQuery).ReadAll()
	if err == nil && len(res) == 1 && len(res[0].Rows) == 1 && len(res[0].Rows[0]) == 2 {
		maxConns, _ = strconv.Atoi(string(res[0].Rows[0][0]))
		conns, _ = strconv.Atoi(string(res[0].Rows[0][1]))
	}
	p.mu.Lock()
	p.st.MaxConnections, p.st.Connections = maxConns, conns
	p.mu.Unlock()
}

// transition is a state change decided by record, logged after mu is
// released.
type transition int

const (
	noChange transition = iota
	becameHealthy
	becameUnhealthy
)

// record applies the result of one check to the state machine, the
// metrics and the log.
func (p *Prober) record(err error, latency time.Duration, now time.Time) {
	var msg string
	if err != nil {
		msg = p.redact(err.Error())
	}

	p.mu.Lock()
	st := &p.st
	first := !st.Checked
	st.Checked = true
	st.LastCheck = now
	st.LastLatency = latency
	st.LastError = msg
	tr := noChange
	if err == nil {
		st.ConsecutiveFailures = 0
		st.ConsecutiveSuccesses++
		if !st.Healthy && (first || st.ConsecutiveSuccesses >= p.opts.SuccessThreshold) {
			st.Healthy = true
			tr = becameHealthy
		}
	} else {
		st.ConsecutiveSuccesses = 0
		st.ConsecutiveFailures++
		if first || (st.Healthy && st.ConsecutiveFailures >= p.opts.FailureThreshold) {
			st.Healthy = false
			tr = becameUnhealthy
		}
	}
	failures := st.ConsecutiveFailures
	p.mu.Unlock()

	p.m.duration.Observe(latency.Seconds())
	if err == nil {
		p.m.ok.Inc()
	} else {
		p.m.failed.Inc()
	}
	switch tr {
	case becameHealthy:
		p.m.healthy.Set(1)
		p.m.toHealthy.Inc()
		p.logger.Info("upstream healthy", "first_check", first, "latency", latency)
	case becameUnhealthy:
		p.m.healthy.Set(0)
		p.m.toUnhealthy.Inc()
		p.logger.Warn("upstream unhealthy", "first_check", first, "consecutive_failures", failures, "err", msg)
	}
}

// redact removes the DSN's passwords from an error message. pgconn does
// not quote them, but a message is shown over HTTP, so be sure.
func (p *Prober) redact(msg string) string {
	for _, s := range p.secrets {
		msg = strings.ReplaceAll(msg, s, "xxxxx")
	}
	return msg
}

// Healthy reports whether the upstream is healthy. It is false until a
// check has succeeded.
func (p *Prober) Healthy() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st.Healthy
}

// Checked reports whether at least one check has completed.
func (p *Prober) Checked() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st.Checked
}

// Status returns a snapshot of the Prober's state.
func (p *Prober) Status() ProbeStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st
}

// ReadyWhen returns a readiness function for [Options.Ready]: it returns
// nil when every prober has completed a check and is healthy, and
// otherwise an error naming each upstream that is not, with its redacted
// DSN and last error. With no probers it always returns an error, so a
// wiring mistake cannot report ready. The returned function does not
// block.
func ReadyWhen(probers ...*Prober) func(ctx context.Context) error {
	return func(context.Context) error {
		if len(probers) == 0 {
			return errors.New("no upstream is probed")
		}
		var bad []string
		for _, p := range probers {
			st := p.Status()
			switch {
			case !st.Checked:
				bad = append(bad, fmt.Sprintf("upstream %s (%s) not checked yet", st.Name, st.Upstream))
			case !st.Healthy && st.LastError != "":
				bad = append(bad, fmt.Sprintf("upstream %s (%s) unhealthy: %s", st.Name, st.Upstream, st.LastError))
			case !st.Healthy:
				bad = append(bad, fmt.Sprintf("upstream %s (%s) unhealthy: recovering, %d/%d checks ok",
					st.Name, st.Upstream, st.ConsecutiveSuccesses, p.opts.SuccessThreshold))
			}
		}
		if len(bad) > 0 {
			return errors.New(strings.Join(bad, "; "))
		}
		return nil
	}
}
