package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The binary must not link test code: the test harness, the testing package (which also
// registers its flags at init) or the modules only the deploy tests use. They would grow the
// binary, and test-only code would run in production.
func TestBinaryLinksNoTestCode(t *testing.T) {
	// go test puts its own toolchain first on PATH, so this asks the go command that builds
	// the binary under test.
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	forbidden := []string{
		"testing",
		"github.com/pgsidecar/pgsidecar/internal/pgtest",
		"go.uber.org/goleak",
		"github.com/lib/pq",
		"sigs.k8s.io/kustomize/",
		"k8s.io/",
		"github.com/prometheus-operator/",
		"github.com/prometheus/prometheus/",
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps listed only %q", deps)
	}
	for _, pkg := range deps {
		for _, f := range forbidden {
			if pkg == f || strings.HasPrefix(pkg, f+"/") || (strings.HasSuffix(f, "/") && strings.HasPrefix(pkg, f)) {
				t.Errorf("cmd/pgsidecar depends on %s (test-only: %s)", pkg, f)
			}
		}
	}
}
