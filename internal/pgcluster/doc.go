// Package pgcluster starts disposable PostgreSQL clusters: the one `make run`
// proxies to when no DATABASE_URL is given, and, through internal/pgtest,
// the ones integration tests run against. It is linked into the binary, so it
// must not import "testing" or anything test-only; test helpers belong in
// internal/pgtest.
//
// Each call to [Start] runs initdb in its own temporary directory, picks a free
// loopback TCP port, places the Unix socket in that directory and starts the
// server with pg_ctl. Clusters are independent, so processes that run in
// parallel (go test ./...) can each start their own. Durability is traded for
// speed: fsync, synchronous_commit and full_page_writes are off. Callers must
// call [Cluster.Close]:
//
//	pg, err := pgcluster.Start(ctx, pgcluster.Options{Logger: logger})
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
// Leaks: the postmaster runs in its own session, detached from the calling
// process. [Cluster.Close] always stops it (escalating to SIGKILL) and removes
// the directory. A process killed outright (SIGKILL, a crashed go test binary
// or a timeout that kills the process) can leak a postmaster and its
// directory under os.TempDir() (named pgcluster-*); this is accepted.
package pgcluster
