package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

// reloadConfigFile is the configuration of TestReload: transaction mode by default, session
// mode for database "sess", both served as the upstream's postgres user.
func reloadConfigFile(dsn string, poolSize int, password string) string {
	return fmt.Sprintf(`
listen: ["127.0.0.1:0"]
http_listen: "127.0.0.1:0"
database_url: %q
pool_size: %d
auth_type: scram-sha-256
log_level: warn
users:
  - name: app
    password: %q
routes:
  - database: sess
    user: "*"
    upstream_database: postgres
    upstream_user: postgres
    pool_mode: session
  - database: "*"
    user: "*"
    upstream_user: postgres
`, dsn, poolSize, password)
}

// TestReload changes the configuration under clients of both pool modes with SIGHUP:
// pool_size 2 -> 5 takes effect under load, a changed password applies to the next login, an
// invalid file is rejected (and counted) while the old configuration keeps serving, and no
// client sees an error.
func TestReload(t *testing.T) {
	c := pgtest.Must(t, pgtest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dsn := c.DSN("postgres") + "&application_name=reload_test"
	file := filepath.Join(t.TempDir(), "pgsidecar.yaml")
	write := func(body string) {
		t.Helper()
		// Renamed into place, as a ConfigMap update is: never read half written.
		tmp := file + ".tmp"
		if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, file); err != nil {
			t.Fatal(err)
		}
	}
	write(reloadConfigFile(dsn, 2, "first-pw"))

	signals := make(chan os.Signal, 1)
	started := make(chan running, 1)
	code := make(chan int, 1)
	var stdout, stderr lockedBuffer
	runCtx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() {
		code <- run(runCtx, []string{"--config", file}, nil, &stdout, &stderr, started, signals)
	}()
	var inst running
	select {
	case inst = <-started:
	case c := <-code:
		t.Fatalf("exited with %d\n%s", c, stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatal("did not start")
	}
	addr := inst.ProxyAddrs[0].String()
	url := func(db, password string) string {
		return fmt.Sprintf("postgres://app:%s@%s/%s?sslmode=disable", password, addr, db)
	}
	admin, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	// busy counts the proxy's server connections running a client's query right now.
	busy := func() int {
		var n int
		if err := admin.QueryRow(ctx, "select count(*) from pg_stat_activity where application_name = 'reload_test' and state = 'active'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	// Load: 8 transaction-mode clients and one session-mode client, querying throughout.
	var wg sync.WaitGroup
	var clientErrs atomic.Int64
	var firstErr atomic.Value
	done := make(chan struct{})
	client := func(db string, sql string) {
		conn, err := pgx.Connect(ctx, url(db, "first-pw"))
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			defer conn.Close(context.Background())
			for {
				select {
				case <-done:
					return
				default:
				}
				if _, err := conn.Exec(ctx, sql); err != nil {
					clientErrs.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%s: %v", db, err))
					return
				}
			}
		})
	}
	for range 8 {
		client("postgres", "select pg_sleep(0.05)")
	}
	client("sess", "select 1")
	defer func() {
		close(done)
		wg.Wait()
	}()

	maxBusy := func(d time.Duration) int {
		most := 0
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
			most = max(most, busy())
		}
		return most
	}
	if n := maxBusy(time.Second); n > 2 {
		t.Fatalf("%d busy servers with pool_size 2", n)
	}

	write(reloadConfigFile(dsn, 5, "second-pw"))
	signals <- syscall.SIGHUP
	if n := maxBusy(3 * time.Second); n != 5 {
		t.Errorf("at most %d busy servers after pool_size went to 5 under load, want 5", n)
	}
	// The new password applies to the next login, and the old one no longer does.
	waitLogin := func(password string) error {
		conn, err := pgx.Connect(ctx, url("postgres", password))
		if err == nil {
			conn.Close(ctx)
		}
		return err
	}
	if err := waitLogin("second-pw"); err != nil {
		t.Errorf("login with the reloaded password: %v", err)
	}
	if pe, ok := errors.AsType[*pgconn.PgError](waitLogin("first-pw")); !ok || pe.Code != "28P01" {
		t.Errorf("login with the old password after the reload: %v, want 28P01", pe)
	}

	// An invalid file is rejected whole; the configuration in force stays.
	write(reloadConfigFile(dsn, -3, "third-pw") + "\nno_such_key: 1\n")
	signals <- syscall.SIGHUP
	metricsURL := "http://" + inst.HTTPAddr.String() + "/metrics"
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, body := get(t, metricsURL)
		if strings.Contains(body, `pgsidecar_config_reloads_total{result="failure"} 1`) {
			if !strings.Contains(body, `pgsidecar_config_reloads_total{result="success"} 1`) {
				t.Errorf("reload counters wrong:\n%s", grepLines(body, "config_reloads_total"))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the failed reload was not counted:\n%s", grepLines(body, "config_reloads_total"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := waitLogin("second-pw"); err != nil {
		t.Errorf("login after a rejected reload: %v", err)
	}
	// pool_size 5 stays in force: the pool says so, and the load still uses more than the
	// first file's 2 servers (how many are seen busy at once depends on the machine's load).
	if _, body := get(t, metricsURL); !strings.Contains(body, `pgsidecar_pool_size{database="postgres",user="postgres"} 5`) {
		t.Errorf("pool size after a rejected reload:\n%s", grepLines(body, "pgsidecar_pool_size"))
	}
	if n := maxBusy(3 * time.Second); n <= 2 {
		t.Errorf("at most %d busy servers after a rejected reload, want more than 2 (pool_size 5)", n)
	}
	for _, want := range []string{"pool_size", "no_such_key"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("the rejection log does not name %s:\n%s", want, stderr.String())
		}
	}

	if n := clientErrs.Load(); n > 0 {
		t.Errorf("%d clients saw an error, first: %v", n, firstErr.Load())
	}
	close(done)
	wg.Wait()
	done = make(chan struct{})
	stop()
	select {
	case c := <-code:
		if c != exitOK {
			t.Errorf("exit code %d", c)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("did not stop")
	}
}

// lockedBuffer is a bytes.Buffer that the program may write while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for line := range strings.Lines(s) {
		if strings.Contains(line, sub) {
			out = append(out, strings.TrimSpace(line))
		}
	}
	return strings.Join(out, "\n")
}
