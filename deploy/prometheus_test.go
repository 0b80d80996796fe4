package deploy_test

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"
)

// Whether the metrics the rules and the dashboard use are exported is not checked here (issue
// 10); that they are valid PromQL is.
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

// grafanaVars stand in for the interval variables Grafana substitutes before a query reaches
// Prometheus; dashboard variables ($namespace, $pod) only appear inside label values here.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h")

func TestDashboardQueries(t *testing.T) {
	data, err := os.ReadFile("grafana/pgsidecar.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatal(err)
	}
	n := 0
	var walk func([]panel)
	walk = func(panels []panel) {
		for _, p := range panels {
			for _, tg := range p.Targets {
				if tg.Expr == "" {
					continue
				}
				n++
				if _, err := parser.ParseExpr(grafanaVars.Replace(tg.Expr)); err != nil {
					t.Errorf("panel %q: expr does not parse: %v\n%s", p.Title, err, tg.Expr)
				}
			}
			walk(p.Panels) // rows hold their panels when collapsed
		}
	}
	walk(dash.Panels)
	if n == 0 {
		t.Fatal("the dashboard has no queries")
	}
}

// panel is the part of a Grafana panel that holds queries.
type panel struct {
	Title   string `json:"title"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}
