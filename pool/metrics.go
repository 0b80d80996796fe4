package pool

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Collector exposes every pool of a Set as Prometheus metrics, read from Stat snapshots at
// scrape time so that the hot path pays nothing for them.
type Collector struct {
	set *Set

	servers, waiting, size       *prometheus.Desc
	acquires, waits, waitSeconds *prometheus.Desc
	dials, dialErrors, closes    *prometheus.Desc
	dialRetries, checkFailures   *prometheus.Desc
	idleDropped, retired         *prometheus.Desc
	transactions                 *prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a collector for set; register it on the caller's registry.
func NewCollector(set *Set) *Collector {
	labels := []string{"database", "user"}
	d := func(name, help string, extra ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName("pgsidecar", "pool", name), help, append(labels, extra...), nil)
	}
	return &Collector{
		set:         set,
		servers:     d("server_connections", "Server connections by state (idle, active).", "state"),
		waiting:     d("waiting_clients", "Clients waiting for a server connection."),
		size:        d("size", "Maximum server connections of the pool."),
		acquires:    d("acquires_total", "Server connections handed to clients."),
		waits:       d("waits_total", "Acquires that had to wait for a server connection."),
		waitSeconds: d("wait_seconds_total", "Total time clients spent waiting for a server connection."),
		dials:       d("dials_total", "Server connections dialled."),
		dialErrors:  d("dial_errors_total", "Server connection dials that failed."),
		closes:      d("server_closes_total", "Server connections closed."),
		dialRetries: d("dial_retries_total", "Server connection dials that retried a failed one."),
		checkFailures: d("check_failures_total",
			"Idle server connections found dead by the check before reuse (server_check_delay)."),
		idleDropped: d("idle_dropped_total", "Idle server connections closed at once after an upstream failure."),
		retired: d("server_retired_total",
			"Server connections retired because their address left the DNS answer or was retired by the proxy; closed at once when idle, else at release."),
		transactions: prometheus.NewDesc("pgsidecar_transactions_total",
			"Server connections handed back to the pool after a transaction in transaction mode, by upstream database and user.", labels, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.servers, c.waiting, c.size, c.acquires, c.waits, c.waitSeconds, c.dials, c.dialErrors, c.closes,
		c.dialRetries, c.checkFailures, c.idleDropped, c.retired, c.transactions} {
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
		t.Size += s.Size
		t.Idle += s.Idle
		t.InUse += s.InUse
		t.Waiting += s.Waiting
		t.Acquires += s.Acquires
		t.Waits += s.Waits
		t.WaitDuration += s.WaitDuration
		t.Dials += s.Dials
		t.DialErrors += s.DialErrors
		t.Closes += s.Closes
		t.DialRetries += s.DialRetries
		t.CheckFailures += s.CheckFailures
		t.IdleDropped += s.IdleDropped
		t.Retired += s.Retired
		t.Transactions += s.Transactions
	}
	for _, k := range order {
		s, db, user := sums[k], k.db, k.user
		ch <- prometheus.MustNewConstMetric(c.servers, prometheus.GaugeValue, float64(s.Idle), db, user, "idle")
		ch <- prometheus.MustNewConstMetric(c.servers, prometheus.GaugeValue, float64(s.InUse), db, user, "active")
		ch <- prometheus.MustNewConstMetric(c.waiting, prometheus.GaugeValue, float64(s.Waiting), db, user)
		ch <- prometheus.MustNewConstMetric(c.size, prometheus.GaugeValue, float64(s.Size), db, user)
		ch <- prometheus.MustNewConstMetric(c.acquires, prometheus.CounterValue, float64(s.Acquires), db, user)
		ch <- prometheus.MustNewConstMetric(c.waits, prometheus.CounterValue, float64(s.Waits), db, user)
		ch <- prometheus.MustNewConstMetric(c.waitSeconds, prometheus.CounterValue, s.WaitDuration.Seconds(), db, user)
		ch <- prometheus.MustNewConstMetric(c.dials, prometheus.CounterValue, float64(s.Dials), db, user)
		ch <- prometheus.MustNewConstMetric(c.dialErrors, prometheus.CounterValue, float64(s.DialErrors), db, user)
		ch <- prometheus.MustNewConstMetric(c.closes, prometheus.CounterValue, float64(s.Closes), db, user)
		ch <- prometheus.MustNewConstMetric(c.dialRetries, prometheus.CounterValue, float64(s.DialRetries), db, user)
		ch <- prometheus.MustNewConstMetric(c.checkFailures, prometheus.CounterValue, float64(s.CheckFailures), db, user)
		ch <- prometheus.MustNewConstMetric(c.idleDropped, prometheus.CounterValue, float64(s.IdleDropped), db, user)
		ch <- prometheus.MustNewConstMetric(c.retired, prometheus.CounterValue, float64(s.Retired), db, user)
		ch <- prometheus.MustNewConstMetric(c.transactions, prometheus.CounterValue, float64(s.Transactions), db, user)
	}
}
