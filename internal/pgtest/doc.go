// Package pgtest gives integration tests throwaway PostgreSQL clusters. The
// clusters themselves are internal/pgcluster's; this package adds what only
// tests need and is never linked into the binary (cmd/pgsidecar checks that).
//
// Tests use [Must], which takes the small [TB] interface that *testing.T
// satisfies and closes the cluster in t.Cleanup:
//
//	func TestSomething(t *testing.T) {
//		if testing.Short() {
//			t.Skip("needs PostgreSQL")
//		}
//		pg := pgtest.Must(t, pgtest.Options{})
//		conn, err := pgx.Connect(ctx, pg.DSN("postgres"))
//		...
//	}
//
// A test that shares one cluster across tests calls [Start] and closes the
// cluster itself. Binaries, running as root and leaks are described in
// internal/pgcluster.
//
// When the PostgreSQL binaries are missing, [Must] skips the test unless
// [Required] says they must be there (CI=true, or PGSIDECAR_REQUIRE_PG=1,
// which `make test` sets); then it fails.
package pgtest
