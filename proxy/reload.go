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
	// Everything that can fail is checked before anything changes: a connection string whose
	// files (sslrootcert, sslcert) do not load rejects the reload, not a route.
	ups, err := cfg.ConfiguredUpstreams()
	if err != nil {
		return fmt.Errorf("configured routes: %w", err)
	}
	for _, up := range ups {
		if _, err := s.poolConfig(up); err != nil {
			return fmt.Errorf("route %s/%s: %w", up.ClientDatabase, up.ClientUser, err)
		}
	}
	var retune []pool.Config
	var drop []string
	var planErr error
	s.pools.Each(func(p *pool.Pool) {
		k, ok := s.routes.originOf(p.Key())
		if !ok || planErr != nil {
			return
		}
		up, err := s.routes.resolve(cfg, k.database, k.user)
		if err != nil || up.Key != p.Key() {
			drop = append(drop, p.Key())
			return
		}
		pc, err := s.poolConfig(up)
		if err != nil {
			planErr = fmt.Errorf("pool for %s/%s: %w", k.database, k.user, err)
			return
		}
		retune = append(retune, pc)
	})
	if planErr != nil {
		return planErr
	}
	if method, err := auth.ParseMethod(cfg.AuthType); err == nil && method != auth.Trust {
		users := make(map[string]string, len(cfg.Users))
		for _, u := range cfg.Users {
			users[u.Name] = u.Password
		}
		if err := s.creds.Prepare(users); err != nil {
			return fmt.Errorf("prepare scram credentials: %w", err)
		}
	}

	s.cfg.Store(cfg)
	s.stmts.SetMax(cfg.MaxPreparedStatementBytes)
	s.pools.SetMaxPools(cfg.MaxPools)
	s.routeGen.Add(1)
	for _, pc := range retune {
		s.pools.Reconfigure(pc)
	}
	for _, key := range drop {
		s.pools.Drop(key)
	}
	if err := s.openConfiguredPools(); err != nil {
		// Checked above; only a race with Close (shutting down) gets here.
		s.log.Warn("reload: configured pools", "err", err)
	}
	return nil
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
	s.route = routeOf(up)
	s.obs = s.srv.metrics.sessionObserversFor(up.Database, up.User)
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
