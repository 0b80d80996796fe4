package health

import "github.com/prometheus/client_golang/prometheus"

const (
	metricsNamespace  = "pgsidecar"
	upstreamSubsystem = "upstream"
)

// ProberMetrics holds the upstream probing metrics, labelled by upstream
// (ProberOptions.Name):
//
//	pgsidecar_upstream_healthy{upstream}                        gauge, 1 healthy, 0 unhealthy or not checked yet
//	pgsidecar_upstream_check_duration_seconds{upstream}         histogram of check durations, failed ones included
//	pgsidecar_upstream_checks_total{upstream,result="ok|error"} counter of completed checks
//	pgsidecar_upstream_state_changes_total{upstream,state}      counter of transitions into state "healthy" or "unhealthy"
//
// Build it once with [NewProberMetrics] and share it among the probers.
type ProberMetrics struct {
	healthy      *prometheus.GaugeVec
	duration     *prometheus.HistogramVec
	checks       *prometheus.CounterVec
	stateChanges *prometheus.CounterVec
}

// NewProberMetrics creates the probing metrics and registers them on reg,
// which should be the private registry owned by cmd. A nil reg registers
// nothing. It panics if the metrics are already registered on reg.
func NewProberMetrics(reg prometheus.Registerer) *ProberMetrics {
	m := &ProberMetrics{
		healthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: prometheus.BuildFQName(metricsNamespace, upstreamSubsystem, "healthy"),
			Help: "Whether the upstream passes its health checks (1) or not, or has not been checked yet (0).",
		}, []string{"upstream"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    prometheus.BuildFQName(metricsNamespace, upstreamSubsystem, "check_duration_seconds"),
			Help:    "Duration of upstream health checks (connect, query, close), failed ones included.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"upstream"}),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: prometheus.BuildFQName(metricsNamespace, upstreamSubsystem, "checks_total"),
			Help: "Upstream health checks completed, by result (ok or error).",
		}, []string{"upstream", "result"}),
		stateChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: prometheus.BuildFQName(metricsNamespace, upstreamSubsystem, "state_changes_total"),
			Help: "Upstream health state changes, by the state entered (healthy or unhealthy).",
		}, []string{"upstream", "state"}),
	}
	if reg != nil {
		reg.MustRegister(m.healthy, m.duration, m.checks, m.stateChanges)
	}
	return m
}

// proberSeries are one upstream's children of the ProberMetrics vectors.
type proberSeries struct {
	healthy     prometheus.Gauge
	duration    prometheus.Observer
	ok, failed  prometheus.Counter
	toHealthy   prometheus.Counter
	toUnhealthy prometheus.Counter
}

// series creates (at zero, so that they are exported before the first
// check) and returns the series of upstream name.
func (m *ProberMetrics) series(name string) proberSeries {
	return proberSeries{
		healthy:     m.healthy.WithLabelValues(name),
		duration:    m.duration.WithLabelValues(name),
		ok:          m.checks.WithLabelValues(name, "ok"),
		failed:      m.checks.WithLabelValues(name, "error"),
		toHealthy:   m.stateChanges.WithLabelValues(name, "healthy"),
		toUnhealthy: m.stateChanges.WithLabelValues(name, "unhealthy"),
	}
}
