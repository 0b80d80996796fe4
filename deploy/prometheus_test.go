package deploy_test

import (
	"os"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/pgsidecar/pgsidecar/deploy"
)

// That the metrics the rules and the dashboard use are exported is checked against a live
// scrape in cmd/pgsidecar (TestMetricsUnderLoad); that they are valid PromQL is here.
func TestAlertRules(t *testing.T) {
	doc, err := os.ReadFile("prometheus/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rule, ok := decode(t, "alerts.yaml", doc).(*monitoringv1.PrometheusRule)
	if !ok {
		t.Fatal("alerts.yaml is not a PrometheusRule")
	}
	n := 0
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			n++
			name := r.Alert + r.Record
			if (r.Alert == "") == (r.Record == "") {
				t.Errorf("group %s: a rule needs exactly one of alert and record (%q, %q)", g.Name, r.Alert, r.Record)
			}
			if _, err := parser.ParseExpr(r.Expr.String()); err != nil {
				t.Errorf("%s: expr does not parse: %v\n%s", name, err, r.Expr.String())
			}
			if r.For != nil {
				if _, err := model.ParseDuration(string(*r.For)); err != nil {
					t.Errorf("%s: for: %v", name, err)
				}
			}
			if r.Alert != "" && r.Labels["severity"] == "" {
				t.Errorf("%s: no severity label", name)
			}
		}
	}
	if n == 0 {
		t.Fatal("alerts.yaml has no rules")
	}
}

func TestDashboardQueries(t *testing.T) {
	qs, err := deploy.Queries()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, q := range qs {
		if !strings.HasPrefix(q.Where, "panel ") {
			continue
		}
		n++
		if _, err := parser.ParseExpr(q.Expr); err != nil {
			t.Errorf("%s: expr does not parse: %v\n%s", q.Where, err, q.Expr)
		}
	}
	if n == 0 {
		t.Fatal("the dashboard has no queries")
	}
	names, err := deploy.MetricNames()
	if err != nil {
		t.Fatal(err)
	}
	if len(names) < 5 {
		t.Errorf("metric names %q: too few found", names)
	}
}
