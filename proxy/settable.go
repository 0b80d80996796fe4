package proxy

import (
	"strconv"
	"strings"
	"sync"
)

// A client's session-level change of a run-time parameter is replayed on every server it gets
// when its upstream role may make that change itself: built-in parameters of context "user",
// those of context "superuser" the role may set (a superuser, or GRANT SET ON PARAMETER), and
// custom placeholders ("app.tenant_id"). The set is read from pg_settings once per route. A
// change of anything else pins the client (set_untracked), as do the exceptions below.

// settableParams is the set of parameters one route's clients may change and have replayed.
type settableParams struct {
	names map[string]bool
	// replayedFn is replayed, bound once: a method value made per client would cost each
	// client an allocation it keeps.
	replayedFn func(name string) bool
}

// replayed reports whether a change of parameter name (lower case) is replayed.
func (p *settableParams) replayed(name string) bool {
	switch name {
	case "standard_conforming_strings":
		// The SQL classifier reads string literals as PostgreSQL does with it on.
		return false
	case "role", "session_authorization":
		return false // state of the connection's identity: pinned (set_role)
	}
	return strings.Contains(name, ".") || p.names[name]
}

// settableCache keeps each route's settable parameters.
type settableCache struct {
	mu      sync.Mutex
	byRoute map[string]*settableParams
}

// maxSettableRoutes bounds the routes whose settable parameters are kept.
const maxSettableRoutes = 1024

func (c *settableCache) get(key string) *settableParams {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.byRoute[key]
}

func (c *settableCache) put(key string, p *settableParams) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byRoute == nil {
		c.byRoute = make(map[string]*settableParams)
	}
	if len(c.byRoute) < maxSettableRoutes {
		c.byRoute[key] = p
	}
}

// settableSQL lists the parameters the connected role may set, for a server whose
// server_version is version ("" if unknown).
func settableSQL(version string) string {
	major, _ := strconv.Atoi(strings.SplitN(version, ".", 2)[0])
	canSet := "(SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)"
	if major >= 15 {
		canSet = "pg_catalog.has_parameter_privilege(name, 'SET')"
	}
	return "SELECT lower(name) FROM pg_catalog.pg_settings WHERE context = 'user' OR (context = 'superuser' AND " + canSet + ")"
}

// useSettableParams makes the client's tracker replay the parameters of its route's settable
// set, reading the set from a server first if no client of the route has. If it cannot be read,
// the tracker keeps its built-in list.
func (s *session) useSettableParams(wait *loginWait, serverParams map[string]string) {
	key := s.route.key
	p := s.srv.settable.get(key)
	if p == nil {
		ctx := wait.context()
		c, err := s.pool().Acquire(ctx)
		if err != nil {
			s.log.Info("could not read the settable parameters; replaying the built-in list", "err", err)
			return
		}
		rows, err := c.QueryRows(ctx, settableSQL(serverParams["server_version"]))
		if err != nil {
			s.pool().Destroy(c)
			s.log.Info("could not read the settable parameters; replaying the built-in list", "err", err)
			return
		}
		s.pool().Release(c)
		p = &settableParams{names: make(map[string]bool, len(rows))}
		p.replayedFn = p.replayed
		for _, r := range rows {
			if len(r) == 1 && r[0] != nil {
				p.names[string(r[0])] = true
			}
		}
		s.srv.settable.put(key, p)
	}
	s.Tracker.SetReplayed(p.replayedFn)
}
