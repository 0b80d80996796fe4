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
//	hs := health.NewServer(health.Options{
//		Addr:     "127.0.0.1:9930",
//		Gatherer: reg,
//		Ready:    func(ctx context.Context) error { return pools.Ready(ctx) },
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
