package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the proxy's client-side metrics. A nil *Metrics records nothing.
type Metrics struct {
	clientsConnected prometheus.Gauge
	clientsTotal     prometheus.Counter
	pins             *prometheus.CounterVec
	retries          *prometheus.CounterVec
	panics           prometheus.Counter
	authFailures     prometheus.Counter
	loginsEvicted    prometheus.Counter
}

// NewMetrics creates the proxy's metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		clientsConnected: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "pgsidecar", Name: "client_connections",
			Help: "Client connections currently open (logging in or logged in).",
		}),
		clientsTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "pgsidecar", Name: "client_connections_total",
			Help: "Client connections accepted.",
		}),
	}
	m.pins = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "pgsidecar", Name: "client_pins_total",
		Help: "Transaction-mode clients pinned to one server connection for the rest of their session, by reason.",
	}, []string{"reason"})
	m.retries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "pgsidecar", Name: "retries_total",
		Help: "Requests the proxy ran again on the client's behalf, by reason.",
	}, []string{"reason"})
	m.panics = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "pgsidecar", Name: "panics_total",
		Help: "Panics recovered in client sessions; each closed its session alone. Any is a bug worth reporting.",
	})
	m.authFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "pgsidecar", Name: "auth_failures_total",
		Help: "Client logins refused for a wrong password or an unknown user (repeated ones from one address are answered ever more slowly).",
	})
	m.loginsEvicted = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "pgsidecar", Name: "logins_evicted_total",
		Help: "Connections closed or refused at max_logins_in_progress: a login in progress for over a second closed to make room, or a new connection refused (53300) when none was that old.",
	})
	reg.MustRegister(m.clientsConnected, m.clientsTotal, m.pins, m.retries, m.panics, m.authFailures, m.loginsEvicted)
	return m
}

func (m *Metrics) clientConnected() {
	if m == nil {
		return
	}
	m.clientsConnected.Inc()
	m.clientsTotal.Inc()
}

func (m *Metrics) clientDisconnected() {
	if m == nil {
		return
	}
	m.clientsConnected.Dec()
}

func (m *Metrics) pinned(reason string) {
	if m == nil {
		return
	}
	m.pins.WithLabelValues(reason).Inc()
}

func (m *Metrics) retried(reason string) {
	if m == nil {
		return
	}
	m.retries.WithLabelValues(reason).Inc()
}

func (m *Metrics) panicked() {
	if m == nil {
		return
	}
	m.panics.Inc()
}

func (m *Metrics) authFailed() {
	if m == nil {
		return
	}
	m.authFailures.Inc()
}

func (m *Metrics) loginEvicted() {
	if m == nil {
		return
	}
	m.loginsEvicted.Inc()
}
