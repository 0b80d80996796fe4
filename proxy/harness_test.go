package proxy

import (
	"context"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/pool"
)

// sharedCluster is one PostgreSQL cluster for the tests of this package that do not restart
// or reconfigure it; starting one costs about a second.
var (
	sharedOnce    sync.Once
	sharedCluster *pgtest.Cluster
	sharedErr     error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedCluster != nil {
		_ = sharedCluster.Close()
	}
	os.Exit(code)
}

// cluster returns the package's shared PostgreSQL cluster, skipping under -short.
func cluster(t testing.TB) *pgtest.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs PostgreSQL")
	}
	if err := pgtest.Available(); err != nil {
		if pgtest.Required() {
			t.Fatalf("%v (PostgreSQL is required here: not skipping)", err)
		}
		t.Skip(err)
	}
	sharedOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		sharedCluster, sharedErr = pgtest.Start(ctx, pgtest.Options{Settings: map[string]string{"max_connections": "300"}})
	})
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	return sharedCluster
}

// testProxy is a Server started for one test on 127.0.0.1:0.
type testProxy struct {
	srv   *Server
	pools *pool.Set
	cfg   *config.Config
	reg   *prometheus.Registry
	addr  string
}

// startProxy starts a proxy in front of c (transaction mode unless mutate says otherwise) and
// stops it at the end of the test.
func startProxy(t testing.TB, c *pgtest.Cluster, mutate func(*config.Config)) *testProxy {
	t.Helper()
	return startProxyLogging(t, c, mutate, nil)
}

// startProxyLogging is startProxy whose log (at warn, JSON) also goes to logs, when not nil.
func startProxyLogging(t testing.TB, c *pgtest.Cluster, mutate func(*config.Config), logs io.Writer) *testProxy {
	t.Helper()
	cfg := config.Defaults("local")
	cfg.Listen = []string{"127.0.0.1:0"}
	cfg.HTTPListen = ""
	cfg.DatabaseURL = c.DSN("postgres")
	cfg.PoolSize = 5
	cfg.QueryWaitTimeout = 20 * time.Second
	if mutate != nil {
		mutate(&cfg)
	}
	level := slog.LevelWarn
	if testing.Verbose() {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: level}))
	if logs != nil {
		logger = slog.New(slog.NewJSONHandler(io.MultiWriter(logs, testLogWriter{t}), &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	reg := prometheus.NewRegistry()
	metrics := NewMetrics(reg)
	pools := pool.NewSet(pool.SetOptions{MaxPools: cfg.MaxPools, OnRemove: metrics.ForgetPool})
	reg.MustRegister(pool.NewCollector(pools))
	srv, err := New(Options{Config: &cfg, Pools: pools, Logger: logger, Metrics: metrics})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	tp := &testProxy{srv: srv, pools: pools, cfg: &cfg, reg: reg, addr: srv.Addrs()[0].String()}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("proxy shutdown: %v", err)
		}
		pools.Close()
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("proxy sessions at failure:\n%s", srv.debugState())
		}
	})
	return tp
}

// dsn is a client connection string through the proxy.
func (p *testProxy) dsn(database, user string) string {
	return "postgres://" + user + "@" + p.addr + "/" + database + "?sslmode=disable"
}

// connect opens a pgx connection through the proxy, closed at the end of the test.
func (p *testProxy) connect(t testing.TB, mode pgx.QueryExecMode) *pgx.Conn {
	t.Helper()
	cc, err := pgx.ParseConfig(p.dsn("postgres", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	cc.DefaultQueryExecMode = mode
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// testCtx is a context bounded for a single test step.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// direct opens a pgx connection straight to the cluster, bypassing the proxy.
func direct(t testing.TB, c *pgtest.Cluster) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(testCtx(t), c.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// testLogWriter sends the proxy's logs to the test log, so they show only for failing tests.
type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(b))
	return len(b), nil
}

var _ io.Writer = testLogWriter{}
