package admin

import (
	"slices"
	"testing"
)

// pgbouncerShows holds PgBouncer 1.25's result columns, copied by hand from its source at tag
// pgbouncer_1_25_2 (github.com/pgbouncer/pgbouncer): the names passed to
// pktbuf_write_RowDescription and its type string, where 's' is text, 'i' int4, 'q' int8,
// 'N' numeric and 'T' a timestamp sent as text (src/pktbuf.c pktbuf_write_RowDescription).
// The lists are kept apart from columns.go on purpose: a change there must be checked against
// PgBouncer, not just copied here. (PgBouncer after 1.25 adds total_client_login_count and
// avg_client_login_count to SHOW STATS; 1.25 does not have them.)
var pgbouncerShows = []struct {
	show, where, types string
	names              []string
}{
	{"POOLS", "src/admin.c admin_show_pools", "ssiiiiiiiiiiiiiss", []string{
		"database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req",
		"cl_waiting_cancel_req", "sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle",
		"sv_used", "sv_tested", "sv_login", "maxwait", "maxwait_us", "pool_mode",
		"load_balance_hosts"}},
	{"CLIENTS", "src/admin.c socket_header (SKF_STD)", "ssssssisiTTiiississii", []string{
		"type", "user", "database", "replication", "state", "addr", "port", "local_addr",
		"local_port", "connect_time", "request_time", "wait", "wait_us", "close_needed", "ptr",
		"link", "remote_pid", "tls", "application_name", "prepared_statements", "id"}},
	{"SERVERS", "src/admin.c socket_header (SKF_STD)", "ssssssisiTTiiississii", []string{
		"type", "user", "database", "replication", "state", "addr", "port", "local_addr",
		"local_port", "connect_time", "request_time", "wait", "wait_us", "close_needed", "ptr",
		"link", "remote_pid", "tls", "application_name", "prepared_statements", "id"}},
	{"DATABASES", "src/admin.c admin_show_databases", "ssissiiiissiiiiii", []string{
		"name", "host", "port", "database", "force_user", "pool_size", "min_pool_size",
		"reserve_pool_size", "server_lifetime", "pool_mode", "load_balance_hosts",
		"max_connections", "current_connections", "max_client_connections",
		"current_client_connections", "paused", "disabled"}},
	{"STATS", "src/stats.c admin_database_stats", "sNNNNNNNNNNNNNNNNNNNNNN", []string{
		"database", "total_server_assignment_count", "total_xact_count", "total_query_count",
		"total_received", "total_sent", "total_xact_time", "total_query_time", "total_wait_time",
		"total_client_parse_count", "total_server_parse_count", "total_bind_count",
		"avg_server_assignment_count", "avg_xact_count", "avg_query_count", "avg_recv",
		"avg_sent", "avg_xact_time", "avg_query_time", "avg_wait_time",
		"avg_client_parse_count", "avg_server_parse_count", "avg_bind_count"}},
	{"STATS_TOTALS", "src/stats.c admin_database_stats_totals", "sNNNNNNNNNNN", []string{
		"database", "server_assignment_count", "xact_count", "query_count", "bytes_received",
		"bytes_sent", "xact_time", "query_time", "wait_time", "client_parse_count",
		"server_parse_count", "bind_count"}},
	{"STATS_AVERAGES", "src/stats.c admin_database_stats_averages", "sNNNNNNNNNNN", []string{
		"database", "server_assignment_count", "xact_count", "query_count", "bytes_received",
		"bytes_sent", "xact_time", "query_time", "wait_time", "avg_client_parse_count",
		"avg_server_parse_count", "avg_bind_count"}},
	{"TOTALS", "src/stats.c show_stat_totals", "sN", []string{"name", "value"}},
	{"LISTS", "src/admin.c admin_show_lists", "si", []string{"list", "items"}},
	{"CONFIG", "src/admin.c admin_show_config", "ssss", []string{"key", "value", "default", "changeable"}},
	{"VERSION", "src/admin.c admin_show_version", "s", []string{"version"}},
	{"STATE", "src/admin.c admin_show_state", "ss", []string{"key", "value"}},
	{"PEERS", "src/admin.c admin_show_peers", "isii", []string{"peer_id", "host", "port", "pool_size"}},
	{"PEER_POOLS", "src/admin.c admin_show_peer_pools", "iiiii", []string{
		"peer_id", "cl_active_cancel_req", "cl_waiting_cancel_req", "sv_active_cancel", "sv_login"}},
}

// pgbouncerType maps PgBouncer's type letters to the OID and size it sends.
func pgbouncerType(t *testing.T, letter byte) (oid uint32, size int16) {
	switch letter {
	case 's', 'T':
		return oidText, -1
	case 'i':
		return oidInt4, 4
	case 'q':
		return oidInt8, 8
	case 'N':
		return oidNumeric, -1
	}
	t.Fatalf("unknown PgBouncer type letter %q", letter)
	return 0, 0
}

// TestColumnsMatchPgBouncer checks every PgBouncer SHOW as sent on the wire: column names,
// order, type OIDs and sizes as PgBouncer 1.25 sends them, and every row as wide as that.
func TestColumnsMatchPgBouncer(t *testing.T) {
	for _, want := range pgbouncerShows {
		t.Run(want.show, func(t *testing.T) {
			if len(want.types) != len(want.names) {
				t.Fatalf("test table: %d types for %d names", len(want.types), len(want.names))
			}
			r := ok(t, newFake(), "SHOW "+want.show)
			if got := names(r); !slices.Equal(got, want.names) {
				t.Fatalf("SHOW %s columns (PgBouncer: %s)\n got %q\nwant %q", want.show, want.where, got, want.names)
			}
			for i, f := range r.fields {
				oid, size := pgbouncerType(t, want.types[i])
				if f.DataTypeOID != oid || f.DataTypeSize != size || f.TypeModifier != -1 || f.Format != 0 ||
					f.TableOID != 0 || f.TableAttributeNumber != 0 {
					t.Errorf("column %s: %+v, want OID %d size %d typmod -1, text format", f.Name, f, oid, size)
				}
			}
			if len(r.rows) == 0 && want.show != "PEERS" && want.show != "PEER_POOLS" {
				t.Errorf("no rows to check")
			}
			for i, row := range r.rows {
				if len(row) != len(r.fields) {
					t.Errorf("row %d has %d values for %d columns", i, len(row), len(r.fields))
				}
			}
		})
	}
}

// TestRowNamesMatchPgBouncer checks the first column of the commands whose rows are named.
func TestRowNamesMatchPgBouncer(t *testing.T) {
	// src/admin.c admin_show_lists, the SENDLIST calls in order.
	lists := []string{"databases", "users", "peers", "pools", "peer_pools", "free_clients",
		"used_clients", "login_clients", "free_servers", "used_servers", "dns_names", "dns_zones",
		"dns_queries", "dns_pending"}
	// src/stats.c show_stat_totals, WTOTAL then WAVG of PgStats's fields.
	var totals []string
	for _, prefix := range []string{"total_", "avg_"} {
		for _, f := range []string{"server_assignment_count", "xact_count", "query_count",
			"client_bytes", "server_bytes", "xact_time", "query_time", "wait_time",
			"ps_client_parse_count", "ps_server_parse_count", "ps_bind_count"} {
			totals = append(totals, prefix+f)
		}
	}
	// src/admin.c admin_show_state.
	state := []string{"active", "paused", "suspended"}

	for show, want := range map[string][]string{"LISTS": lists, "TOTALS": totals, "STATE": state} {
		r := ok(t, newFake(), "SHOW "+show)
		var got []string
		for _, row := range r.rows {
			got = append(got, row[0])
		}
		if !slices.Equal(got, want) {
			t.Errorf("SHOW %s rows\n got %q\nwant %q", show, got, want)
		}
	}
}

// TestOwnColumns pins pgsidecar's own SHOW commands, which scripts will come to rely on too.
func TestOwnColumns(t *testing.T) {
	for show, want := range map[string][]column{
		"UPSTREAMS": {{"name", oidText}, {"upstream", oidText}, {"checked", oidInt4},
			{"healthy", oidInt4}, {"consecutive_failures", oidInt4},
			{"consecutive_successes", oidInt4}, {"last_error", oidText}, {"latency", oidNumeric},
			{"last_check", oidText}},
		"PINS": {{"client_id", oidInt8}, {"database", oidText}, {"user", oidText},
			{"reason", oidText}, {"since", oidText}},
	} {
		r := ok(t, newFake(), "SHOW "+show)
		var got []column
		for _, f := range r.fields {
			got = append(got, column{string(f.Name), f.DataTypeOID})
		}
		if !slices.Equal(got, want) {
			t.Errorf("SHOW %s columns\n got %v\nwant %v", show, got, want)
		}
		for i, row := range r.rows {
			if len(row) != len(r.fields) {
				t.Errorf("SHOW %s row %d has %d values for %d columns", show, i, len(row), len(r.fields))
			}
		}
	}
}
