package proxy

import (
	"sync"

	"github.com/pgsidecar/pgsidecar/config"
)

// routeCache remembers config.Resolve's answers per (database, user). Resolving parses the
// upstream connection string, which a client that connects for every transaction would
// otherwise pay at each login. The configuration never changes while the server runs.
type routeCache struct {
	mu     sync.Mutex
	routes map[routeKey]config.Upstream
}

type routeKey struct{ database, user string }

// maxCachedRoutes bounds the cache: clients choose the names, and any name may resolve (with
// database_url alone, every pair does).
const maxCachedRoutes = 1024

// resolve is cfg.Resolve(database, user), from the cache when it can be. Failures are not
// cached.
func (c *routeCache) resolve(cfg *config.Config, database, user string) (config.Upstream, error) {
	k := routeKey{database, user}
	c.mu.Lock()
	up, ok := c.routes[k]
	c.mu.Unlock()
	if ok {
		return up, nil
	}
	up, err := cfg.Resolve(database, user)
	if err != nil {
		return up, err
	}
	c.mu.Lock()
	if c.routes == nil {
		c.routes = make(map[routeKey]config.Upstream)
	}
	if len(c.routes) < maxCachedRoutes {
		c.routes[k] = up
	}
	c.mu.Unlock()
	return up, nil
}
