package admin

import (
	"context"
	"strings"
	"testing"
)

// FuzzExec feeds the console arbitrary query text, which comes straight from a client: it
// must never panic, must answer with well-formed messages ending in one ReadyForQuery, must
// run nothing when the text does not parse, and must not let a stats-only caller act.
func FuzzExec(f *testing.F) {
	for _, seed := range []string{
		"", ";", "SHOW POOLS", "show clients;show servers;", "SHOW HELP", "SHOW STATS_TOTALS;",
		`PAUSE "my ""db"""`, "PAUSE 'x'", "KILL_CLIENT 18446744073709551616", "SET a = 'b''c'",
		"SET client_encoding TO UTF8", "RESUME app; RELOAD", `SHOW "`, "SHOW '", "\x00", "é;é",
		"SHUTDOWN WAIT_FOR_SERVERS", "select version", "DISABLE \"a;b\"; ENABLE \"a;b\"",
	} {
		f.Add(seed, true)
		f.Add(seed, false)
	}
	f.Fuzz(func(t *testing.T, query string, admin bool) {
		b := newFake()
		who := statsCaller
		if admin {
			who = adminCaller
		}
		res := decode(t, New(b, who, nil).Exec(context.Background(), query))
		if len(res) == 0 {
			t.Fatalf("%q: no result before ReadyForQuery", query)
		}
		for i, r := range res {
			last := i == len(res)-1
			switch {
			case r.err != nil && !last:
				t.Fatalf("%q: results after an error: %+v", query, res)
			case r.empty && len(res) != 1:
				t.Fatalf("%q: EmptyQueryResponse among results", query)
			case r.err == nil && !r.empty && r.tag == "":
				t.Fatalf("%q: result without CommandComplete", query)
			}
			for _, row := range r.rows {
				if len(row) != len(r.fields) {
					t.Fatalf("%q: row of %d values for %d columns", query, len(row), len(r.fields))
				}
			}
		}
		// Exec reads the text up to its first NUL, as a C string, so the oracle does too.
		text, _, _ := strings.Cut(query, "\x00")
		if _, err := parse(text); err != nil && len(b.calls) > 0 {
			t.Fatalf("%q does not parse but ran %q", query, b.calls)
		}
		if !admin && len(b.calls) > 0 {
			t.Fatalf("stats-only caller ran %q with %q", b.calls, query)
		}
	})
}
