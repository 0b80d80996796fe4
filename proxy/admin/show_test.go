package admin

import (
	"slices"
	"strings"
	"testing"
)

func TestShowPools(t *testing.T) {
	r := ok(t, newFake(), "SHOW POOLS")
	want := []string{"app", "alice", "3", "1", "0", "0", "2", "0", "0", "4", "0", "0", "1",
		"2", "500", "transaction", null}
	if !slices.Equal(r.rows[0], want) {
		t.Errorf("row\n got %q\nwant %q", r.rows[0], want)
	}
}

func TestShowClientsAndServers(t *testing.T) {
	r := ok(t, newFake(), "SHOW CLIENTS")
	want := []string{"C", "alice", "app", "none", "active", "10.0.0.5", "41000", "127.0.0.1",
		"6432", "2026-01-02 03:04:05 UTC", "2026-01-02 03:05:05 UTC", "3", "250", "0", "0x7",
		"0x2a", "0", "", "psql", "2", "7"}
	if !slices.Equal(r.rows[0], want) {
		t.Errorf("client row\n got %q\nwant %q", r.rows[0], want)
	}
	// What PgBouncer's socket_row prints for a connection without user, database or link.
	for name, want := range map[string]string{"user": "(nouser)", "database": "(nodb)",
		"connect_time": null, "request_time": null, "link": "", "id": "8"} {
		if got := col(t, r, 1, name); got != want {
			t.Errorf("bare client %s = %q, want %q", name, got, want)
		}
	}

	r = ok(t, newFake(), "SHOW SERVERS")
	for name, want := range map[string]string{"type": "S", "state": "active", "close_needed": "1",
		"link": "0x7", "remote_pid": "12345", "tls": "TLSv1.3/TLS_AES_256_GCM_SHA384", "wait": "0", "id": "42"} {
		if got := col(t, r, 0, name); got != want {
			t.Errorf("server %s = %q, want %q", name, got, want)
		}
	}
}

func TestShowDatabases(t *testing.T) {
	r := ok(t, newFake(), "SHOW DATABASES")
	want := []string{"app", "db.internal", "5432", "app_prod", null, "20", "2", "0", "3600",
		null, null, "50", "6", "0", "4", "1", "0"}
	if !slices.Equal(r.rows[0], want) {
		t.Errorf("row\n got %q\nwant %q", r.rows[0], want)
	}
	if got := col(t, r, 1, "host"); got != null {
		t.Errorf("host without a host = %q, want NULL", got)
	}
	if got := col(t, r, 1, "force_user"); got != "pgsidecar" {
		t.Errorf("force_user = %q", got)
	}
}

func TestShowStats(t *testing.T) {
	r := ok(t, newFake(), "SHOW STATS")
	want := []string{"app", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11",
		"10", "10", "20", "100", "200", "100", "50", "30", "1", "2", "3"}
	if !slices.Equal(r.rows[0], want) {
		t.Errorf("STATS row\n got %q\nwant %q", r.rows[0], want)
	}
	r = ok(t, newFake(), "SHOW STATS_TOTALS")
	if want := []string{"app", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11"}; !slices.Equal(r.rows[0], want) {
		t.Errorf("STATS_TOTALS row\n got %q\nwant %q", r.rows[0], want)
	}
	r = ok(t, newFake(), "SHOW STATS_AVERAGES")
	if want := []string{"other", "30", "30", "60", "1", "2", "200", "10", "70", "0", "0", "0"}; !slices.Equal(r.rows[1], want) {
		t.Errorf("STATS_AVERAGES row\n got %q\nwant %q", r.rows[1], want)
	}
}

// TestShowTotals checks that SHOW TOTALS adds rates and weighs mean times by their rates, as
// PgBouncer's calc_average over every pool does.
func TestShowTotals(t *testing.T) {
	r := ok(t, newFake(), "SHOW TOTALS")
	got := map[string]string{}
	for _, row := range r.rows {
		got[row[0]] = row[1]
	}
	for name, want := range map[string]string{
		"total_xact_count":          "202",
		"total_client_bytes":        "404",
		"total_ps_bind_count":       "1111",
		"avg_xact_count":            "40",
		"avg_server_bytes":          "202",
		"avg_xact_time":             "175", // (100*10 + 200*30) / 40
		"avg_query_time":            "20",  // (50*20 + 10*60) / 80
		"avg_wait_time":             "60",  // (30*10 + 70*30) / 40
		"avg_ps_client_parse_count": "1",
	} {
		if got[name] != want {
			t.Errorf("%s = %q, want %q", name, got[name], want)
		}
	}

	empty := newFake()
	empty.stats = nil
	r = ok(t, empty, "SHOW TOTALS")
	for _, row := range r.rows {
		if row[1] != "0" {
			t.Errorf("no databases: %s = %q, want 0", row[0], row[1])
		}
	}
}

func TestShowLists(t *testing.T) {
	r := ok(t, newFake(), "SHOW LISTS")
	var got []string
	for _, row := range r.rows {
		got = append(got, row[1])
	}
	want := []string{"2", "3", "0", "4", "0", "0", "5", "1", "0", "6", "1", "0", "0", "0"}
	if !slices.Equal(got, want) {
		t.Errorf("items\n got %q\nwant %q", got, want)
	}
}

func TestShowStateVersionConfig(t *testing.T) {
	b := newFake()
	b.state.Paused = true
	r := ok(t, b, "SHOW STATE")
	want := [][]string{{"active", "no"}, {"paused", "yes"}, {"suspended", "no"}}
	if !slices.EqualFunc(r.rows, want, slices.Equal) {
		t.Errorf("STATE rows %q, want %q", r.rows, want)
	}

	r = ok(t, b, "SHOW VERSION")
	if len(r.rows) != 1 || r.rows[0][0] != "pgsidecar 1.2.3" {
		t.Errorf("VERSION rows %q", r.rows)
	}

	r = ok(t, b, "SHOW CONFIG")
	want = [][]string{{"pool_mode", "transaction", "transaction", "yes"},
		{"listen_addr", "127.0.0.1:6432", "127.0.0.1:6432", "no"}}
	if !slices.EqualFunc(r.rows, want, slices.Equal) {
		t.Errorf("CONFIG rows %q, want %q", r.rows, want)
	}
}

func TestShowUpstreamsAndPins(t *testing.T) {
	r := ok(t, newFake(), "SHOW UPSTREAMS")
	want := [][]string{
		{"default", "postgres://app:xxxxx@db.internal/app", "1", "1", "0", "5", null, "0.001500", "2026-01-02 03:04:05 UTC"},
		{"replica", "postgres://replica/app", "0", "0", "0", "0", "connection refused", null, null},
	}
	if !slices.EqualFunc(r.rows, want, slices.Equal) {
		t.Errorf("UPSTREAMS rows\n got %q\nwant %q", r.rows, want)
	}

	r = ok(t, newFake(), "SHOW PINS")
	if want := []string{"7", "app", "alice", "advisory_lock", "2026-01-02 03:04:05 UTC"}; !slices.Equal(r.rows[0], want) {
		t.Errorf("PINS row\n got %q\nwant %q", r.rows[0], want)
	}
}

// TestShowHelp checks PgBouncer's shape: one notice, no rows, tag SHOW.
func TestShowHelp(t *testing.T) {
	for _, who := range []Caller{adminCaller, statsCaller} {
		r := one(t, newFake(), who, "SHOW HELP")
		if r.err != nil || r.tag != "SHOW" || r.fields != nil {
			t.Fatalf("SHOW HELP: %+v", r)
		}
		if len(r.notices) != 1 {
			t.Fatalf("%d notices, want 1", len(r.notices))
		}
		n := r.notices[0]
		if n.Severity != "NOTICE" || n.Code != "00000" || n.Message != "Console usage" {
			t.Errorf("notice %+v", n)
		}
		for _, cmd := range []string{"SHOW UPSTREAMS|PINS", "PAUSE [<db>]", "KILL_CLIENT <client_id>", "RELOAD"} {
			if !strings.Contains(n.Detail, "\n\t"+cmd) {
				t.Errorf("help does not list %q:\n%s", cmd, n.Detail)
			}
		}
		if strings.Contains(n.Detail, "SUSPEND") {
			t.Errorf("help lists SUSPEND, which pgsidecar does not have")
		}
	}
}

// TestShowFakeParams checks the parameters PgBouncer answers for clients that ask before
// doing anything else.
func TestShowFakeParams(t *testing.T) {
	for query, want := range map[string][2]string{
		"SHOW client_encoding":               {"client_encoding", "UTF-8"},
		"show TimeZone":                      {"timezone", "GMT"},
		"SHOW DateStyle":                     {"datestyle", "ISO"},
		"SHOW standard_conforming_strings":   {"standard_conforming_strings", "on"},
		"SHOW default_transaction_isolation": {"default_transaction_isolation", "read committed"},
	} {
		r := ok(t, newFake(), query)
		if got := names(r); len(got) != 1 || got[0] != want[0] || len(r.rows) != 1 || r.rows[0][0] != want[1] {
			t.Errorf("%q: columns %q rows %q, want %q", query, got, r.rows, want)
		}
	}
}

func TestShowPeersIsEmpty(t *testing.T) {
	for _, show := range []string{"PEERS", "PEER_POOLS"} {
		if r := ok(t, newFake(), "SHOW "+show); len(r.rows) != 0 {
			t.Errorf("SHOW %s rows %q, want none", show, r.rows)
		}
	}
}
