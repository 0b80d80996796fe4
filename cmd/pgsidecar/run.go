package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/pflag"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/health"
	"github.com/pgsidecar/pgsidecar/internal/pgcluster"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// Exit codes.
const (
	exitOK       = 0
	exitFailure  = 1
	exitBadUsage = 2
)

// usage lists the command lines pgsidecar accepts.
const usage = "pgsidecar [flags] | pgsidecar config check|print [flags]"

// drainTimeout bounds how long a shutdown waits for clients to finish their transactions.
const drainTimeout = 30 * time.Second

// running describes a started instance; tests receive it to find the bound addresses.
type running struct {
	ProxyAddrs []net.Addr
	HTTPAddr   net.Addr
}

// run is the whole program: it returns the exit code. started, if not nil, receives the
// instance once it serves.
func run(ctx context.Context, args, environ []string, stdout, stderr io.Writer, started chan<- running) int {
	if len(args) > 0 && args[0] == "config" {
		return configCommand(args[1:], environ, stdout, stderr)
	}
	cfg, code := loadConfig("pgsidecar", args, environ, stderr)
	if cfg == nil {
		return code
	}
	logger := newLogger(cfg, stderr)
	// Go's default GOMAXPROCS is the CPU count, or a container's CPU limit below it: more
	// threads than that would only be throttled.
	cpuLimit := runtime.GOMAXPROCS(0)
	if cfg.MaxProcs > 0 {
		runtime.GOMAXPROCS(cfg.MaxProcs)
	}
	if err := serve(ctx, cfg, logger, stdout, started, cpuLimit); err != nil {
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
	fs := config.NewFlagSet(name)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, exitOK
		}
		fmt.Fprintf(stderr, "%s: %v; usage: %s\n", name, err, usage)
		return nil, exitBadUsage
	}
	// pflag keeps positional arguments for the caller; none is meaningful here, and a
	// misspelt subcommand must not start a proxy with the default configuration.
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q; usage: %s\n", name, fs.Arg(0), usage)
		return nil, exitBadUsage
	}
	cfg, err := config.Load(fs, nil, environ)
	if err != nil {
		fmt.Fprintf(stderr, "pgsidecar: invalid configuration:\n%v\n", err)
		return nil, exitBadUsage
	}
	return cfg, exitOK
}

func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// serve wires the packages together and runs until ctx is done or /quitquitquit is called.
func serve(ctx context.Context, cfg *config.Config, logger *slog.Logger, stdout io.Writer, started chan<- running, cpuLimit int) error {
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
		fmt.Fprintf(stdout, "pgsidecar: no DATABASE_URL given, started a disposable PostgreSQL on 127.0.0.1:%d (removed on exit)\n", cluster.Port())
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	pools := pool.NewSet(pool.SetOptions{MaxPools: cfg.MaxPools})
	defer pools.Close()
	reg.MustRegister(pool.NewCollector(pools))
	warnUnverifiedUpstreams(cfg, logger, reg)

	// Upstream health probing: readiness follows the default upstream. The
	// interval is the prober's 5s default, not server_check_delay (that one
	// is about re-checking idle pool connections). The prober keeps running
	// while draining so /api/health stays current; it is stopped last.
	var prober *health.Prober
	if cfg.DatabaseURL != "" {
		// pgconn would send load_balance_hosts to the server, which refuses it; validation
		// has checked the value already.
		probeDSN, _, _ := config.SplitLoadBalanceHosts(cfg.DatabaseURL)
		prober = health.NewProber(health.ProberOptions{
			Name:       "default",
			ConnString: probeDSN,
			Timeout:    cfg.ConnectTimeout,
			Logger:     logger,
		}, health.NewProberMetrics(reg))
		pctx, stopProber := context.WithCancel(context.WithoutCancel(ctx))
		var wg sync.WaitGroup
		wg.Go(func() { prober.Run(pctx) })
		defer func() {
			stopProber()
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

	srv, err := proxy.New(proxy.Options{Config: cfg, Pools: pools, Logger: logger, Metrics: proxy.NewMetrics(reg)})
	if err != nil {
		return err
	}
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
			Status:   func() any { return serveStatus(pools, prober) },
			Logger:   logger,
		}
		if prober != nil {
			hopts.Ready = health.ReadyWhen(prober)
		}
		hs = health.NewServer(hopts)
		if err := hs.Start(); err != nil {
			_ = srv.Shutdown(ctx)
			return fmt.Errorf("start http server: %w", err)
		}
		inst.HTTPAddr = hs.Addr()
		quit = hs.QuitRequested()
		hs.SetStarted()
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

	select {
	case <-ctx.Done():
	case <-quit:
	}
	logger.Info("pgsidecar shutting down", "drain_timeout", drainTimeout)
	if hs != nil {
		hs.SetDraining()
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), drainTimeout)
	defer cancel()
	if err := srv.Shutdown(dctx); err != nil {
		logger.Warn("drain incomplete", "err", err)
	}
	if hs != nil {
		if err := hs.Shutdown(dctx); err != nil {
			logger.Warn("http server shutdown", "err", err)
		}
	}
	return nil
}

// status is the "details" document of /api/health.
type status struct {
	Pools     []pool.Stat          `json:"pools"`
	Upstreams []health.ProbeStatus `json:"upstreams,omitempty"`
}

// serveStatus snapshots pools and prober (nil when there is none).
func serveStatus(pools *pool.Set, prober *health.Prober) status {
	st := status{Pools: pools.Stats()}
	if prober != nil {
		st.Upstreams = []health.ProbeStatus{prober.Status()}
	}
	return st
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
