package proxy

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

// TestConflictRetried: an autocommit statement that fails with a serialization failure (40001)
// because a concurrent transaction updated its row is run again by the proxy, and the client
// sees it succeed; the same failure inside an explicit transaction reaches the client.
func TestConflictRetried(t *testing.T) {
	c := cluster(t)
	ctx := testCtx(t)
	admin := direct(t, c)
	if _, err := admin.Exec(ctx, "create table conflict_t (id int primary key, v int); insert into conflict_t values (1, 0)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "drop table conflict_t") })
	p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 2 })
	cc, err := pgx.ParseConfig(p.dsn("postgres", "postgres") + "&options=-c%20default_transaction_isolation%3Drepeatable%5C%20read")
	if err != nil {
		t.Fatal(err)
	}
	cc.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	client, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close(context.Background())

	// conflict makes the client's next update of row 1 wait for a concurrent transaction that
	// updates the row too and then commits: under repeatable read that is 40001.
	conflict := func() (commit func()) {
		other := direct(t, c)
		if _, err := other.Exec(ctx, "begin; update conflict_t set v = v + 100 where id = 1"); err != nil {
			t.Fatal(err)
		}
		return func() {
			// Commit once the client's update waits for the row lock.
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
				var waiting int
				if err := admin.QueryRow(ctx, "select count(*) from pg_stat_activity where wait_event_type = 'Lock' and query like 'update conflict_t%'").Scan(&waiting); err != nil {
					t.Error(err)
					break
				}
				if waiting > 0 {
					break
				}
			}
			if _, err := other.Exec(ctx, "commit"); err != nil {
				t.Error(err)
			}
		}
	}

	before := retriesTotal(t, p, "serialization")
	commit := conflict()
	committed := make(chan struct{})
	go func() { commit(); close(committed) }()
	if _, err := client.Exec(ctx, "update conflict_t set v = v + 1 where id = 1"); err != nil {
		t.Fatalf("autocommit update after a concurrent update: %v, want it retried", err)
	}
	<-committed
	var v int
	if err := admin.QueryRow(ctx, "select v from conflict_t where id = 1").Scan(&v); err != nil || v != 101 {
		t.Fatalf("v = %d (%v), want 101: both updates applied once", v, err)
	}
	if got := retriesTotal(t, p, "serialization") - before; got != 1 {
		t.Errorf(`pgsidecar_retries_total{reason="serialization"} grew by %v, want 1`, got)
	}

	// Inside an explicit transaction the client decides.
	tx, err := client.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	commit = conflict()
	committed = make(chan struct{})
	go func() { commit(); close(committed) }()
	_, err = tx.Exec(ctx, "update conflict_t set v = v + 1 where id = 1")
	<-committed
	if pgErr := pgErrorOf(err); pgErr == nil || pgErr.Code != "40001" {
		t.Fatalf("update in an explicit transaction: %v, want 40001", err)
	}
	_ = tx.Rollback(ctx)
	if err := admin.QueryRow(ctx, "select v from conflict_t where id = 1").Scan(&v); err != nil || v != 201 {
		t.Fatalf("v = %d (%v), want 201: the failed transaction left nothing", v, err)
	}
	// The server that reported the conflict is still good.
	if err := client.QueryRow(ctx, "select 7").Scan(&v); err != nil || v != 7 {
		t.Fatalf("query after the conflicts: %d, %v", v, err)
	}
}

// pgErrorOf returns err's *pgconn.PgError, or nil.
func pgErrorOf(err error) *pgconn.PgError {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr
	}
	return nil
}

func TestHasReadyForQuery(t *testing.T) {
	z := []byte{'Z', 0, 0, 0, 5, 'I'}
	notice := []byte{'N', 0, 0, 0, 6, 'x', 0}
	for _, tt := range []struct {
		name string
		b    []byte
		want bool
	}{
		{"empty", nil, false},
		{"ready", z, true},
		{"notice then ready", append(append([]byte{}, notice...), z...), true},
		{"partial ready", z[:5], false},
		{"notice only", notice, false},
		{"bad length", []byte{'N', 0, 0, 0, 1, 'Z', 0, 0, 0, 5, 'I'}, false},
	} {
		if got := wire.HasReadyForQuery(tt.b); got != tt.want {
			t.Errorf("%s: hasReadyForQuery = %v, want %v", tt.name, got, tt.want)
		}
	}
}
