package proxy

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/lib/pq"

	"github.com/pgsidecar/pgsidecar/config"
)

// pgbouncerColumns are PgBouncer 1.25's column names of the SHOW commands the admin console
// shares with it (src/admin.c and src/stats.c at tag pgbouncer_1_25_2).
var pgbouncerColumns = map[string][]string{
	"POOLS": {"database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req", "cl_waiting_cancel_req",
		"sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used", "sv_tested", "sv_login",
		"maxwait", "maxwait_us", "pool_mode", "load_balance_hosts"},
	"CLIENTS": {"type", "user", "database", "replication", "state", "addr", "port", "local_addr", "local_port",
		"connect_time", "request_time", "wait", "wait_us", "close_needed", "ptr", "link", "remote_pid", "tls",
		"application_name", "prepared_statements", "id"},
	"STATS": {"database", "total_server_assignment_count", "total_xact_count", "total_query_count", "total_received",
		"total_sent", "total_xact_time", "total_query_time", "total_wait_time", "total_client_parse_count",
		"total_server_parse_count", "total_bind_count", "avg_server_assignment_count", "avg_xact_count",
		"avg_query_count", "avg_recv", "avg_sent", "avg_xact_time", "avg_query_time", "avg_wait_time",
		"avg_client_parse_count", "avg_server_parse_count", "avg_bind_count"},
	"DATABASES": {"name", "host", "port", "database", "force_user", "pool_size", "min_pool_size", "reserve_pool_size",
		"server_lifetime", "pool_mode", "load_balance_hosts", "max_connections", "current_connections",
		"max_client_connections", "current_client_connections", "paused", "disabled"},
	"CONFIG": {"key", "value", "default", "changeable"},
	"LISTS":  {"list", "items"},
}

// TestAdminConsole: the admin console answers PgBouncer's SHOW commands with PgBouncer 1.25's
// columns over psql, pgx (simple protocol) and lib/pq; PAUSE lets a running transaction
// commit and holds a new one until RESUME; KILL_CLIENT ends a client; a stats_users member may
// SHOW but not PAUSE (42501); a user in neither list is refused.
func TestAdminConsole(t *testing.T) {
	c := cluster(t)
	ctx := testCtx(t)
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.AdminUsers = []string{"postgres"}
		cfg.StatsUsers = []string{"watcher"}
		cfg.PoolSize = 2
	})
	adminURL := func(user, db string) string {
		return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable", user, p.addr, db)
	}
	// Some traffic, so that the rows have something in them.
	app := p.connect(t, pgx.QueryExecModeSimpleProtocol)
	if _, err := app.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}

	// pgx, simple protocol, on both admin database names.
	for _, db := range []string{"pgsidecar", "pgbouncer"} {
		conn, err := pgx.Connect(ctx, adminURL("postgres", db)+"&default_query_exec_mode=simple_protocol")
		if err != nil {
			t.Fatalf("connect to %s: %v", db, err)
		}
		for cmd, want := range pgbouncerColumns {
			rows, err := conn.Query(ctx, "SHOW "+cmd)
			if err != nil {
				t.Fatalf("pgx %s SHOW %s: %v", db, cmd, err)
			}
			var got []string
			for _, fd := range rows.FieldDescriptions() {
				got = append(got, fd.Name)
			}
			n := 0
			for rows.Next() {
				n++
			}
			if err := rows.Err(); err != nil {
				t.Fatalf("pgx SHOW %s: %v", cmd, err)
			}
			if !slices.Equal(got, want) {
				t.Errorf("pgx SHOW %s columns %q, want PgBouncer's %q", cmd, got, want)
			}
			if n == 0 && cmd != "STATS" {
				t.Errorf("pgx SHOW %s: no rows", cmd)
			}
		}
		conn.Close(ctx)
	}

	// lib/pq, as pgbouncer_exporter uses it.
	db, err := sql.Open("postgres", adminURL("postgres", "pgbouncer"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, cmd := range []string{"POOLS", "CLIENTS", "SERVERS", "STATS", "DATABASES", "CONFIG", "LISTS"} {
		rows, err := db.QueryContext(ctx, "SHOW "+cmd+";")
		if err != nil {
			t.Fatalf("lib/pq SHOW %s: %v", cmd, err)
		}
		cols, _ := rows.Columns()
		for rows.Next() {
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("lib/pq SHOW %s: %v", cmd, err)
		}
		rows.Close()
		if want, ok := pgbouncerColumns[cmd]; ok && !slices.Equal(cols, want) {
			t.Errorf("lib/pq SHOW %s columns %q", cmd, cols)
		}
	}

	// psql.
	out, err := exec.CommandContext(ctx, psqlPath(t), "-X", "-A", "-F", "|", "-c", "SHOW POOLS", adminURL("postgres", "pgsidecar")).CombinedOutput()
	if err != nil {
		t.Fatalf("psql SHOW POOLS: %v\n%s", err, out)
	}
	if header := strings.SplitN(string(out), "\n", 2)[0]; header != strings.Join(pgbouncerColumns["POOLS"], "|") {
		t.Errorf("psql SHOW POOLS header %q", header)
	}
	if !strings.Contains(string(out), "postgres|postgres|") {
		t.Errorf("psql SHOW POOLS lacks the postgres pool:\n%s", out)
	}

	// PAUSE: a transaction begun before it commits; one begun after waits for RESUME.
	admin, err := pgx.Connect(ctx, adminURL("postgres", "pgsidecar")+"&default_query_exec_mode=simple_protocol")
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	if _, err := app.Exec(ctx, "begin"); err != nil {
		t.Fatal(err)
	}
	if _, err := app.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	paused := make(chan error, 1)
	go func() {
		_, err := admin.Exec(ctx, "PAUSE")
		paused <- err
	}()
	time.Sleep(200 * time.Millisecond)
	select {
	case err := <-paused:
		t.Fatalf("PAUSE returned (%v) while a transaction was open", err)
	default:
	}
	if _, err := app.Exec(ctx, "commit"); err != nil {
		t.Fatalf("commit under PAUSE: %v", err)
	}
	select {
	case err := <-paused:
		if err != nil {
			t.Fatalf("PAUSE: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("PAUSE did not return once the transaction ended")
	}
	later := make(chan error, 1)
	go func() {
		_, err := app.Exec(ctx, "select 1")
		later <- err
	}()
	select {
	case err := <-later:
		t.Fatalf("a transaction ran while paused (%v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	if _, err := admin.Exec(ctx, "RESUME"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-later:
		if err != nil {
			t.Fatalf("the held transaction after RESUME: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the held transaction did not run after RESUME")
	}

	// KILL_CLIENT ends the application's connection.
	var id int64 = -1
	rows, err := admin.Query(ctx, "SHOW CLIENTS")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		if vals[2] == "postgres" { // database: the application, not this admin client
			if v, ok := vals[20].(int32); ok {
				id = int64(v)
			}
		}
	}
	if id < 0 {
		t.Fatal("the application is not in SHOW CLIENTS")
	}
	if _, err := admin.Exec(ctx, fmt.Sprintf("KILL_CLIENT %d", id)); err != nil {
		t.Fatalf("KILL_CLIENT: %v", err)
	}
	if _, err := app.Exec(ctx, "select 1"); err == nil {
		t.Error("a killed client still runs queries")
	}

	// stats_users may SHOW, not act; others may not log in.
	watcher, err := pgx.Connect(ctx, adminURL("watcher", "pgsidecar")+"&default_query_exec_mode=simple_protocol")
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close(context.Background())
	if _, err := watcher.Exec(ctx, "SHOW POOLS"); err != nil {
		t.Errorf("stats user SHOW POOLS: %v", err)
	}
	_, err = watcher.Exec(ctx, "PAUSE")
	if pe, ok := errors.AsType[*pgconn.PgError](err); !ok || pe.Code != "42501" {
		t.Errorf("stats user PAUSE: %v, want 42501", err)
	}
	_, err = pgx.Connect(ctx, adminURL("nobody", "pgsidecar"))
	if pe, ok := errors.AsType[*pgconn.PgError](err); !ok || pe.Code != "42501" {
		t.Errorf("login of a user in neither list: %v, want 42501", err)
	}
}
