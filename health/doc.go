// Package health serves pgsidecar's operational HTTP endpoints: the three
// Kubernetes probes, a JSON status page and Prometheus metrics.
//
// # Endpoints
//
//   - GET /livez answers 200 "ok" whenever the process serves HTTP. It never
//     touches PostgreSQL: a database outage must not get the sidecar
//     restarted.
//   - GET /startupz answers 503 "not started" until [Server.SetStarted] is
//     called (the first pool warm-up finished), then 200 "ok".
//   - GET /readyz answers 503 with the reason as plain text while draining
//     ("draining"), before start-up finished ("not started"), or when
//     Options.Ready returns an error (its text, or "readiness check timed
//     out after 2s"); otherwise 200 "ok".
//   - GET /api/health answers 200 with a JSON [Report]: status, started,
//     draining, ready_error and the Options.Status snapshot under "details".
//   - GET /metrics serves Options.Gatherer in the Prometheus exposition
//     format; a failing collector is logged and the rest is still served.
//   - POST /quitquitquit (only with Options.EnableQuit) closes the channel
//     returned by [Server.QuitRequested], so a Job's sidecar can be told to
//     exit when its main container is done.
//
// Other methods on these paths get 405; HEAD is accepted wherever GET is.
//
// # Upstream probing
//
// A [Prober] checks one upstream every few seconds (connect, run a query,
// close) and keeps a healthy/unhealthy state with hysteresis: it starts
// unchecked (not healthy), the first check decides, then FailureThreshold
// consecutive failures turn it unhealthy and SuccessThreshold consecutive
// successes turn it healthy again. [ReadyWhen] turns probers into an
// Options.Ready function, so /readyz is false until the first check has
// succeeded and while an upstream is unhealthy. Liveness never depends on
// it. State changes are logged once (Warn when turning unhealthy) and
// exported through [ProberMetrics] as pgsidecar_upstream_* metrics. DSNs
// and error texts are redacted wherever they are shown.
//
// # Shutdown sequence
//
// On SIGTERM, cmd calls [Server.SetDraining] first, so readiness turns false
// while clients are still being served, then drains the proxy, and calls
// [Server.Shutdown] last so that probes and scrapes keep working during the
// drain.
//
// The package holds no global state: the registry, logger and callbacks are
// passed in through [Options].
//
// # Example
//
//	reg := prometheus.NewRegistry()
//	prober := health.NewProber(health.ProberOptions{
//		Name:       "default",
//		ConnString: databaseURL,
//		Logger:     logger,
//	}, health.NewProberMetrics(reg))
//	var wg sync.WaitGroup
//	pctx, stopProber := context.WithCancel(context.WithoutCancel(ctx))
//	wg.Go(func() { prober.Run(pctx) })
//	defer func() { stopProber(); wg.Wait() }()
//	hs := health.NewServer(health.Options{
//		Addr:     "127.0.0.1:9930",
//		Gatherer: reg,
//		Ready:    health.ReadyWhen(prober),
//		Status:   func() any { return pools.Stat() },
//		Logger:   logger,
//	})
//	if err := hs.Start(); err != nil {
//		return err
//	}
//	defer hs.Shutdown(context.Background())
//	// ... warm up pools ...
//	hs.SetStarted()
//	<-ctx.Done() // SIGTERM
//	hs.SetDraining()
//	// ... drain clients, then Shutdown ...
package health
