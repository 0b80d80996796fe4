package proxy

import (
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/config"
)

// TestReloadRejectsUnloadableRoute: a reload whose route cannot be turned into a pool (its
// sslrootcert does not load) changes nothing: the old configuration and pools stay.
func TestReloadRejectsUnloadableRoute(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	conn := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	if _, err := conn.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	next := *p.cfg
	next.PoolSize = 7
	next.Routes = []config.Route{{Database: "other", User: "postgres", DSN: "host=127.0.0.1 sslmode=verify-full sslrootcert=/nonexistent/ca.pem"}}
	if err := p.srv.Reload(&next); err == nil {
		t.Fatal("a reload with an unloadable route was accepted")
	}
	if got := p.srv.config().PoolSize; got != 5 {
		t.Errorf("pool_size %d in force after a rejected reload, want 5", got)
	}
	for _, st := range p.pools.Stats() {
		if st.Size != 5 {
			t.Errorf("pool %s resized to %d by a rejected reload", st.Key, st.Size)
		}
	}
	if _, err := conn.Exec(ctx, "select 1"); err != nil {
		t.Errorf("client after a rejected reload: %v", err)
	}
}
