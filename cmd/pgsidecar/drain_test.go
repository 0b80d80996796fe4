package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

// binary builds pgsidecar once per test into a temporary directory.
func binary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "pgsidecar")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// process is a pgsidecar binary started by a test.
type process struct {
	cmd                *exec.Cmd
	proxyAddr, httpURL string
	output             *lockedBuffer
	exited             chan struct{}
	code               int
}

// startBinary starts bin against dsn with the extra environment, and waits until it serves.
func startBinary(t *testing.T, bin, dsn string, env ...string) *process {
	t.Helper()
	p := &process{proxyAddr: freeAddr(t), output: &lockedBuffer{}, exited: make(chan struct{})}
	httpAddr := freeAddr(t)
	p.httpURL = "http://" + httpAddr
	p.cmd = exec.Command(bin)
	p.cmd.Env = append([]string{
		"DATABASE_URL=" + dsn,
		"PGSIDECAR_LISTEN=" + p.proxyAddr,
		"PGSIDECAR_HTTP_LISTEN=" + httpAddr,
		"PGSIDECAR_LOG_LEVEL=info",
	}, env...)
	p.cmd.Stdout, p.cmd.Stderr = p.output, p.output
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := p.cmd.Wait()
		p.code = p.cmd.ProcessState.ExitCode()
		if err != nil && p.code == -1 {
			p.code = -2
		}
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("pgsidecar output:\n%s", p.output.String())
		}
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get(p.httpURL + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pgsidecar not ready within 30s:\n%s", p.output.String())
		}
	}
}

func (p *process) url() string {
	return fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", p.proxyAddr)
}

func (p *process) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// wait returns the exit code, failing the test if the process runs past within.
func (p *process) wait(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
		return p.code
	case <-time.After(within):
		t.Fatalf("pgsidecar still running after %v", within)
		return -1
	}
}

func httpStatus(t *testing.T, method, url string) int {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestDrain stops the real binary the ways Kubernetes and operators do: SIGTERM while a
// transaction is open and new clients keep coming (readiness 503 at once, clients still served
// for shutdown_delay, then refused, the transaction commits, exit 0); a second SIGTERM (exit at
// once); and POST /quitquitquit, served only with http_quit.
func TestDrain(t *testing.T) {
	c := pgtest.Must(t, pgtest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := c.Exec(ctx, "create table drain_t (v int)"); err != nil {
		t.Fatal(err)
	}
	bin := binary(t)
	dsn := c.DSN("postgres")

	t.Run("SIGTERM", func(t *testing.T) {
		const delay = 2 * time.Second
		p := startBinary(t, bin, dsn, "PGSIDECAR_SHUTDOWN_DELAY=2s", "PGSIDECAR_SHUTDOWN_TIMEOUT=15s")
		tx, err := pgx.Connect(ctx, p.url())
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Close(context.Background())
		if _, err := tx.Exec(ctx, "begin"); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "insert into drain_t values (1)"); err != nil {
			t.Fatal(err)
		}

		p.signal(t, syscall.SIGTERM)
		stopped := time.Now()
		for httpStatus(t, http.MethodGet, p.httpURL+"/readyz") != http.StatusServiceUnavailable {
			if time.Since(stopped) > 500*time.Millisecond {
				t.Fatal("/readyz not 503 within 500ms of SIGTERM")
			}
			time.Sleep(10 * time.Millisecond)
		}
		// Still accepting and serving during shutdown_delay.
		time.Sleep(300 * time.Millisecond)
		late, err := pgx.Connect(ctx, p.url())
		if err != nil {
			t.Fatalf("a client connecting during shutdown_delay was refused: %v", err)
		}
		var one int
		if err := late.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
			t.Fatalf("a client during shutdown_delay: %d, %v", one, err)
		}
		late.Close(ctx)
		// Then the listener closes.
		for {
			conn, err := net.DialTimeout("tcp", p.proxyAddr, time.Second)
			if err != nil {
				break
			}
			conn.Close()
			if time.Since(stopped) > delay+2*time.Second {
				t.Fatal("still accepting connections 2s after shutdown_delay")
			}
			time.Sleep(50 * time.Millisecond)
		}
		if time.Since(stopped) < delay-100*time.Millisecond {
			t.Errorf("stopped accepting %v after SIGTERM, before shutdown_delay (%v)", time.Since(stopped), delay)
		}
		// The open transaction finishes.
		if _, err := tx.Exec(ctx, "commit"); err != nil {
			t.Fatalf("commit during the drain: %v", err)
		}
		if code := p.wait(t, 10*time.Second); code != exitOK {
			t.Errorf("exit code %d after the drain, want 0", code)
		}
		var n int
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		if err := conn.QueryRow(ctx, "select count(*) from drain_t where v = 1").Scan(&n); err != nil || n != 1 {
			t.Errorf("rows committed during the drain: %d, %v; want 1", n, err)
		}
	})

	t.Run("second SIGTERM", func(t *testing.T) {
		p := startBinary(t, bin, dsn, "PGSIDECAR_SHUTDOWN_DELAY=5s", "PGSIDECAR_SHUTDOWN_TIMEOUT=20s")
		tx, err := pgx.Connect(ctx, p.url())
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Close(context.Background())
		if _, err := tx.Exec(ctx, "begin"); err != nil {
			t.Fatal(err)
		}
		p.signal(t, syscall.SIGTERM)
		time.Sleep(200 * time.Millisecond)
		p.signal(t, syscall.SIGTERM)
		if code := p.wait(t, 3*time.Second); code != exitFailure {
			t.Errorf("exit code %d after a second SIGTERM, want %d", code, exitFailure)
		}
		_, err = tx.Exec(ctx, "select 1")
		if pe, ok := errors.AsType[*pgconn.PgError](err); err == nil || ok && pe.Code != "57P01" {
			t.Errorf("client of a forced exit: %v, want 57P01 or a closed connection", err)
		}
	})

	t.Run("quitquitquit", func(t *testing.T) {
		off := startBinary(t, bin, dsn, "PGSIDECAR_SHUTDOWN_TIMEOUT=1s")
		if code := httpStatus(t, http.MethodPost, off.httpURL+"/quitquitquit"); code != http.StatusNotFound {
			t.Errorf("POST /quitquitquit without http_quit = %d, want 404", code)
		}
		off.signal(t, syscall.SIGTERM)
		if code := off.wait(t, 10*time.Second); code != exitOK {
			t.Errorf("exit code %d", code)
		}

		on := startBinary(t, bin, dsn, "PGSIDECAR_HTTP_QUIT=true", "PGSIDECAR_SHUTDOWN_TIMEOUT=1s")
		if code := httpStatus(t, http.MethodPost, on.httpURL+"/quitquitquit"); code != http.StatusOK {
			t.Errorf("POST /quitquitquit with http_quit = %d, want 200", code)
		}
		if code := on.wait(t, 10*time.Second); code != exitOK {
			t.Errorf("exit code %d after /quitquitquit, want 0", code)
		}
		if !strings.Contains(on.output.String(), "quitquitquit") {
			t.Errorf("the drain's log does not say why:\n%s", on.output.String())
		}
	})
}

// TestStartupAndReadiness: /startupz waits for min_pool_size's first connections, and /readyz
// follows every configured upstream, not only database_url.
func TestStartupAndReadiness(t *testing.T) {
	c := pgtest.Must(t, pgtest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	file := filepath.Join(dir, "pgsidecar.yaml")
	body := fmt.Sprintf(`
listen: ["127.0.0.1:0"]
http_listen: "127.0.0.1:0"
database_url: %q
min_pool_size: 2
routes:
  - database: broken
    user: postgres
    dsn: "host=127.0.0.1 port=1 sslmode=disable"
`, c.DSN("postgres")+"&application_name=startup_test")
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	inst, _ := startInstance(t, []string{"--config", file}, nil)
	base := "http://" + inst.HTTPAddr.String()
	for deadline := time.Now().Add(20 * time.Second); httpStatus(t, http.MethodGet, base+"/startupz") != 200; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("/startupz not 200 within 20s")
		}
	}
	// Started: the default pool's first connection is open already.
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(ctx, "select count(*) from pg_stat_activity where application_name = 'startup_test'").Scan(&n); err != nil || n < 1 {
		t.Errorf("%d server connections open when /startupz turned 200 (%v), want at least 1", n, err)
	}
	// Readiness names the configured route whose upstream is down.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		code, body := get(t, base+"/readyz")
		if code == http.StatusServiceUnavailable && strings.Contains(body, "broken/postgres") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz = %d %q, want 503 naming broken/postgres", code, body)
		}
	}
}
