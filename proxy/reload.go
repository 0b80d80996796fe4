package proxy

import (
	"errors"
	"fmt"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy/auth"
)

// Reloading: a new configuration is put in force while clients stay connected. Logins read it
// as they happen; a transaction-mode client moves to its route's new pool at its next
// transaction (rebind); pools whose route still leads to them are resized and retuned in place,
// and the others are dropped, their servers closed as they are released.

// Reload puts cfg, already validated, in force without dropping a client: users and passwords
// apply to the next login, timeouts and limits to what happens next, pool settings to the pools
// at once. What only a restart can change (listen addresses, the client TLS files, the HTTP
// listener, the profile's process settings) is the caller's to report; the Server keeps what it
// started with. On error nothing has changed.
func (s *Server) Reload(cfg *config.Config) error {
	if method, err := auth.ParseMethod(cfg.AuthType); err == nil && method != auth.Trust {
		users := make(map[string]string, len(cfg.Users))
		for _, u := range cfg.Users {
			users[u.Name] = u.Password
		}
		if err := s.creds.Prepare(users); err != nil {
			return fmt.Errorf("prepare scram credentials: %w", err)
		}
	}
	if _, err := cfg.ConfiguredUpstreams(); err != nil {
		return fmt.Errorf("configured routes: %w", err)
	}
	s.cfg.Store(cfg)
	s.stmts.SetMax(cfg.MaxPreparedStatementBytes)
	s.pools.SetMaxPools(cfg.MaxPools)
	s.routeGen.Add(1)
	s.pools.Each(func(p *pool.Pool) {
		k, ok := s.routes.originOf(p.Key())
		if !ok {
			return
		}
		up, err := s.routes.resolve(cfg, k.database, k.user)
		var pc pool.Config
		if err == nil && up.Key == p.Key() {
			pc, err = s.poolConfig(up)
		}
		if err != nil || up.Key != p.Key() {
			s.pools.Drop(p.Key())
			return
		}
		s.pools.Reconfigure(pc)
	})
	return s.openConfiguredPools()
}

// rebind moves a transaction-mode client to the pool its route leads to now, once after each
// reload, before it takes a server. A route that no longer resolves ends the client (its
// transaction is over).
func (s *session) rebind() error {
	gen := s.srv.routeGen.Load()
	seen := s.routeGen.Load()
	if gen == seen || !s.routeGen.CompareAndSwap(seen, gen) {
		return nil
	}
	up, err := s.srv.routes.resolve(s.srv.config(), s.database, s.user)
	if err != nil {
		return &startupError{code: retry.CodeInvalidCatalogName, msg: fmt.Sprintf("pgsidecar: the configuration was reloaded and no longer routes database %q and user %q", s.database, s.user)}
	}
	old := s.pool()
	if cur, ok := s.srv.pools.Lookup(up.Key); ok && cur == old {
		return nil // the same pool, retuned in place
	}
	p, err := s.srv.pools.Join(up.Key, func() (pool.Config, error) { return s.srv.poolConfig(up) })
	if err != nil {
		return joinError(err, s.database, s.user)
	}
	s.srv.routes.used(up.Key, s.database, s.user, s.srv.poolExists)
	s.mu.Lock()
	s.foldUsageLocked() // what the client did on the old pool is counted there
	s.setPool(p)
	s.obs = s.srv.metrics.observersFor(up.Database, up.User)
	s.mu.Unlock()
	s.srv.pools.Leave(old)
	return nil
}

// joinError is what a client is told when Set.Join fails.
func joinError(err error, database, user string) error {
	switch {
	case errors.Is(err, pool.ErrTooManyPools):
		return &startupError{code: retry.CodeTooManyConnections, msg: fmt.Sprintf("pgsidecar: no pool for database %q and user %q: %v; raise max_pools or configure a route", database, user, err)}
	case errors.Is(err, pool.ErrClosed):
		return &startupError{code: retry.CodeAdminShutdown, msg: "pgsidecar is shutting down"}
	}
	return err
}

// poolExists reports whether the pool for key is in the Set.
func (s *Server) poolExists(key string) bool {
	_, ok := s.pools.Lookup(key)
	return ok
}
