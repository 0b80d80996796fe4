package main

import (
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/health"
)

// buildVersion returns the module version and VCS revision the binary was built from
// ("(devel)" and "unknown" when the build did not record them).
func buildVersion() (version, revision string) {
	version, revision = "(devel)", "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				revision = s.Value
			}
		}
	}
	return version, revision
}

// registerProcessInfo registers pgsidecar_build_info.
func registerProcessInfo(reg prometheus.Registerer) {
	version, revision := buildVersion()
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "pgsidecar", Name: "build_info",
		Help: "Always 1; the labels say which build is running.",
	}, []string{"version", "revision", "goversion"})
	info.WithLabelValues(version, revision, runtime.Version()).Set(1)
	reg.MustRegister(info)
}

// registerUp registers pgsidecar_up: 1 while every probed upstream is healthy (or none is
// probed), else 0, as pgbouncer_exporter's pgbouncer_up says whether PgBouncer answers.
func registerUp(reg prometheus.Registerer, probers []*health.Prober) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "pgsidecar", Name: "up",
		Help: "1 while every probed upstream is healthy (the application can reach PostgreSQL through this pgsidecar), else 0.",
	}, func() float64 {
		for _, p := range probers {
			if !p.Healthy() {
				return 0
			}
		}
		return 1
	}))
}
