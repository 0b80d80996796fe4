package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

// startInstance runs the program in-process (no fork) with args and env, and returns what it
// bound plus a stop function that waits for the exit code.
func startInstance(t *testing.T, args, env []string) (running, func() int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan running, 1)
	code := make(chan int, 1)
	var stdout, stderr bytes.Buffer
	go func() { code <- run(ctx, args, env, &stdout, &stderr, started, nil) }()
	select {
	case inst := <-started:
		stopped := false
		stop := func() int {
			if stopped {
				return 0
			}
			stopped = true
			cancel()
			select {
			case c := <-code:
				return c
			case <-time.After(60 * time.Second):
				t.Fatal("pgsidecar did not stop within 60s")
				return -1
			}
		}
		t.Cleanup(func() { stop() })
		return inst, stop
	case c := <-code:
		cancel()
		t.Fatalf("pgsidecar exited with %d before serving\nstdout: %s\nstderr: %s", c, stdout.String(), stderr.String())
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("pgsidecar did not start within 60s")
	}
	return running{}, nil
}

func TestEndToEndPgbench(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	c := pgtest.Must(t, pgtest.Options{Settings: map[string]string{"max_connections": "100"}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := c.CreateDatabase(ctx, "bench"); err != nil {
		t.Fatal(err)
	}
	pgbench := filepath.Join(c.BinDir(), "pgbench")
	psql := filepath.Join(c.BinDir(), "psql")

	inst, stop := startInstance(t, []string{
		"--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
		"--pool-size", "10", "--log-level", "warn",
	}, []string{"DATABASE_URL=" + c.DSN("bench")})
	addr := inst.ProxyAddrs[0].String()
	host, port, _ := strings.Cut(addr, ":")
	url := fmt.Sprintf("postgres://postgres@%s/bench?sslmode=disable", addr)

	out, err := exec.CommandContext(ctx, pgbench, "-i", "-s", "2", "-q", url).CombinedOutput()
	if err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	// Select-only and tpcb-like, with the simple protocol at 64 clients (issue 2) and with
	// prepared statements at 32 clients (issue 3: transaction mode keeps them working).
	for _, mode := range [][]string{{"-c", "64", "-S"}, {"-c", "64"}, {"-c", "32", "-M", "prepared", "-S"}, {"-c", "32", "-M", "prepared"}} {
		args := append([]string{"-n", "-j", "2", "-T", "10", "-h", host, "-p", port, "-U", "postgres"}, mode...)
		args = append(args, "bench")
		out, err := exec.CommandContext(ctx, pgbench, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("pgbench %v: %v\n%s", mode, err, out)
		}
		failed := regexp.MustCompile(`number of failed transactions: (\d+)`).FindSubmatch(out)
		processed := regexp.MustCompile(`number of transactions actually processed: (\d+)`).FindSubmatch(out)
		if failed == nil || processed == nil {
			t.Fatalf("pgbench %v: unexpected output\n%s", mode, out)
		}
		if string(failed[1]) != "0" {
			t.Errorf("pgbench %v: %s failed transactions\n%s", mode, failed[1], out)
		}
		if n, _ := strconv.Atoi(string(processed[1])); n < 100 {
			t.Errorf("pgbench %v: only %d transactions processed", mode, n)
		}
		t.Logf("pgbench %v: %s", mode, regexp.MustCompile(`tps = [0-9.]+`).Find(out))
	}

	// psql through the proxy sees the pgbench data.
	out, err = exec.CommandContext(ctx, psql, "-X", "-A", "-t", "-c", "select count(*) from pgbench_branches", url).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "2" {
		t.Fatalf("psql: %v %q", err, out)
	}

	// Health endpoints and metrics.
	base := "http://" + inst.HTTPAddr.String()
	if code, body := get(t, base+"/readyz"); code != 200 {
		t.Errorf("/readyz = %d %q", code, body)
	}
	code, metrics := get(t, base+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics = %d", code)
	}
	for _, want := range []string{
		`pgsidecar_pool_server_connections{database="bench",state="idle",user="postgres"}`,
		`pgsidecar_transactions_total{database="bench",user="postgres"}`,
		`pgsidecar_client_connections_total`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	m := regexp.MustCompile(`(?m)^pgsidecar_pool_dials_total\{database="bench",user="postgres"\} (\d+)`).FindStringSubmatch(metrics)
	if m == nil {
		t.Fatalf("no dials metric in\n%s", metrics)
	}
	if n, _ := strconv.Atoi(m[1]); n < 1 || n > 10 {
		t.Errorf("dials = %d, want 1..10 (pool_size 10, 64 clients)", n)
	}
	if code := stop(); code != exitOK {
		t.Fatalf("exit code %d", code)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestConfigSubcommands(t *testing.T) {
	var out, errOut bytes.Buffer
	env := []string{"DATABASE_URL=postgres://app:s3cret@db.example:5432/app", "PGSIDECAR_POOL_SIZE=7"}
	if code := run(context.Background(), []string{"config", "print"}, env, &out, &errOut, nil, nil); code != exitOK {
		t.Fatalf("config print: exit %d: %s", code, errOut.String())
	}
	if strings.Contains(out.String(), "s3cret") {
		t.Fatalf("config print leaks the password:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "pool_size: 7") {
		t.Fatalf("config print lacks pool_size 7:\n%s", out.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"config", "check"}, env, &out, &errOut, nil, nil); code != exitOK {
		t.Fatalf("config check: exit %d: %s", code, errOut.String())
	}
	errOut.Reset()
	bad := []string{"PGSIDECAR_POOL_MODE=bogus", "PGSIDECAR_POOL_SIZE=0"}
	if code := run(context.Background(), []string{"config", "check"}, bad, &out, &errOut, nil, nil); code != exitBadUsage {
		t.Fatalf("config check of bad config: exit %d, want %d", code, exitBadUsage)
	}
	for _, want := range []string{"pool_mode", "pool_size"} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("error output lacks %q:\n%s", want, errOut.String())
		}
	}
	// A raw '@' in a URL's password: refused, with the advice, and no part of the password.
	out.Reset()
	errOut.Reset()
	rawAt := []string{"DATABASE_URL=postgres://app:s3cr@tPass@db/app", "PGSIDECAR_PROFILE=production"}
	if code := run(context.Background(), []string{"config", "check"}, rawAt, &out, &errOut, nil, nil); code != exitBadUsage {
		t.Fatalf("config check of a raw '@' URL: exit %d, want %d", code, exitBadUsage)
	}
	if got := out.String() + errOut.String(); !strings.Contains(got, "%40") || strings.Contains(got, "s3cr") || strings.Contains(got, "tPass") {
		t.Errorf("config check output for a raw '@' URL:\n%s", got)
	}
}

// A misspelt subcommand or a stray argument must stop with a usage error, not start a proxy
// with the default configuration (README: exit codes).
func TestStrayArguments(t *testing.T) {
	for _, args := range [][]string{
		{"frob"},
		{"--pool-size", "5", "frob"},
		{"--", "frob"},
		{"config", "check", "frob"},
		{"config", "print", "--pool-size", "5", "frob"},
		{"config", "frob"},
		{"config"},
		{"--no-such-flag"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			env := []string{"DATABASE_URL=postgres://app@db.example:5432/app"}
			// Were an argument ignored, run would start serving; the canceled context makes it
			// stop at once, and started reports it.
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			started := make(chan running, 1)
			code := run(ctx, args, env, &out, &errOut, started, nil)
			if code != exitBadUsage {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, exitBadUsage, out.String(), errOut.String())
			}
			if len(started) > 0 {
				t.Fatal("pgsidecar started serving")
			}
			if !strings.Contains(errOut.String(), "usage: pgsidecar") {
				t.Errorf("stderr lacks the usage:\n%s", errOut.String())
			}
			if args[0] == "frob" && !strings.Contains(errOut.String(), `unexpected argument "frob"`) {
				t.Errorf("stderr does not name the argument:\n%s", errOut.String())
			}
		})
	}
}

// What `make run` does without a DATABASE_URL: the local profile starts a disposable cluster
// (as the postgres user when run as root) and proxies to it.
func TestLocalClusterWithoutDatabaseURL(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	if err := pgtest.Available(); err != nil {
		if pgtest.Required() {
			t.Fatalf("%v (CI=true or %s=1: not skipping)", err, pgtest.RequireEnv)
		}
		t.Skip(err)
	}
	inst, stop := startInstance(t, []string{
		"--profile", "local", "--listen", "127.0.0.1:0", "--http-listen", "", "--log-level", "warn",
	}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url := fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", inst.ProxyAddrs[0])
	conn, err := pgconn.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	res, err := conn.Exec(ctx, "SELECT current_user").ReadAll()
	conn.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(res[0].Rows[0][0]); got != "postgres" {
		t.Fatalf("current_user = %q, want postgres", got)
	}
	if code := stop(); code != exitOK {
		t.Fatalf("exit code %d", code)
	}
}

func TestWarnUnverifiedUpstreams(t *testing.T) {
	cfg := config.Defaults(config.ProfileProduction)
	cfg.DatabaseURL = "postgres://app@db.internal/app?sslmode=require"
	var logs bytes.Buffer
	reg := prometheus.NewRegistry()
	warnUnverifiedUpstreams(&cfg, slog.New(slog.NewTextHandler(&logs, nil)), reg)
	if !strings.Contains(logs.String(), "verify-full") || !strings.Contains(logs.String(), "upstream=database_url") {
		t.Errorf("no warning logged: %s", logs.String())
	}
	n, err := testutil.GatherAndCount(reg, "pgsidecar_upstream_tls_unverified")
	if err != nil || n != 1 {
		t.Fatalf("metric: %d series, %v", n, err)
	}
	mfs, _ := reg.Gather()
	if v := mfs[0].GetMetric()[0].GetGauge().GetValue(); v != 1 {
		t.Errorf("pgsidecar_upstream_tls_unverified = %v, want 1", v)
	}
}
