package classify

import (
	"slices"
	"strings"
	"testing"
)

func FuzzClassify(f *testing.F) {
	for _, tc := range classifyCases {
		f.Add(tc.sql)
	}
	for _, q := range plainQueries {
		f.Add(q)
	}
	f.Add("select U&'\\D83D\\DE00' uescape '!'; deallocate U&\"!0061\" UESCAPE '!'")
	f.Add("select $a$$a$; select $$$$; select $_1$x$_1$")
	f.Add("/*/*/**/*/*/ select 1")
	f.Add("set session characteristics as transaction isolation level read uncommitted, read write, not deferrable")

	f.Fuzz(func(t *testing.T, sql string) {
		var params []string
		tracked := func(p string) bool {
			if strings.ContainsFunc(p, func(r rune) bool { return r >= 'A' && r <= 'Z' }) {
				t.Errorf("tracked(%q): not lower case", p)
			}
			params = append(params, p)
			return len(p)%2 == 0
		}
		got := Classify(sql, tracked)
		first := params
		params = nil
		if again := Classify(sql, tracked); !equalResult(got, again) || !slices.Equal(first, params) {
			t.Fatalf("Classify(%q) not deterministic: %+v, then %+v", sql, got, again)
		}
		if got.Statements < 0 || got.Statements > strings.Count(sql, ";")+1 {
			t.Fatalf("Classify(%q): %d statements", sql, got.Statements)
		}
		switch got.Pin {
		case None, Listen, AdvisoryLock, TempTable, WithHoldCursor, SQLPrepare, SetRole, Load, SetUntracked:
		default:
			t.Fatalf("Classify(%q): unknown reason %q", sql, got.Pin)
		}
		for _, name := range got.Deallocate {
			if name == "" || len(name) > maxIdentLen {
				t.Fatalf("Classify(%q): bad name %q", sql, name)
			}
		}
		if got.Statements == 0 && (got.Pin != None || got.SetsTracked || got.DiscardAll || got.Deallocate != nil) {
			t.Fatalf("Classify(%q): effects without statements: %+v", sql, got)
		}

		// A statement before sql that ends cleanly changes nothing but the count.
		params = nil
		prefixed := Classify("select 1;"+sql, tracked)
		got.Statements++
		if !equalResult(prefixed, got) || !slices.Equal(first, params) {
			t.Fatalf("Classify(%q) = %+v, but with a statement before: %+v", sql, got, prefixed)
		}
	})
}
