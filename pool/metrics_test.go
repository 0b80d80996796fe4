package pool_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/pgsidecar/pgsidecar/pool"
)

// metricsPerPool is how many series the collector exports for each pool.
const metricsPerPool = 30

func TestCollector(t *testing.T) {
	defer leakCheck(t)()
	c := cluster(t)
	set := pool.NewSet(pool.SetOptions{})
	defer set.Close()
	col := pool.NewCollector(set)
	reg := prometheus.NewRegistry()
	reg.MustRegister(col)

	if n := testutil.CollectAndCount(col); n != 0 {
		t.Errorf("empty set: %d series, want 0", n)
	}

	wait := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "wait", Buckets: []float64{0.01, 1}})
	dial := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "dial", Buckets: []float64{0.01, 1}})
	p := join(t, set, pool.Config{
		Key:          "metrics/appdb/appuser",
		Database:     "appdb",
		User:         "appuser",
		ConnConfig:   connConfig(t, c, "postgres", appName()),
		Size:         3,
		MinSize:      1,
		WaitObserver: wait,
		DialObserver: dial,
	})
	c1, c2 := acquire(t, p), acquire(t, p)
	p.Release(c1)
	defer p.Release(c2)
	p.AddUsage(pool.Usage{Transactions: 3, Queries: 5, Received: 100, Sent: 2000})

	want := `
# HELP pgsidecar_pool_server_connections Server connections by state: active (a client's), idle (ready), used (idle, due for the check before reuse), tested (being checked), login (being dialled).
# TYPE pgsidecar_pool_server_connections gauge
pgsidecar_pool_server_connections{database="appdb",state="active",user="appuser"} 1
pgsidecar_pool_server_connections{database="appdb",state="idle",user="appuser"} 0
pgsidecar_pool_server_connections{database="appdb",state="login",user="appuser"} 0
pgsidecar_pool_server_connections{database="appdb",state="tested",user="appuser"} 0
pgsidecar_pool_server_connections{database="appdb",state="used",user="appuser"} 1
# HELP pgsidecar_pool_client_connections Client connections by state: active (holding a server), waiting (for a server), idle.
# TYPE pgsidecar_pool_client_connections gauge
pgsidecar_pool_client_connections{database="appdb",state="active",user="appuser"} 1
pgsidecar_pool_client_connections{database="appdb",state="idle",user="appuser"} 0
pgsidecar_pool_client_connections{database="appdb",state="waiting",user="appuser"} 0
# HELP pgsidecar_pool_acquires_total Server connections handed to clients.
# TYPE pgsidecar_pool_acquires_total counter
pgsidecar_pool_acquires_total{database="appdb",user="appuser"} 2
# HELP pgsidecar_pool_size Maximum server connections of the pool (pool_size).
# TYPE pgsidecar_pool_size gauge
pgsidecar_pool_size{database="appdb",user="appuser"} 3
# HELP pgsidecar_pool_min_size Server connections the pool keeps open (min_pool_size).
# TYPE pgsidecar_pool_min_size gauge
pgsidecar_pool_min_size{database="appdb",user="appuser"} 1
# HELP pgsidecar_pool_dials_total Server connections dialled.
# TYPE pgsidecar_pool_dials_total counter
pgsidecar_pool_dials_total{database="appdb",user="appuser"} 2
# HELP pgsidecar_transactions_total Transactions completed on the pool's server connections (every ReadyForQuery outside a transaction), in both pool modes.
# TYPE pgsidecar_transactions_total counter
pgsidecar_transactions_total{database="appdb",user="appuser"} 3
# HELP pgsidecar_queries_total Requests completed on the pool's server connections (one per ReadyForQuery).
# TYPE pgsidecar_queries_total counter
pgsidecar_queries_total{database="appdb",user="appuser"} 5
# HELP pgsidecar_bytes_total Protocol bytes relayed, by direction: received (from clients) and sent (to clients).
# TYPE pgsidecar_bytes_total counter
pgsidecar_bytes_total{database="appdb",direction="received",user="appuser"} 100
pgsidecar_bytes_total{database="appdb",direction="sent",user="appuser"} 2000
`
	names := []string{
		"pgsidecar_pool_server_connections", "pgsidecar_pool_client_connections", "pgsidecar_pool_acquires_total",
		"pgsidecar_pool_size", "pgsidecar_pool_min_size", "pgsidecar_pool_dials_total",
		"pgsidecar_transactions_total", "pgsidecar_queries_total", "pgsidecar_bytes_total",
	}
	// The released connection counts as used: with the default CheckDelay (0) it is checked
	// at its next acquire.
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(col); n != metricsPerPool {
		t.Errorf("one pool: %d series, want %d", n, metricsPerPool)
	}
	if got := testutil.CollectAndCount(dial); got != 1 {
		t.Errorf("dial histogram: %d series", got)
	}
	if n := histogramCount(t, dial); n != 2 {
		t.Errorf("dial observations %d, want 2 (two connections dialled)", n)
	}

	// A waiter shows up as a waiting client and in max_wait_seconds, and its wait in the
	// wait histogram.
	c3 := acquire(t, p) // pool full: c2, c3 and the idle c1 taken
	c4 := acquire(t, p)
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := p.Acquire(ctx)
		if err == nil {
			p.Release(c)
		}
		done <- err
	}()
	waitWaiting(t, p, 1)
	time.Sleep(20 * time.Millisecond)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP pgsidecar_pool_client_connections Client connections by state: active (holding a server), waiting (for a server), idle.
# TYPE pgsidecar_pool_client_connections gauge
pgsidecar_pool_client_connections{database="appdb",state="active",user="appuser"} 1
pgsidecar_pool_client_connections{database="appdb",state="idle",user="appuser"} 0
pgsidecar_pool_client_connections{database="appdb",state="waiting",user="appuser"} 1
`), "pgsidecar_pool_client_connections"); err != nil {
		t.Error(err)
	}
	if v := testutil.ToFloat64(gatherOne(t, reg, "pgsidecar_pool_max_wait_seconds")); v < 0.02 {
		t.Errorf("max_wait_seconds %v while a client waits, want >= 0.02", v)
	}
	p.Release(c3)
	if err := <-done; err != nil {
		t.Fatalf("waiter: %v", err)
	}
	p.Release(c4)
	if n := histogramCount(t, wait); n != 1 {
		t.Errorf("wait observations %d, want 1", n)
	}

	// A second pool adds its own series.
	join(t, set, pool.Config{Key: "metrics/otherdb/appuser", Database: "otherdb", User: "appuser",
		ConnConfig: connConfig(t, c, "postgres", appName()), Size: 1})
	if n := testutil.CollectAndCount(col); n != 2*metricsPerPool {
		t.Errorf("two pools: %d series, want %d", n, 2*metricsPerPool)
	}

	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, pr := range problems {
		t.Errorf("lint: %s: %s", pr.Metric, pr.Text)
	}
}

// histogramCount returns how many observations h has.
func histogramCount(t *testing.T, h prometheus.Histogram) uint64 {
	t.Helper()
	var m dto.Metric
	if err := h.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount()
}

// gatherOne returns a collector for the single series of a gathered metric family, for
// testutil.ToFloat64.
func gatherOne(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		if len(mf.GetMetric()) != 1 {
			t.Fatalf("%s has %d series, want 1", name, len(mf.GetMetric()))
		}
		m := mf.GetMetric()[0]
		var v float64
		switch {
		case m.GetCounter() != nil:
			v = m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			v = m.GetGauge().GetValue()
		}
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "value", Help: "value"}, func() float64 { return v })
	}
	t.Fatalf("no metric %s", name)
	return nil
}

// closedPortConfig returns a ConnConfig whose dials are refused.
func closedPortConfig(t *testing.T) *pgconn.Config {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cc, err := pgconn.ParseConfig(fmt.Sprintf("postgres://appuser@127.0.0.1:%d/appdb?sslmode=disable", port))
	if err != nil {
		t.Fatal(err)
	}
	return cc
}

// TestCollectorSameDatabaseUserTwoUpstreams: two routes may serve the same upstream database
// and user from different upstreams (a primary and a replica, say), which gives two pools with
// different keys and the same labels. A scrape must still succeed.
func TestCollectorSameDatabaseUserTwoUpstreams(t *testing.T) {
	defer leakCheck(t)()
	set := pool.NewSet(pool.SetOptions{})
	defer set.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(pool.NewCollector(set))

	cc := closedPortConfig(t)
	join(t, set, pool.Config{Key: "host=primary dbname=appdb user=appuser", Database: "appdb", User: "appuser", ConnConfig: cc, Size: 4})
	join(t, set, pool.Config{Key: "host=replica dbname=appdb user=appuser", Database: "appdb", User: "appuser", ConnConfig: cc, Size: 2})
	if _, err := reg.Gather(); err != nil {
		t.Errorf("Gather with two pools for appdb/appuser: %v", err)
	}
}

// TestCollectorAcquiresCountsHanded: acquires_total is documented as "Server connections handed
// to clients", so an Acquire that hands out nothing (dial refused, pool closed) must not count.
func TestCollectorAcquiresCountsHanded(t *testing.T) {
	defer leakCheck(t)()
	set := pool.NewSet(pool.SetOptions{})
	defer set.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(pool.NewCollector(set))

	p := join(t, set, pool.Config{Key: "refused", Database: "appdb", User: "appuser", ConnConfig: closedPortConfig(t), Size: 1,
		Retry: retry.Backoff{MaxAttempts: 1}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := p.Acquire(ctx); err == nil {
		t.Fatal("Acquire on a refused port succeeded")
	}
	p.Close()
	if _, err := p.Acquire(ctx); !errors.Is(err, pool.ErrClosed) {
		t.Fatalf("Acquire after Close: %v, want ErrClosed", err)
	}
	if v := testutil.ToFloat64(gatherOne(t, reg, "pgsidecar_pool_acquires_total")); v != 0 {
		t.Errorf("acquires_total %v after two failed acquires, want 0 (no connection was handed out)", v)
	}
	if v := testutil.ToFloat64(gatherOne(t, reg, "pgsidecar_pool_dial_errors_total")); v != 1 {
		t.Errorf("dial_errors_total %v, want 1", v)
	}
}
