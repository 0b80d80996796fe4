package config

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
)

var updateREADME = flag.Bool("update-readme", false, "rewrite README.md's key table from the settings' docs")

// keysTable is README's key table, generated from settings and recordDocs.
func keysTable() string {
	var b strings.Builder
	b.WriteString("| YAML key | Env | Flag | Default | Meaning; zero value |\n|---|---|---|---|---|\n")
	records := func() {
		for _, r := range recordDocs {
			fmt.Fprintf(&b, "| `%s` | %s | — | none | %s |\n", r.name, r.env, r.doc)
		}
	}
	for i, s := range settings {
		if strings.HasPrefix(s.name, "tls.") && !strings.HasPrefix(settings[i-1].name, "tls.") {
			records()
		}
		env := "`" + strings.TrimPrefix(s.envName(), EnvPrefix) + "`"
		if s.name == "database_url" {
			env += ", or plain `DATABASE_URL` (the prefixed one wins)"
		}
		fmt.Fprintf(&b, "| `%s` | %s | `--%s` | %s | %s |\n", s.name, env, s.flagName(), s.defaultDoc(), s.doc)
	}
	return b.String()
}

// TestREADMEKeys: README's key table is the settings' own documentation. After changing a
// setting, run `go test ./config -run TestREADMEKeys -update-readme`.
func TestREADMEKeys(t *testing.T) {
	const path = "../README.md"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	readme := string(data)
	start := strings.Index(readme, "| YAML key | Env | Flag |")
	if start < 0 {
		t.Fatal("README.md has no key table")
	}
	end := start
	for end < len(readme) && readme[end] == '|' {
		nl := strings.IndexByte(readme[end:], '\n')
		if nl < 0 {
			end = len(readme)
			break
		}
		end += nl + 1
	}
	want := keysTable()
	if got := readme[start:end]; got != want {
		if *updateREADME {
			if err := os.WriteFile(path, []byte(readme[:start]+want+readme[end:]), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		gotLines, wantLines := strings.Split(got, "\n"), strings.Split(want, "\n")
		for i := range max(len(gotLines), len(wantLines)) {
			var g, w string
			if i < len(gotLines) {
				g = gotLines[i]
			}
			if i < len(wantLines) {
				w = wantLines[i]
			}
			if g != w {
				t.Errorf("README.md's key table differs from the settings at line %d:\nREADME:   %s\nsettings: %s\n(run go test ./config -run TestREADMEKeys -update-readme)", i+1, g, w)
				break
			}
		}
	}
}
