package pgtest

import (
	"context"

	"github.com/pgsidecar/pgsidecar/internal/pgcluster"
)

// Options configures a cluster started by [Start] or [Must]; see
// [pgcluster.Options].
type Options = pgcluster.Options

// Cluster is a throwaway PostgreSQL cluster; see [pgcluster.Cluster].
type Cluster = pgcluster.Cluster

// Start creates and starts a cluster; the caller must Close it. See
// [pgcluster.Start].
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	return pgcluster.Start(ctx, opts)
}

// Available reports whether PostgreSQL server binaries are found: nil when
// they are, otherwise an error saying what is missing and where it looked.
func Available() error {
	return pgcluster.Available()
}
