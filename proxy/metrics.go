package proxy

import (
	"errors"
	"io"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/internal/retry"
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

	// Latency histograms by upstream database and user: the wait for a server (observed by
	// the pool, queued acquires only), transactions and requests (observed by sessions when a
	// transaction ends), and upstream connects (by the pool).
	waitSeconds, xactSeconds, querySeconds, connectSeconds *prometheus.HistogramVec
	// clientErrors counts ErrorResponses sent to clients by SQLSTATE class; the children of
	// the known classes are made up front, so that counting takes no lock.
	clientErrors   *prometheus.CounterVec
	errorsByClass  map[string]prometheus.Counter
	otherErrors    prometheus.Counter
	clientCloses   *prometheus.CounterVec
	statementCache *prometheus.CounterVec
	cacheHits      prometheus.Counter
	cacheMisses    prometheus.Counter
	cacheEvictions prometheus.Counter
}

// Classic buckets for a proxy's latencies: from a tenth of a millisecond (a cached server on
// loopback) to a minute. Native histograms are exported too, for scrapers that ask for them.
var (
	latencyBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
	connectBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
)

// histogram makes a HistogramVec by upstream database and user, classic and native.
func histogram(name, help string, buckets []float64) *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "pgsidecar", Name: name, Help: help, Buckets: buckets,
		NativeHistogramBucketFactor:     1.1,
		NativeHistogramMaxBucketNumber:  160,
		NativeHistogramMinResetDuration: time.Hour,
	}, []string{"database", "user"})
}

// sqlstateClasses are the SQLSTATE classes of PostgreSQL's errcodes.txt, plus "57" and the
// ones a proxy sends; any other class is counted as "other".
var sqlstateClasses = []string{"03", "08", "09", "0A", "0B", "0F", "0L", "0P", "0Z", "20", "21", "22", "23", "24", "25",
	"26", "27", "28", "2B", "2D", "2F", "34", "38", "39", "3B", "3D", "3F", "40", "42", "44", "53", "54", "55", "57",
	"58", "72", "F0", "HV", "P0", "XX"}

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
		Help: "Logins in progress for over a second closed at max_logins_in_progress to make room for a new connection.",
	})
	m.waitSeconds = histogram("pool_wait_seconds", "Time clients waited for a server connection, for acquires that had to queue.", latencyBuckets)
	m.xactSeconds = histogram("transaction_duration_seconds", "Transactions, from their first request to the ReadyForQuery that ends them, in both pool modes.", latencyBuckets)
	m.querySeconds = histogram("query_duration_seconds", "Requests, from their sending to their ReadyForQuery (pipelined requests: from the first to the last).", latencyBuckets)
	m.connectSeconds = histogram("upstream_connect_seconds", "Successful upstream connects, from dial to the end of login.", connectBuckets)
	m.clientErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "pgsidecar", Name: "client_errors_total",
		Help: "ErrorResponses sent to clients (the server's and the proxy's own), by SQLSTATE class (two characters; other for unknown classes).",
	}, []string{"class"})
	m.errorsByClass = make(map[string]prometheus.Counter, len(sqlstateClasses))
	for _, c := range sqlstateClasses {
		m.errorsByClass[c] = m.clientErrors.WithLabelValues(c)
	}
	m.otherErrors = m.clientErrors.WithLabelValues("other")
	m.clientCloses = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "pgsidecar", Name: "client_closes_total",
		Help: "Client connections closed, by reason: client (it left), cancel_request, login_failed, idle_timeout, idle_transaction_timeout, protocol_error, shutdown, server_error.",
	}, []string{"reason"})
	// Every reason exists from the start, so that rate() sees the first of each.
	for _, r := range []string{"client", "cancel_request", "login_failed", "idle_timeout", "idle_transaction_timeout", "protocol_error", "shutdown", "server_error"} {
		m.clientCloses.WithLabelValues(r)
	}
	m.statementCache = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "pgsidecar", Name: "prepared_statement_cache_total",
		Help: "Transaction mode: uses of a shared prepared statement on a server, by result: hit (prepared there already), miss (prepared first), eviction (closed to make room, max_prepared_statements).",
	}, []string{"result"})
	m.cacheHits = m.statementCache.WithLabelValues("hit")
	m.cacheMisses = m.statementCache.WithLabelValues("miss")
	m.cacheEvictions = m.statementCache.WithLabelValues("eviction")
	reg.MustRegister(m.clientsConnected, m.clientsTotal, m.pins, m.retries, m.panics, m.authFailures, m.loginsEvicted,
		m.waitSeconds, m.xactSeconds, m.querySeconds, m.connectSeconds, m.clientErrors, m.clientCloses, m.statementCache)
	return m
}

// poolObservers are the histograms of one pool's labels, kept by its sessions and its pool so
// that observing costs no label lookup. Nil fields when metrics are off.
type poolObservers struct {
	wait, xact, query, connect prometheus.Observer
}

// sessionObservers are the histograms of its pool's labels that a session observes.
type sessionObservers struct {
	xact, query prometheus.Observer
}

// sessionObserversFor returns a session's histograms: two label lookups, where observersFor
// makes four, once per login.
func (m *Metrics) sessionObserversFor(database, user string) sessionObservers {
	if m == nil {
		return sessionObservers{}
	}
	return sessionObservers{
		xact:  m.xactSeconds.WithLabelValues(database, user),
		query: m.querySeconds.WithLabelValues(database, user),
	}
}

func (m *Metrics) observersFor(database, user string) poolObservers {
	if m == nil {
		return poolObservers{}
	}
	return poolObservers{
		wait:    m.waitSeconds.WithLabelValues(database, user),
		xact:    m.xactSeconds.WithLabelValues(database, user),
		query:   m.querySeconds.WithLabelValues(database, user),
		connect: m.connectSeconds.WithLabelValues(database, user),
	}
}

// ForgetPool deletes the series of a database and user whose last pool is gone.
func (m *Metrics) ForgetPool(database, user string) {
	if m == nil {
		return
	}
	for _, h := range []*prometheus.HistogramVec{m.waitSeconds, m.xactSeconds, m.querySeconds, m.connectSeconds} {
		h.DeleteLabelValues(database, user)
	}
}

// clientError counts an ErrorResponse sent to a client.
func (m *Metrics) clientError(code string) {
	if m == nil {
		return
	}
	if len(code) >= 2 {
		if c, ok := m.errorsByClass[code[:2]]; ok {
			c.Inc()
			return
		}
	}
	m.otherErrors.Inc()
}

// clientClosed counts a client connection's end.
func (m *Metrics) clientClosed(reason string) {
	if m == nil {
		return
	}
	m.clientCloses.WithLabelValues(reason).Inc()
}

// statementCacheUse adds a session's prepared-statement cache counts.
func (m *Metrics) statementCacheUse(hits, misses, evictions uint64) {
	if m == nil {
		return
	}
	if hits > 0 {
		m.cacheHits.Add(float64(hits))
	}
	if misses > 0 {
		m.cacheMisses.Add(float64(misses))
	}
	if evictions > 0 {
		m.cacheEvictions.Add(float64(evictions))
	}
}

// closeReason names why a client's connection ended, for pgsidecar_client_closes_total.
func closeReason(loggedIn bool, err error) string {
	if !loggedIn {
		if err == nil {
			return "cancel_request" // the one kind of connection that ends its startup cleanly
		}
		return "login_failed"
	}
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, errTerminate) {
		return "client"
	}
	switch clientError(err).Code {
	case retry.CodeIdleSessionTimeout:
		return "idle_timeout"
	case retry.CodeIdleInTransactionTimeout:
		return "idle_transaction_timeout"
	case retry.CodeProtocolViolation, retry.CodeProgramLimitExceeded:
		return "protocol_error"
	case retry.CodeAdminShutdown:
		return "shutdown"
	}
	return "server_error"
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
