package pool

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Collector exposes every pool of a Set as Prometheus metrics, read from Stat snapshots at
// scrape time so that the hot path pays nothing for them.
type Collector struct {
	set *Set

	servers, clients, size, minSize, maxWait *prometheus.Desc
	acquires, dials, dialErrors, dialRetries *prometheus.Desc
	checkFailures, idleDropped, retired      *prometheus.Desc
	closes, transactions, queries, bytes     *prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a collector for set; register it on the caller's registry.
func NewCollector(set *Set) *Collector {
	labels := []string{"database", "user"}
	d := func(name, help string, extra ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName("pgsidecar", "pool", name), help, append(labels, extra...), nil)
	}
	top := func(name, help string, extra ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName("pgsidecar", "", name), help, append(labels, extra...), nil)
	}
	return &Collector{
		set: set,
		servers: d("server_connections",
			"Server connections by state: active (a client's), idle (ready), used (idle, due for the check before reuse), tested (being checked), login (being dialled).", "state"),
		clients: d("client_connections",
			"Client connections by state: active (holding a server), waiting (for a server), idle.", "state"),
		size:        d("size", "Maximum server connections of the pool (pool_size)."),
		minSize:     d("min_size", "Server connections the pool keeps open (min_pool_size)."),
		maxWait:     d("max_wait_seconds", "How long the longest waiting client has waited for a server connection."),
		acquires:    d("acquires_total", "Server connections handed to clients."),
		dials:       d("dials_total", "Server connections dialled."),
		dialErrors:  d("dial_errors_total", "Server connection dials that failed."),
		dialRetries: d("dial_retries_total", "Server connection dials that retried a failed one."),
		checkFailures: d("check_failures_total",
			"Idle server connections found dead by the check before reuse (server_check_delay)."),
		idleDropped: d("idle_dropped_total", "Idle server connections closed at once after an upstream failure."),
		retired: d("server_retired_total",
			"Server connections retired because their address left the DNS answer or was retired by the proxy; closed at once when idle, else at release."),
		closes: d("server_closes_total",
			"Server connections closed, by reason: error, idle_timeout, lifetime, check_failed, retired, upstream_restart, resized, pool_closed.", "reason"),
		transactions: top("transactions_total",
			"Transactions completed on the pool's server connections (every ReadyForQuery outside a transaction), in both pool modes."),
		queries: top("queries_total", "Requests completed on the pool's server connections (one per ReadyForQuery)."),
		bytes: top("bytes_total",
			"Protocol bytes relayed, by direction: received (from clients) and sent (to clients).", "direction"),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.servers, c.clients, c.size, c.minSize, c.maxWait, c.acquires,
		c.dials, c.dialErrors, c.dialRetries, c.checkFailures, c.idleDropped, c.retired, c.closes,
		c.transactions, c.queries, c.bytes} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. Pools of the same database and user on different
// upstreams (a primary and a replica route, say) are summed, so labels stay unique.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	type labels struct{ db, user string }
	sums := make(map[labels]*Stat)
	var order []labels
	for _, s := range c.set.Stats() {
		k := labels{s.Database, s.User}
		t, ok := sums[k]
		if !ok {
			t = &Stat{}
			sums[k] = t
			order = append(order, k)
		}
		t.add(s)
	}
	gauge := func(d *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv...)
	}
	counter := func(d *prometheus.Desc, v uint64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), lv...)
	}
	for _, k := range order {
		s, db, user := sums[k], k.db, k.user
		gauge(c.servers, float64(s.InUse), db, user, "active")
		gauge(c.servers, float64(s.Idle-s.Used), db, user, "idle")
		gauge(c.servers, float64(s.Used), db, user, "used")
		gauge(c.servers, 0, db, user, "tested") // the check is a non-blocking peek, never a state
		gauge(c.servers, float64(s.Dialing), db, user, "login")
		active := min(s.InUse, s.Clients)
		gauge(c.clients, float64(active), db, user, "active")
		gauge(c.clients, float64(s.Waiting), db, user, "waiting")
		gauge(c.clients, float64(max(s.Clients-active-s.Waiting, 0)), db, user, "idle")
		gauge(c.size, float64(s.Size), db, user)
		gauge(c.minSize, float64(s.MinSize), db, user)
		gauge(c.maxWait, s.MaxWait.Seconds(), db, user)
		counter(c.acquires, s.Acquires, db, user)
		counter(c.dials, s.Dials, db, user)
		counter(c.dialErrors, s.DialErrors, db, user)
		counter(c.dialRetries, s.DialRetries, db, user)
		counter(c.checkFailures, s.CheckFailures, db, user)
		counter(c.idleDropped, s.IdleDropped, db, user)
		counter(c.retired, s.Retired, db, user)
		for r, n := range s.ClosesBy {
			counter(c.closes, n, db, user, CloseReason(r).String())
		}
		counter(c.transactions, s.Transactions, db, user)
		counter(c.queries, s.Queries, db, user)
		counter(c.bytes, s.Received, db, user, "received")
		counter(c.bytes, s.Sent, db, user, "sent")
	}
}

// add sums o into s, for pools that share labels.
func (s *Stat) add(o Stat) {
	s.Size += o.Size
	s.MinSize += o.MinSize
	s.Open += o.Open
	s.Idle += o.Idle
	s.Used += o.Used
	s.InUse += o.InUse
	s.Dialing += o.Dialing
	s.Waiting += o.Waiting
	s.Clients += o.Clients
	s.MaxWait = max(s.MaxWait, o.MaxWait)
	s.Acquires += o.Acquires
	s.Waits += o.Waits
	s.WaitDuration += o.WaitDuration
	s.Dials += o.Dials
	s.DialErrors += o.DialErrors
	s.Closes += o.Closes
	s.DialRetries += o.DialRetries
	s.CheckFailures += o.CheckFailures
	s.IdleDropped += o.IdleDropped
	s.Retired += o.Retired
	for i := range s.ClosesBy {
		s.ClosesBy[i] += o.ClosesBy[i]
	}
	s.Transactions += o.Transactions
	s.Queries += o.Queries
	s.Received += o.Received
	s.Sent += o.Sent
	s.XactTime += o.XactTime
	s.QueryTime += o.QueryTime
	s.StatementEvictions += o.StatementEvictions
}
