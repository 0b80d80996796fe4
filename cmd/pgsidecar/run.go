package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/pflag"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/health"
	"github.com/pgsidecar/pgsidecar/internal/pgcluster"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy"
	"github.com/pgsidecar/pgsidecar/proxy/admin"
)

// Exit codes.
const (
	exitOK       = 0
	exitFailure  = 1
	exitBadUsage = 2
)

// usage lists the command lines pgsidecar accepts.
const usage = "pgsidecar [flags] | pgsidecar config check|print [flags]"

// running describes a started instance; tests receive it to find the bound addresses.
type running struct {
	ProxyAddrs []net.Addr
	HTTPAddr   net.Addr
}

// errForced is serve's error when a second stop signal cut the drain short.
var errForced = errors.New("stopped by a second signal before the drain finished")

// run is the whole program: it returns the exit code. started, if not nil, receives the
// instance once it serves. signals, if not nil, delivers SIGHUP (reload the configuration) and
// SIGTERM or SIGINT (drain and exit; a second one exits at once); ctx ending drains like SIGTERM.
func run(ctx context.Context, args, environ []string, stdout, stderr io.Writer, started chan<- running, signals <-chan os.Signal) int {
	if len(args) > 0 && args[0] == "config" {
		return configCommand(args[1:], environ, stdout, stderr)
	}
	fs, cfg, code := loadFlags("pgsidecar", args, environ, stderr)
	if cfg == nil {
		return code
	}
	var level slog.LevelVar
	logger := newLogger(cfg, &level, stderr)
	// Go's default GOMAXPROCS is the CPU count, or a container's CPU limit below it: more
	// threads than that would only be throttled.
	cpuLimit := runtime.GOMAXPROCS(0)
	if cfg.MaxProcs > 0 {
		runtime.GOMAXPROCS(cfg.MaxProcs)
	}
	reload := func() (*config.Config, error) { return config.Load(fs, nil, environ) }
	if err := serve(ctx, cfg, reload, logger, &level, stdout, started, cpuLimit, signals); err != nil {
		logger.Error("pgsidecar stopped", "err", err)
		return exitFailure
	}
	return exitOK
}

func configCommand(args, environ []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "check" && args[0] != "print") {
		fmt.Fprintln(stderr, "usage: "+usage)
		return exitBadUsage
	}
	cfg, code := loadConfig("pgsidecar config "+args[0], args[1:], environ, stderr)
	if cfg == nil {
		return code
	}
	if args[0] == "print" {
		if err := cfg.Print(stdout); err != nil {
			fmt.Fprintf(stderr, "pgsidecar: %v\n", err)
			return exitFailure
		}
		return exitOK
	}
	fmt.Fprintln(stdout, "configuration is valid")
	return exitOK
}

// loadConfig parses the flags in args and loads the configuration. A nil Config comes with the
// exit code: --help is a success, anything else is bad usage and has been reported on stderr.
func loadConfig(name string, args, environ []string, stderr io.Writer) (*config.Config, int) {
	_, cfg, code := loadFlags(name, args, environ, stderr)
	return cfg, code
}

// loadFlags is loadConfig that also returns the parsed flags, for reloading later.
func loadFlags(name string, args, environ []string, stderr io.Writer) (*pflag.FlagSet, *config.Config, int) {
	fs := config.NewFlagSet(name)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, nil, exitOK
		}
		fmt.Fprintf(stderr, "%s: %v; usage: %s\n", name, err, usage)
		return nil, nil, exitBadUsage
	}
	// pflag keeps positional arguments for the caller; none is meaningful here, and a
	// misspelt subcommand must not start a proxy with the default configuration.
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q; usage: %s\n", name, fs.Arg(0), usage)
		return nil, nil, exitBadUsage
	}
	cfg, err := config.Load(fs, nil, environ)
	if err != nil {
		fmt.Fprintf(stderr, "pgsidecar: invalid configuration:\n%v\n", err)
		return nil, nil, exitBadUsage
	}
	return fs, cfg, exitOK
}

// newLogger returns the process's logger, its level held in level so that a reload can change it.
func newLogger(cfg *config.Config, level *slog.LevelVar, w io.Writer) *slog.Logger {
	setLevel(level, cfg.LogLevel)
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// setLevel sets level to the log_level name (validated by config).
func setLevel(level *slog.LevelVar, name string) {
	var l slog.Level
	_ = l.UnmarshalText([]byte(name))
	level.Set(l)
}

// serve wires the packages together and runs until ctx is done or /quitquitquit is called.
func serve(ctx context.Context, cfg *config.Config, reload func() (*config.Config, error), logger *slog.Logger, level *slog.LevelVar,
	stdout io.Writer, started chan<- running, cpuLimit int, signals <-chan os.Signal) error {
	if cfg.DatabaseURL == "" && len(cfg.Routes) == 0 {
		if cfg.Profile != "local" {
			return errors.New("no upstream: set DATABASE_URL (or database_url / routes in the config file)")
		}
		cluster, err := startLocalCluster(ctx, logger)
		if err != nil {
			return err
		}
		defer cluster.Close()
		cfg.DatabaseURL = cluster.DSN("postgres")
		local := cfg.DatabaseURL
		load := reload
		reload = func() (*config.Config, error) {
			next, err := load()
			if err == nil && next.DatabaseURL == "" && len(next.Routes) == 0 {
				next.DatabaseURL = local // still the disposable cluster
			}
			return next, err
		}
		fmt.Fprintf(stdout, "pgsidecar: no DATABASE_URL given, started a disposable PostgreSQL on 127.0.0.1:%d (removed on exit)\n", cluster.Port())
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := proxy.NewMetrics(reg)
	registerProcessInfo(reg)
	pools := pool.NewSet(pool.SetOptions{MaxPools: cfg.MaxPools, OnRemove: metrics.ForgetPool})
	defer pools.Close()
	reg.MustRegister(pool.NewCollector(pools))
	warnUnverifiedUpstreams(cfg, logger, reg)

	// Upstream health probing: readiness follows database_url and every configured route. The
	// interval is the prober's 5s default, not server_check_delay (that one is about
	// re-checking idle pool connections). The probers keep running while draining so
	// /api/health stays current; they are stopped last.
	probers, err := newProbers(cfg, logger, reg)
	if err != nil {
		return err
	}
	registerUp(reg, probers)
	if len(probers) > 0 {
		pctx, stopProbers := context.WithCancel(context.WithoutCancel(ctx))
		var wg sync.WaitGroup
		for _, p := range probers {
			wg.Go(func() { p.Run(pctx) })
		}
		defer func() {
			stopProbers()
			wg.Wait()
		}()
	}

	// The configuration in force, for readers outside the loop below (which replaces it).
	var current atomic.Pointer[config.Config]
	current.Store(cfg)
	startedAt := time.Now()
	adv := &advisor{pools: pools, probers: probers, cfg: current.Load}
	{
		actx, stopAdvisor := context.WithCancel(context.WithoutCancel(ctx))
		var wg sync.WaitGroup
		wg.Go(func() { adv.run(actx) })
		defer func() {
			stopAdvisor()
			wg.Wait()
		}()
	}

	if g := newProcsGovernor(cfg.MaxProcs, min(cfg.MaxProcsQueued, cpuLimit), pools, logger); g.enabled() {
		gctx, stopGovernor := context.WithCancel(context.WithoutCancel(ctx))
		var wg sync.WaitGroup
		wg.Go(func() { g.run(gctx) })
		defer func() {
			stopGovernor()
			wg.Wait()
		}()
	}

	// The admin console's RELOAD and SHUTDOWN are carried out by the loop below, which owns
	// the configuration in force; looping is closed when it stops taking them.
	adminReload := make(chan chan error)
	adminStop := make(chan struct{})
	looping := make(chan struct{})
	var stopOnce sync.Once
	version, _ := buildVersion()
	srv, err := proxy.New(proxy.Options{Config: cfg, Pools: pools, Logger: logger, Metrics: metrics,
		Version:   version,
		Upstreams: func() []admin.UpstreamRow { return upstreamRows(probers) },
		Reload: func() error {
			done := make(chan error, 1)
			select {
			case adminReload <- done:
				return <-done
			case <-looping:
				return errors.New("pgsidecar is shutting down")
			}
		},
		Shutdown: func() { stopOnce.Do(func() { close(adminStop) }) },
	})
	if err != nil {
		return err
	}
	adv.pins = srv.PinnedClients
	if err := srv.Start(ctx); err != nil {
		return err
	}
	inst := running{ProxyAddrs: srv.Addrs()}

	var hs *health.Server
	var quit <-chan struct{}
	if cfg.HTTPListen != "" {
		hopts := health.Options{
			Addr:     cfg.HTTPListen,
			Gatherer: reg,
			Status:   func() any { return serveStatus(current.Load(), startedAt, pools, probers, adv) },
			Logger:   logger,
			// POST /quitquitquit drains and stops like SIGTERM.
			EnableQuit: cfg.HTTPQuit,
		}
		if len(probers) > 0 {
			hopts.Ready = health.ReadyWhen(probers...)
		}
		hs = health.NewServer(hopts)
		if err := hs.Start(); err != nil {
			_ = srv.Shutdown(ctx)
			return fmt.Errorf("start http server: %w", err)
		}
		inst.HTTPAddr = hs.Addr()
		quit = hs.QuitRequested()
		if cfg.MinPoolSize > 0 {
			// Started once the configured pools opened their first connections (or failed to).
			wctx, stopWarm := context.WithCancel(context.WithoutCancel(ctx))
			var wg sync.WaitGroup
			wg.Go(func() {
				if awaitWarmPools(wctx, pools, logger) {
					hs.SetStarted()
				}
			})
			defer func() {
				stopWarm()
				wg.Wait()
			}()
		} else {
			hs.SetStarted()
		}
	}

	addrs := make([]string, len(inst.ProxyAddrs))
	for i, a := range inst.ProxyAddrs {
		addrs[i] = a.String()
	}
	logger.Info("pgsidecar serving", "listen", strings.Join(addrs, ","), "http", cfg.HTTPListen,
		"upstream", config.RedactDSN(cfg.DatabaseURL), "pool_mode", cfg.PoolMode, "profile", cfg.Profile)
	if ta, ok := inst.ProxyAddrs[0].(*net.TCPAddr); ok {
		fmt.Fprintf(stdout, "pgsidecar: connect with: psql \"postgres://postgres@%s/postgres?sslmode=disable\"\n",
			net.JoinHostPort(ta.IP.String(), fmt.Sprint(ta.Port)))
	}
	if started != nil {
		started <- inst
	}

	reloads := newReloadMetrics(reg)
	var reason string
	for reason == "" {
		select {
		case sig := <-signals:
			if sig == syscall.SIGHUP {
				if next, err := reloadConfig(cfg, reload, srv, logger, reloads); err == nil {
					cfg = next
					current.Store(cfg)
					setLevel(level, cfg.LogLevel)
				}
				continue
			}
			reason = sig.String()
		case done := <-adminReload:
			next, err := reloadConfig(cfg, reload, srv, logger, reloads)
			if err == nil {
				cfg = next
				current.Store(cfg)
				setLevel(level, cfg.LogLevel)
			}
			done <- err
		case <-ctx.Done():
			reason = "stopped"
		case <-quit:
			reason = "POST /quitquitquit"
		case <-adminStop:
			reason = "admin console SHUTDOWN"
		}
	}
	close(looping)
	return drain(ctx, cfg, srv, hs, logger, reason, signals)
}

// upstreamRows is the probers' state as the admin console's SHOW UPSTREAMS shows it.
func upstreamRows(probers []*health.Prober) []admin.UpstreamRow {
	rows := make([]admin.UpstreamRow, 0, len(probers))
	for _, p := range probers {
		st := p.Status()
		rows = append(rows, admin.UpstreamRow{Name: st.Name, Upstream: st.Upstream, Checked: st.Checked, Healthy: st.Healthy,
			ConsecutiveFailures: st.ConsecutiveFailures, ConsecutiveSuccesses: st.ConsecutiveSuccesses,
			LastError: st.LastError, Latency: st.LastLatency, LastCheck: st.LastCheck})
	}
	return rows
}

// reloadConfig loads the configuration again and puts it in force, or logs why not and keeps
// the old one. It returns the new configuration, or why it was rejected.
func reloadConfig(cur *config.Config, load func() (*config.Config, error), srv *proxy.Server, logger *slog.Logger, m *reloadMetrics) (*config.Config, error) {
	next, err := load()
	if err == nil {
		err = srv.Reload(next)
	}
	if err != nil {
		m.failed()
		logger.Error("configuration reload rejected; the previous configuration stays in force", "err", err)
		return nil, err
	}
	m.succeeded()
	if names := cur.RestartOnly(next); len(names) > 0 {
		logger.Warn("configuration reloaded; these changes take effect at the next restart", "settings", strings.Join(names, ", "))
	} else {
		logger.Info("configuration reloaded")
	}
	return next, nil
}

// drain stops the proxy the way Kubernetes expects: readiness turns false at once; clients are
// still accepted and served for shutdown_delay (while endpoints stop routing here); then the
// listeners close and open transactions get up to shutdown_timeout before the remaining clients
// are told 57P01. A second stop signal cuts it short.
func drain(ctx context.Context, cfg *config.Config, srv *proxy.Server, hs *health.Server, logger *slog.Logger, reason string, signals <-chan os.Signal) error {
	logger.Info("pgsidecar draining", "reason", reason, "shutdown_delay", cfg.ShutdownDelay, "shutdown_timeout", cfg.ShutdownTimeout)
	if hs != nil {
		hs.SetDraining()
	}
	forced := make(chan struct{})
	stopWatch := make(chan struct{})
	var wg sync.WaitGroup
	defer func() {
		close(stopWatch)
		wg.Wait()
	}()
	wg.Go(func() {
		for {
			select {
			case sig := <-signals:
				if sig == syscall.SIGHUP {
					continue // no reload while draining
				}
				logger.Warn("second stop signal: exiting without waiting for clients", "signal", sig.String())
				close(forced)
				return
			case <-stopWatch:
				return
			}
		}
	})

	if d := cfg.ShutdownDelay; d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-forced:
		}
		t.Stop()
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	go func() {
		select {
		case <-forced:
			cancel()
		case <-dctx.Done():
		}
	}()
	if err := srv.Shutdown(dctx); err != nil {
		logger.Warn("drain incomplete: remaining clients were told 57P01", "err", err)
	}
	if hs != nil {
		hctx, hcancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		if err := hs.Shutdown(hctx); err != nil {
			logger.Warn("http server shutdown", "err", err)
		}
		hcancel()
	}
	select {
	case <-forced:
		return errForced
	default:
		return nil
	}
}

// awaitWarmPools waits until every pool that exists (those of the configured routes, made at
// start) has opened a connection or seen its first dial fail, which it logs. It returns false
// if ctx ended first.
func awaitWarmPools(ctx context.Context, pools *pool.Set, logger *slog.Logger) bool {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	logged := make(map[string]bool)
	for {
		warm := true
		for _, st := range pools.Stats() {
			switch {
			case st.Open > st.Dialing:
			case st.DialErrors > 0:
				if !logged[st.Key] {
					logged[st.Key] = true
					p, _ := pools.Lookup(st.Key)
					var err error
					if p != nil {
						err = p.LastError()
					}
					logger.Warn("min_pool_size: the first server connection failed; starting anyway", "pool", st.Key, "err", err)
				}
			default:
				warm = false
			}
		}
		if warm {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// newProbers returns a prober for database_url ("default") and one for each configured route
// with its own pair (named "database/user"), all recording into one set of metrics.
func newProbers(cfg *config.Config, logger *slog.Logger, reg prometheus.Registerer) ([]*health.Prober, error) {
	var probers []*health.Prober
	metrics := health.NewProberMetrics(reg)
	add := func(name, dsn string) {
		probers = append(probers, health.NewProber(health.ProberOptions{
			Name:       name,
			ConnString: dsn,
			Timeout:    cfg.ConnectTimeout,
			Logger:     logger,
		}, metrics))
	}
	if cfg.DatabaseURL != "" {
		// pgconn would send load_balance_hosts to the server, which refuses it; validation
		// has checked the value already.
		probeDSN, _, _ := config.SplitLoadBalanceHosts(cfg.DatabaseURL)
		add("default", probeDSN)
	}
	ups, err := cfg.ConfiguredUpstreams()
	if err != nil {
		return nil, fmt.Errorf("configured routes: %w", err)
	}
	for _, up := range ups {
		if _, routed := cfg.Route(up.ClientDatabase, up.ClientUser); routed {
			add(up.ClientDatabase+"/"+up.ClientUser, up.ConnString)
		}
	}
	return probers, nil
}

func startLocalCluster(ctx context.Context, logger *slog.Logger) (*pgcluster.Cluster, error) {
	if err := pgcluster.Available(); err != nil {
		return nil, fmt.Errorf("no DATABASE_URL and no local PostgreSQL to start: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	c, err := pgcluster.Start(sctx, pgcluster.Options{Logger: logger})
	if err != nil {
		return nil, fmt.Errorf("start local postgresql: %w", err)
	}
	return c, nil
}

// warnUnverifiedUpstreams logs, in the production profile, each upstream reached over the
// network without verifying its server (sslmode below verify-full), and reports how many there
// are in pgsidecar_upstream_tls_unverified.
func warnUnverifiedUpstreams(cfg *config.Config, logger *slog.Logger, reg prometheus.Registerer) {
	names := cfg.UnverifiedUpstreams()
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "pgsidecar", Name: "upstream_tls_unverified",
		Help: "Upstreams the production profile reaches over the network with an sslmode below verify-full (the server is not verified).",
	})
	g.Set(float64(len(names)))
	reg.MustRegister(g)
	for _, name := range names {
		logger.Warn("upstream reached over the network without verifying the server: use sslmode=verify-full", "upstream", name)
	}
}
