package proxy

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/config"
)

// TestStatementPreparedAfterSchemaChangeOnAnotherServer: a pgx client caches a statement's
// result types on one server; the column's type changes; the client's next execution lands on
// a server that never had the statement, where the proxy prepares it afresh. The client asks
// for results in the old types' formats and must not decode the new type's bytes as the old
// type: it gets what PostgreSQL gives (0A000, after which pgx prepares again) or the right value.
func TestStatementPreparedAfterSchemaChangeOnAnotherServer(t *testing.T) {
	c := cluster(t)
	ctx := testCtx(t)
	admin := direct(t, c)
	mustExec(t, admin, "create table shape_t (id int primary key, v int); insert into shape_t values (1, 1001)")
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "drop table shape_t") })
	p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 2 })

	holder := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	client := p.connect(t, pgx.QueryExecModeCacheStatement)
	// The holder keeps one server busy, so the client prepares on the other one only.
	mustExec(t, holder, "begin")
	holderPID := queryInt(t, holder, "select pg_backend_pid()")
	var v int32
	if err := client.QueryRow(ctx, "select v from shape_t where id = $1", 1).Scan(&v); err != nil || v != 1001 {
		t.Fatalf("before: %v %d", err, v)
	}
	mustExec(t, holder, "commit")
	mustExec(t, admin, "alter table shape_t alter column v type text using 'x' || v::text")
	// Now another client holds the server the client used, so the client gets the one it
	// never used: two clients take both servers, and the one holding that one lets it go.
	other := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	mustExec(t, holder, "begin")
	mustExec(t, other, "begin")
	if queryInt(t, holder, "select pg_backend_pid()") == holderPID {
		mustExec(t, holder, "commit")
		holder = other
	} else {
		mustExec(t, other, "commit")
	}
	var got any
	rows, err := client.Query(ctx, "select v from shape_t where id = $1", 1)
	if err == nil {
		for rows.Next() {
			vals, verr := rows.Values()
			if verr != nil {
				err = verr
				break
			}
			got = vals[0]
		}
		rows.Close()
		if err == nil {
			err = rows.Err()
		}
	}
	t.Logf("after the change, on a server that never had the statement: value %v, error %v", got, err)
	if err == nil && got != "x1001" {
		t.Fatalf("got %#v, want the new value \"x1001\" or PostgreSQL's 0A000", got)
	}
	if err != nil {
		if pe := pgErrorOf(err); pe == nil || pe.Code != "0A000" {
			t.Fatalf("got %v, want 0A000 or the new value", err)
		}
		// As after PostgreSQL's own 0A000, pgx prepares again and gets the new type.
		var s string
		if err := client.QueryRow(ctx, "select v from shape_t where id = $1", 1).Scan(&s); err != nil || s != "x1001" {
			t.Fatalf("after 0A000: %v %q", err, s)
		}
	}
	mustExec(t, holder, "commit")
}
