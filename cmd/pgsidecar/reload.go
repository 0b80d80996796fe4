package main

import (
	"github.com/prometheus/client_golang/prometheus"
)

// reloadMetrics count configuration reloads, as Prometheus counts its own.
type reloadMetrics struct {
	total       *prometheus.CounterVec
	lastSuccess prometheus.Gauge
}

func newReloadMetrics(reg prometheus.Registerer) *reloadMetrics {
	m := &reloadMetrics{
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pgsidecar", Name: "config_reloads_total",
			Help: "Configuration reloads (SIGHUP), by result: success or failure (the previous configuration stayed in force).",
		}, []string{"result"}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "pgsidecar", Name: "config_last_reload_success_timestamp_seconds",
			Help: "When the configuration in force was loaded (at start or by the last successful reload), in Unix seconds.",
		}),
	}
	// Both results exist from the start, so that rate() and alerts see the first failure.
	m.total.WithLabelValues("success")
	m.total.WithLabelValues("failure")
	m.lastSuccess.SetToCurrentTime()
	reg.MustRegister(m.total, m.lastSuccess)
	return m
}

func (m *reloadMetrics) succeeded() {
	m.total.WithLabelValues("success").Inc()
	m.lastSuccess.SetToCurrentTime()
}

func (m *reloadMetrics) failed() { m.total.WithLabelValues("failure").Inc() }
