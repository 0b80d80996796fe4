package deploy

import (
	"embed"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"
)

// files are the monitoring assets whose queries Queries reads.
//
//go:embed prometheus/alerts.yaml grafana/pgsidecar.json
var files embed.FS

// grafanaVars stand in for the interval variables Grafana substitutes before a query reaches
// Prometheus; dashboard variables ($namespace, $pod) only appear inside label values.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h")

// Query is one PromQL expression of the alert rules or the dashboard.
type Query struct {
	Where string // the alert's name or the panel's title
	Expr  string
}

// Queries returns every PromQL expression of prometheus/alerts.yaml and grafana/pgsidecar.json,
// Grafana's interval variables replaced, so that tests can parse them and check their metrics
// against a live scrape.
func Queries() ([]Query, error) {
	var qs []Query
	doc, err := files.ReadFile("prometheus/alerts.yaml")
	if err != nil {
		return nil, err
	}
	var rule struct {
		Spec struct {
			Groups []struct {
				Rules []struct {
					Alert, Record, Expr string
				}
			}
		}
	}
	if err := yaml.Unmarshal(doc, &rule); err != nil {
		return nil, fmt.Errorf("alerts.yaml: %w", err)
	}
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			qs = append(qs, Query{Where: r.Alert + r.Record, Expr: r.Expr})
		}
	}
	data, err := files.ReadFile("grafana/pgsidecar.json")
	if err != nil {
		return nil, err
	}
	var dash struct {
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		return nil, fmt.Errorf("pgsidecar.json: %w", err)
	}
	var walk func([]panel)
	walk = func(panels []panel) {
		for _, p := range panels {
			for _, tg := range p.Targets {
				if tg.Expr != "" {
					qs = append(qs, Query{Where: "panel " + p.Title, Expr: grafanaVars.Replace(tg.Expr)})
				}
			}
			walk(p.Panels) // rows hold their panels when collapsed
		}
	}
	walk(dash.Panels)
	return qs, nil
}

// panel is the part of a Grafana panel that holds queries.
type panel struct {
	Title   string `json:"title"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

// MetricNames returns, sorted, the pgsidecar_ metric names the queries select.
func MetricNames() ([]string, error) {
	qs, err := Queries()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, q := range qs {
		expr, err := parser.ParseExpr(q.Expr)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", q.Where, err)
		}
		parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok && strings.HasPrefix(vs.Name, "pgsidecar_") {
				names = append(names, vs.Name)
			}
			return nil
		})
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}
