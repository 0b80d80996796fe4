package proxy

import (
	"sync"

	"github.com/pgsidecar/pgsidecar/config"
)

// routeCache remembers config.Resolve's answers per (database, user). Resolving parses the
// upstream connection string, which a client that connects for every transaction would
// otherwise pay at each login. The answers are those of one configuration: resolving with
// another (after a reload) starts afresh.
type routeCache struct {
	mu     sync.Mutex
	cfg    *config.Config // the configuration routes were resolved with
	routes map[routeKey]config.Upstream
	// origin remembers, for each pool key a login used, one (database, user) pair that led to
	// it, so that a reload can tell what became of the pool's route.
	origin map[string]routeKey
}

type routeKey struct{ database, user string }

// maxCachedRoutes bounds the cache: clients choose the names, and any name may resolve (with
// database_url alone, every pair does).
const maxCachedRoutes = 1024

// used records that the pair (database, user) logged in through the pool key, and drops the
// records of pools that are gone once there are many.
func (c *routeCache) used(key, database, user string, exists func(key string) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.origin[key]; ok {
		return
	}
	if c.origin == nil {
		c.origin = make(map[string]routeKey)
	}
	if len(c.origin) >= maxCachedRoutes {
		for k := range c.origin {
			if !exists(k) {
				delete(c.origin, k)
			}
		}
	}
	c.origin[key] = routeKey{database, user}
}

// originOf returns the pair recorded for the pool key.
func (c *routeCache) originOf(key string) (routeKey, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k, ok := c.origin[key]
	return k, ok
}

// resolve is cfg.Resolve(database, user), from the cache when it can be. Failures are not
// cached.
func (c *routeCache) resolve(cfg *config.Config, database, user string) (config.Upstream, error) {
	k := routeKey{database, user}
	c.mu.Lock()
	up, ok := c.routes[k]
	ok = ok && c.cfg == cfg
	c.mu.Unlock()
	if ok {
		return up, nil
	}
	up, err := cfg.Resolve(database, user)
	if err != nil {
		return up, err
	}
	c.mu.Lock()
	if c.routes == nil || c.cfg != cfg {
		c.routes = make(map[routeKey]config.Upstream)
		c.cfg = cfg
	}
	if len(c.routes) < maxCachedRoutes {
		c.routes[k] = up
	}
	c.mu.Unlock()
	return up, nil
}
