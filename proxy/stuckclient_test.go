package proxy

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/config"
)

// TestQueryTimeoutFreesServerOfNonReadingClient: with one server, client A asks for a result
// far larger than the socket buffers and reads none of it. query_timeout cancels the query, and
// its second stage destroys the server connection and closes A, so B gets the server soon
// after instead of waiting for query_wait_timeout.
func TestQueryTimeoutFreesServerOfNonReadingClient(t *testing.T) {
	c := cluster(t)
	const queryTimeout = time.Second
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.PoolSize = 1
		cfg.QueryTimeout = queryTimeout
		cfg.ClientWriteTimeout = 0 // the query timeout alone must free the server
	})
	// The grace period after the cancel is query_timeout itself, at least a second.
	serverFreedWithin(t, p, queryTimeout+max(queryTimeout, time.Second)+time.Second)
}

// serverFreedWithin has client A ask for a result far larger than the socket buffers and read
// none of it, holding the pool's one server, and checks that client B gets the server within
// limit.
func serverFreedWithin(t *testing.T, p *testProxy, limit time.Duration) {
	t.Helper()
	a := rawConnect(t, p)
	a.send(&pgproto3.Query{String: "SELECT repeat('x', 1000000) FROM generate_series(1, 1000)"})
	start := time.Now()
	b := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var one int
	if err := b.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("B's select 1: %v", err)
	}
	if time.Since(start) > limit {
		t.Errorf("B waited %v for the server, want at most %v", time.Since(start), limit)
	}
}

// TestClientWriteTimeoutEndsStuckClient: a client that reads nothing of a large result is
// ended after client_write_timeout, and its server goes to the next client, with no
// query_timeout at all.
func TestClientWriteTimeoutEndsStuckClient(t *testing.T) {
	c := cluster(t)
	const writeTimeout = time.Second
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.PoolSize = 1
		cfg.QueryTimeout = 0
		cfg.ClientWriteTimeout = writeTimeout
	})
	serverFreedWithin(t, p, writeTimeout+3*time.Second)
}
