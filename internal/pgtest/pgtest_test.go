package pgtest_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

var _ pgtest.TB = (*testing.T)(nil)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func needPG(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts PostgreSQL; skipped with -short")
	}
}

func queryInt(t *testing.T, ctx context.Context, dsn, sql string) int {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func TestClusterLifecycle(t *testing.T) {
	needPG(t)
	t.Parallel()
	ctx := testCtx(t)
	pg := pgtest.Must(t, pgtest.Options{Settings: map[string]string{"max_connections": "50"}})

	if pg.Host() != "127.0.0.1" || pg.Port() <= 0 {
		t.Fatalf("Host/Port = %s/%d", pg.Host(), pg.Port())
	}
	if err := pg.Exec(ctx, "CREATE TABLE t (v int); INSERT INTO t VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	dsn := pg.DSN("postgres")
	if got := queryInt(t, ctx, dsn, "SELECT v FROM t"); got != 42 {
		t.Fatalf("v = %d, want 42", got)
	}
	if got := queryInt(t, ctx, dsn, "SELECT current_setting('max_connections')::int"); got != 50 {
		t.Fatalf("max_connections = %d, want 50", got)
	}

	port := pg.Port()
	for _, mode := range []string{"fast", "smart"} {
		if err := pg.Restart(ctx, mode); err != nil {
			t.Fatalf("Restart(%s): %v", mode, err)
		}
		if pg.Port() != port {
			t.Fatalf("port changed across restart: %d -> %d", port, pg.Port())
		}
		if got := queryInt(t, ctx, dsn, "SELECT v FROM t"); got != 42 {
			t.Fatalf("after Restart(%s): v = %d, want 42", mode, got)
		}
	}

	if err := pg.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pg.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if conn, err := pgx.Connect(ctx, dsn); err == nil {
		conn.Close(ctx)
		t.Fatal("connect succeeded after Stop")
	}
	if err := pg.StartAgain(ctx); err != nil {
		t.Fatal(err)
	}
	if got := queryInt(t, ctx, dsn, "SELECT v FROM t"); got != 42 {
		t.Fatalf("after StartAgain: v = %d, want 42", got)
	}
}

func TestCreateDatabaseAndRunAsOwner(t *testing.T) {
	needPG(t)
	t.Parallel()
	ctx := testCtx(t)
	pg := pgtest.Must(t, pgtest.Options{})

	if err := pg.CreateDatabase(ctx, "app-db"); err != nil {
		t.Fatal(err)
	}
	if got := queryInt(t, ctx, pg.DSN("app-db"), "SELECT 1"); got != 1 {
		t.Fatalf("SELECT 1 = %d", got)
	}
	out, err := pg.RunAsOwner(ctx, "psql", "-X", "-A", "-t", "-d", pg.DSN("app-db"), "-c", "SELECT current_database()")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != "app-db" {
		t.Fatalf("psql output %q, want app-db", got)
	}
}

func TestPasswordAuth(t *testing.T) {
	needPG(t)
	for _, auth := range []string{"scram-sha-256", "md5"} {
		t.Run(auth, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			pg := pgtest.Must(t, pgtest.Options{Auth: auth, Password: "s3cr'et"})

			dsn := pg.DSN("postgres")
			if !strings.Contains(dsn, "postgres:s3cr%27et@") {
				t.Fatalf("DSN %q lacks the password", dsn)
			}
			if got := queryInt(t, ctx, dsn, "SELECT 1"); got != 1 {
				t.Fatalf("SELECT 1 = %d", got)
			}

			cfg, err := pgconn.ParseConfig(dsn)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Password = "wrong"
			conn, err := pgconn.ConnectConfig(ctx, cfg)
			if err == nil {
				conn.Close(ctx)
				t.Fatal("connected with a wrong password")
			}
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
				t.Fatalf("wrong password: got %v, want SQLSTATE 28P01", err)
			}

			if auth == "md5" {
				// The stored verifier must be MD5 so the md5 exchange is used.
				conn, err := pgx.Connect(ctx, dsn)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close(ctx)
				var pw string
				if err := conn.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'").Scan(&pw); err != nil {
					t.Fatal(err)
				}
				if !strings.HasPrefix(pw, "md5") {
					t.Fatalf("stored password %.10q..., want an md5 hash", pw)
				}
			}
		})
	}
}

func TestReplicationBasebackup(t *testing.T) {
	needPG(t)
	t.Parallel()
	ctx := testCtx(t)
	pg := pgtest.Must(t, pgtest.Options{Replication: true})

	target := filepath.Join(filepath.Dir(pg.DataDir()), "backup")
	out, err := pg.RunAsOwner(ctx, "pg_basebackup", "-d", pg.DSN("postgres"), "-D", target, "-X", "stream", "--no-sync")
	if err != nil {
		t.Fatalf("pg_basebackup: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(target, "PG_VERSION")); err != nil {
		t.Fatal(err)
	}
}

func TestCloseRemovesDir(t *testing.T) {
	needPG(t)
	t.Parallel()
	ctx := testCtx(t)
	if err := pgtest.Available(); err != nil {
		if pgtest.Required() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	pg, err := pgtest.Start(ctx, pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(pg.DataDir())
	if _, err := os.Stat(dir); err != nil {
		t.Fatal(err)
	}
	dsn := pg.DSN("")
	if err := pg.Close(); err != nil {
		t.Fatal(err)
	}
	if err := pg.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("cluster dir still exists after Close: %v", err)
	}
	if conn, err := pgx.Connect(ctx, dsn); err == nil {
		conn.Close(ctx)
		t.Fatal("server still accepts connections after Close")
	}
	if err := pg.Restart(ctx, "fast"); err == nil {
		t.Fatal("Restart after Close succeeded")
	}
}

func TestCloseKillsRunawayServer(t *testing.T) {
	needPG(t)
	t.Parallel()
	ctx := testCtx(t)
	pg := pgtest.Must(t, pgtest.Options{})
	// A client stuck in a transaction blocks a smart shutdown; Close must
	// still stop the server promptly.
	conn, err := pgx.Connect(ctx, pg.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := pg.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("Close took %v", d)
	}
}

func TestStartRejectsBadOptions(t *testing.T) {
	ctx := context.Background()
	for name, opts := range map[string]pgtest.Options{
		"scram without password": {Auth: "scram-sha-256"},
		"unknown auth":           {Auth: "ident"},
		"reserved setting":       {Settings: map[string]string{"port": "5432"}},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := pgtest.Start(ctx, opts); err == nil {
				t.Fatal("Start succeeded")
			}
		})
	}
}

func TestCloseAfterServerKilled(t *testing.T) {
	needPG(t)
	t.Parallel()
	pg := pgtest.Must(t, pgtest.Options{})
	data, err := os.ReadFile(filepath.Join(pg.DataDir(), "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(data), "\n", 2)[0]))
	if err != nil {
		t.Fatal(err)
	}
	// Simulate a crash: kill the postmaster and its backends, leaving a
	// stale postmaster.pid behind.
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(pg.DataDir())
	if err := pg.Close(); err != nil {
		t.Fatalf("Close after crash: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("cluster dir still exists after Close: %v", err)
	}
}
