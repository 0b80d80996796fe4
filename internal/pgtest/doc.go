// Package pgtest starts throwaway PostgreSQL clusters for integration tests
// and for local development (`make run` without a DATABASE_URL).
//
// Each call to [Start] runs initdb in its own temporary directory, picks a free
// loopback TCP port, places the Unix socket in that directory and starts the
// server with pg_ctl. Clusters are independent, so test packages that run in
// parallel (go test ./...) can each start their own. Durability is traded for
// speed: fsync, synchronous_commit and full_page_writes are off.
//
// The package does not import "testing"; tests use [Must], which takes the
// small [TB] interface that *testing.T satisfies:
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
// Other callers use [Start] and must call [Cluster.Close]:
//
//	pg, err := pgtest.Start(ctx, pgtest.Options{Logger: logger})
//	if err != nil {
//		return err
//	}
//	defer pg.Close()
//
// Binaries: PGSIDECAR_PG_BIN names the directory holding initdb, pg_ctl and
// postgres; otherwise the highest version under /usr/lib/postgresql/*/bin
// (Debian layout) is used, then $PATH.
//
// Running as root: PostgreSQL refuses to run as root, so the server, initdb
// and pg_ctl run as the "postgres" system user (created with useradd if it
// is missing) and the cluster directory is owned by that user.
//
// Leaks: the postmaster runs in its own session, detached from the test
// process. [Cluster.Close] always stops it (escalating to SIGKILL) and removes
// the directory, also when a test panics, because [Must] registers Close with
// t.Cleanup. A test process killed outright (SIGKILL, a crashed go test
// binary or a timeout that kills the process) can leak a postmaster and its
// directory under os.TempDir() (named pgtest-*); this is accepted.
package pgtest
