package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/pgsidecar/pgsidecar/deploy"
	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

// scrape is one parse of /metrics.
type scrape map[string]*dto.MetricFamily

func scrapeMetrics(t *testing.T, url string) (scrape, string) {
	t.Helper()
	code, body := get(t, url)
	if code != 200 {
		t.Fatalf("/metrics = %d", code)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return families, body
}

// sum adds the values (counters, gauges; histogram sample counts) of name's series whose labels
// include match.
func (s scrape) sum(name string, match map[string]string) float64 {
	mf, ok := s[name]
	if !ok {
		return 0
	}
	var total float64
series:
	for _, m := range mf.GetMetric() {
		for k, v := range match {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == k && lp.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue series
			}
		}
		switch {
		case m.Counter != nil:
			total += m.GetCounter().GetValue()
		case m.Gauge != nil:
			total += m.GetGauge().GetValue()
		case m.Histogram != nil:
			total += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return total
}

// TestMetricsUnderLoad runs a real workload (more clients than pool_size, a session-mode route,
// a division by zero) and checks that the scraped metrics move as they must, that the whole
// exposition passes client_golang's linter, and that every metric the alert rules and the
// dashboard use is exported.
func TestMetricsUnderLoad(t *testing.T) {
	c := pgtest.Must(t, pgtest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.CreateDatabase(ctx, "sessdb"); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "pgsidecar.yaml")
	body := fmt.Sprintf(`
listen: ["127.0.0.1:0"]
http_listen: "127.0.0.1:0"
database_url: %q
pool_size: 2
routes:
  - database: sess
    user: postgres
    upstream_database: sessdb
    pool_mode: session
`, c.DSN("postgres"))
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	inst, _ := startInstance(t, []string{"--config", file}, nil)
	metricsURL := "http://" + inst.HTTPAddr.String() + "/metrics"
	url := func(db string) string {
		return fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable", inst.ProxyAddrs[0], db)
	}
	before, _ := scrapeMetrics(t, metricsURL)

	// 8 clients on a pool of 2: they queue.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			conn, err := pgx.Connect(ctx, url("postgres"))
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(context.Background())
			for range 10 {
				if _, err := conn.Exec(ctx, "select pg_sleep(0.005), repeat('x', 1000)"); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// A division by zero, sent to the client: class 22.
	conn, err := pgx.Connect(ctx, url("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = conn.Exec(ctx, "select 1/0")
	if pe, ok := errors.AsType[*pgconn.PgError](err); !ok || pe.Code != "22012" {
		t.Fatalf("select 1/0: %v", err)
	}
	conn.Close(ctx)
	// Session mode counts its transactions too.
	sess, err := pgx.Connect(ctx, url("sess"))
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := sess.Exec(ctx, "select 1"); err != nil {
			t.Fatal(err)
		}
	}
	sess.Close(ctx)

	// Sessions add their counts to their pool when they end, just after their clients leave.
	pool := map[string]string{"database": "postgres", "user": "postgres"}
	var after scrape
	var text string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		after, text = scrapeMetrics(t, metricsURL)
		if after.sum("pgsidecar_transactions_total", map[string]string{"database": "sessdb"})-before.sum("pgsidecar_transactions_total", map[string]string{"database": "sessdb"}) >= 3 ||
			time.Now().After(deadline) {
			break
		}
	}
	for _, m := range []struct {
		name  string
		match map[string]string
		min   float64
	}{
		{"pgsidecar_pool_wait_seconds", pool, 1},
		{"pgsidecar_transaction_duration_seconds", pool, 80},
		{"pgsidecar_query_duration_seconds", pool, 80},
		{"pgsidecar_transactions_total", pool, 80},
		{"pgsidecar_queries_total", pool, 80},
		{"pgsidecar_bytes_total", map[string]string{"database": "postgres", "direction": "received"}, 80 * 40},
		{"pgsidecar_bytes_total", map[string]string{"database": "postgres", "direction": "sent"}, 80 * 1000},
		{"pgsidecar_client_errors_total", map[string]string{"class": "22"}, 1},
		{"pgsidecar_transactions_total", map[string]string{"database": "sessdb"}, 3},
		{"pgsidecar_upstream_connect_seconds", pool, 2},
	} {
		if got := after.sum(m.name, m.match) - before.sum(m.name, m.match); got < m.min {
			t.Errorf("%s%v rose by %v, want at least %v", m.name, m.match, got, m.min)
		}
	}
	if got := after.sum("pgsidecar_client_errors_total", map[string]string{"class": "22"}) - before.sum("pgsidecar_client_errors_total", map[string]string{"class": "22"}); got != 1 {
		t.Errorf("class 22 errors rose by %v, want exactly 1", got)
	}

	// /api/health: seconds and snake_case, and advice naming the saturated pool.
	code, doc := get(t, "http://"+inst.HTTPAddr.String()+"/api/health")
	if code != 200 {
		t.Fatalf("/api/health = %d", code)
	}
	var h struct {
		Details struct {
			Profile         string   `json:"profile"`
			UptimeSeconds   float64  `json:"uptime_seconds"`
			Recommendations []string `json:"recommendations"`
			Pools           []struct {
				Database       string  `json:"database"`
				Waits          uint64  `json:"waits"`
				WaitSeconds    float64 `json:"wait_seconds"`
				MaxWaitSeconds float64 `json:"max_wait_seconds"`
			} `json:"pools"`
			Upstreams []struct {
				Name               string   `json:"name"`
				LastLatencySeconds *float64 `json:"last_latency_seconds"`
			} `json:"upstreams"`
		} `json:"details"`
	}
	if err := json.Unmarshal([]byte(doc), &h); err != nil {
		t.Fatalf("/api/health: %v\n%s", err, doc)
	}
	if h.Details.Profile != "local" || h.Details.UptimeSeconds <= 0 || len(h.Details.Pools) == 0 {
		t.Errorf("/api/health details: %s", doc)
	}
	if strings.Contains(doc, "WaitDuration") || strings.Contains(doc, "InUse") {
		t.Errorf("/api/health still shows Go field names: %s", doc)
	}
	advice := strings.Join(h.Details.Recommendations, "\n")
	if !strings.Contains(advice, "Pool postgres/postgres") || !strings.Contains(advice, "pool_size") {
		t.Errorf("recommendations %q do not name the saturated pool", h.Details.Recommendations)
	}

	problems, err := promlint.New(strings.NewReader(text)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}

	names, err := deploy.MetricNames()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		if !strings.Contains(text, "\n"+name+"{") && !strings.Contains(text, "\n"+name+" ") {
			t.Errorf("%s is used by the alert rules or the dashboard but not exported", name)
		}
	}
}
