package admin

// The result columns of each SHOW command, in order. For the commands PgBouncer has they are
// its 1.25 columns exactly (names, order and type OIDs), so that exporters, dashboards and
// scripts written for PgBouncer read pgsidecar unchanged; columns_test.go holds the lists as
// written in PgBouncer's source. These tables are read-only.

// Type OIDs. PgBouncer's pktbuf_write_RowDescription (src/pktbuf.c) sends 's' as text, 'i'
// as int4, 'q' as int8 and 'N' as numeric; its timestamps ('T') are text too, not
// timestamptz, so connect_time and request_time are text here as well.
const (
	oidInt8    = 20
	oidInt4    = 23
	oidText    = 25
	oidNumeric = 1700
)

// column is one RowDescription field.
type column struct {
	name string
	oid  uint32
}

// size is the field's type size as PostgreSQL reports it (-1: variable length).
func (c column) size() int16 {
	switch c.oid {
	case oidInt4:
		return 4
	case oidInt8:
		return 8
	}
	return -1
}

// poolColumns: SHOW POOLS (admin.c admin_show_pools).
var poolColumns = []column{
	{"database", oidText}, {"user", oidText},
	{"cl_active", oidInt4}, {"cl_waiting", oidInt4},
	{"cl_active_cancel_req", oidInt4}, {"cl_waiting_cancel_req", oidInt4},
	{"sv_active", oidInt4}, {"sv_active_cancel", oidInt4}, {"sv_being_canceled", oidInt4},
	{"sv_idle", oidInt4}, {"sv_used", oidInt4}, {"sv_tested", oidInt4}, {"sv_login", oidInt4},
	{"maxwait", oidInt4}, {"maxwait_us", oidInt4},
	{"pool_mode", oidText}, {"load_balance_hosts", oidText},
}

// socketColumns: SHOW CLIENTS and SHOW SERVERS (admin.c socket_header, SKF_STD).
var socketColumns = []column{
	{"type", oidText}, {"user", oidText}, {"database", oidText}, {"replication", oidText},
	{"state", oidText}, {"addr", oidText}, {"port", oidInt4},
	{"local_addr", oidText}, {"local_port", oidInt4},
	{"connect_time", oidText}, {"request_time", oidText},
	{"wait", oidInt4}, {"wait_us", oidInt4}, {"close_needed", oidInt4},
	{"ptr", oidText}, {"link", oidText}, {"remote_pid", oidInt4}, {"tls", oidText},
	{"application_name", oidText}, {"prepared_statements", oidInt4}, {"id", oidInt4},
}

// databaseColumns: SHOW DATABASES (admin.c admin_show_databases).
var databaseColumns = []column{
	{"name", oidText}, {"host", oidText}, {"port", oidInt4},
	{"database", oidText}, {"force_user", oidText},
	{"pool_size", oidInt4}, {"min_pool_size", oidInt4}, {"reserve_pool_size", oidInt4},
	{"server_lifetime", oidInt4}, {"pool_mode", oidText}, {"load_balance_hosts", oidText},
	{"max_connections", oidInt4}, {"current_connections", oidInt4},
	{"max_client_connections", oidInt4}, {"current_client_connections", oidInt4},
	{"paused", oidInt4}, {"disabled", oidInt4},
}

// statsColumns: SHOW STATS (stats.c admin_database_stats).
var statsColumns = []column{
	{"database", oidText},
	{"total_server_assignment_count", oidNumeric},
	{"total_xact_count", oidNumeric}, {"total_query_count", oidNumeric},
	{"total_received", oidNumeric}, {"total_sent", oidNumeric},
	{"total_xact_time", oidNumeric}, {"total_query_time", oidNumeric},
	{"total_wait_time", oidNumeric}, {"total_client_parse_count", oidNumeric},
	{"total_server_parse_count", oidNumeric}, {"total_bind_count", oidNumeric},
	{"avg_server_assignment_count", oidNumeric},
	{"avg_xact_count", oidNumeric}, {"avg_query_count", oidNumeric},
	{"avg_recv", oidNumeric}, {"avg_sent", oidNumeric},
	{"avg_xact_time", oidNumeric}, {"avg_query_time", oidNumeric},
	{"avg_wait_time", oidNumeric}, {"avg_client_parse_count", oidNumeric},
	{"avg_server_parse_count", oidNumeric}, {"avg_bind_count", oidNumeric},
}

// statsTotalsColumns: SHOW STATS_TOTALS (stats.c admin_database_stats_totals).
var statsTotalsColumns = []column{
	{"database", oidText},
	{"server_assignment_count", oidNumeric},
	{"xact_count", oidNumeric}, {"query_count", oidNumeric},
	{"bytes_received", oidNumeric}, {"bytes_sent", oidNumeric},
	{"xact_time", oidNumeric}, {"query_time", oidNumeric},
	{"wait_time", oidNumeric}, {"client_parse_count", oidNumeric},
	{"server_parse_count", oidNumeric}, {"bind_count", oidNumeric},
}

// statsAveragesColumns: SHOW STATS_AVERAGES (stats.c admin_database_stats_averages). Only
// the last three carry an avg_ prefix in PgBouncer.
var statsAveragesColumns = []column{
	{"database", oidText},
	{"server_assignment_count", oidNumeric},
	{"xact_count", oidNumeric}, {"query_count", oidNumeric},
	{"bytes_received", oidNumeric}, {"bytes_sent", oidNumeric},
	{"xact_time", oidNumeric}, {"query_time", oidNumeric},
	{"wait_time", oidNumeric}, {"avg_client_parse_count", oidNumeric},
	{"avg_server_parse_count", oidNumeric}, {"avg_bind_count", oidNumeric},
}

// totalsColumns: SHOW TOTALS (stats.c show_stat_totals), one row per figure.
var totalsColumns = []column{{"name", oidText}, {"value", oidNumeric}}

// totalsNames are SHOW TOTALS's row names in order (stats.c show_stat_totals: "total_" and
// "avg_" before PgStats's field names), each pairing with a StatsValues field in statsFields.
var totalsNames = []string{
	"server_assignment_count", "xact_count", "query_count", "client_bytes", "server_bytes",
	"xact_time", "query_time", "wait_time",
	"ps_client_parse_count", "ps_server_parse_count", "ps_bind_count",
}

// listsColumns: SHOW LISTS (admin.c admin_show_lists).
var listsColumns = []column{{"list", oidText}, {"items", oidInt4}}

// listsNames are SHOW LISTS's rows in order (admin.c admin_show_lists, SENDLIST).
var listsNames = []string{
	"databases", "users", "peers", "pools", "peer_pools",
	"free_clients", "used_clients", "login_clients", "free_servers", "used_servers",
	"dns_names", "dns_zones", "dns_queries", "dns_pending",
}

// configColumns: SHOW CONFIG (admin.c admin_show_config).
var configColumns = []column{
	{"key", oidText}, {"value", oidText}, {"default", oidText}, {"changeable", oidText},
}

// versionColumns: SHOW VERSION (admin.c admin_show_version).
var versionColumns = []column{{"version", oidText}}

// stateColumns: SHOW STATE (admin.c admin_show_state).
var stateColumns = []column{{"key", oidText}, {"value", oidText}}

// peerColumns: SHOW PEERS (admin.c admin_show_peers); pgsidecar has no peers, so no rows.
var peerColumns = []column{
	{"peer_id", oidInt4}, {"host", oidText}, {"port", oidInt4}, {"pool_size", oidInt4},
}

// peerPoolColumns: SHOW PEER_POOLS (admin.c admin_show_peer_pools); no rows either.
var peerPoolColumns = []column{
	{"peer_id", oidInt4}, {"cl_active_cancel_req", oidInt4}, {"cl_waiting_cancel_req", oidInt4},
	{"sv_active_cancel", oidInt4}, {"sv_login", oidInt4},
}

// upstreamColumns: SHOW UPSTREAMS, pgsidecar's own. Flags are int4 0/1 like PgBouncer's
// paused and disabled, so exporters can turn them into gauges; latency is seconds as numeric.
var upstreamColumns = []column{
	{"name", oidText}, {"upstream", oidText}, {"checked", oidInt4}, {"healthy", oidInt4},
	{"consecutive_failures", oidInt4}, {"consecutive_successes", oidInt4},
	{"last_error", oidText}, {"latency", oidNumeric}, {"last_check", oidText},
}

// pinColumns: SHOW PINS, pgsidecar's own; client_id is SHOW CLIENTS's id.
var pinColumns = []column{
	{"client_id", oidInt8}, {"database", oidText}, {"user", oidText},
	{"reason", oidText}, {"since", oidText},
}
