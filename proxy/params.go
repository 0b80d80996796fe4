package proxy

import (
	"context"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy/classify"
	"github.com/pgsidecar/pgsidecar/proxy/txmode"
)

// A client's session parameters (its startup parameters, options=-c settings, and what it later
// SETs of the tracked parameters) are its own: every server it gets is brought to the same values
// before its first message there. session.params holds the values the client set explicitly
// (lower-case names); serverState.params holds the values set on a server beyond the defaults
// it started with.

// startupOnly are startup packet keys that are not run-time parameters.
var startupOnly = map[string]bool{"user": true, "database": true, "replication": true, "options": true}

// clientParams derives a client's explicit parameters from its startup packet, leaving out those
// equal to what the server reports by default (serverParams, as reported at login).
func clientParams(st *startup, serverParams map[string]string) map[string]string {
	// The server's names are matched without case by a scan: a client sends a handful of
	// parameters, and a map of the lowered names cost every login an allocation per name.
	isDefault := func(name, value string) bool {
		for k, v := range serverParams {
			if strings.EqualFold(k, name) {
				return strings.EqualFold(v, value)
			}
		}
		return false
	}
	params := make(map[string]string)
	set := func(name, value string) {
		name = strings.ToLower(name)
		if isDefault(name, value) {
			delete(params, name)
			return
		}
		params[name] = value
	}
	for _, p := range st.params {
		if startupOnly[p.name] {
			continue
		}
		set(p.name, p.value)
	}
	for name, value := range parseOptions(st.get("options")) {
		set(name, value)
	}
	return params
}

// parseOptions reads the settings in a startup "options" value: "-c name=value" and
// "--name=value" arguments separated by spaces, with backslash escaping, as PostgreSQL does.
func parseOptions(opts string) map[string]string {
	var args []string
	var cur strings.Builder
	inArg := false
	for i := 0; i < len(opts); i++ {
		c := opts[i]
		switch {
		case c == '\\' && i+1 < len(opts):
			i++
			cur.WriteByte(opts[i])
			inArg = true
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteByte(c)
			inArg = true
		}
	}
	if inArg {
		args = append(args, cur.String())
	}
	out := make(map[string]string)
	for i := 0; i < len(args); i++ {
		var kv string
		switch a := args[i]; {
		case a == "-c" && i+1 < len(args):
			i++
			kv = args[i]
		case strings.HasPrefix(a, "-c"):
			kv = a[2:]
		case strings.HasPrefix(a, "--"):
			kv = a[2:]
		default:
			continue
		}
		name, value, ok := strings.Cut(kv, "=")
		if !ok || name == "" {
			continue
		}
		out[strings.ReplaceAll(name, "-", "_")] = value
	}
	return out
}

// paramsSQL returns the statements that bring a server whose explicit settings are have to the
// explicit settings want, or "" when they already agree. Values go through set_config, which
// parses them like postgresql.conf does (list values such as search_path included).
func paramsSQL(want, have map[string]string) string {
	if maps.Equal(want, have) {
		return ""
	}
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(have)) {
		if _, ok := want[name]; !ok {
			b.WriteString("RESET ")
			b.WriteString(quoteIdent(name))
			b.WriteString("; ")
		}
	}
	first := true
	for _, name := range slices.Sorted(maps.Keys(want)) {
		if v, ok := have[name]; ok && v == want[name] {
			continue
		}
		if first {
			b.WriteString("SELECT ")
			first = false
		} else {
			b.WriteString(", ")
		}
		b.WriteString("pg_catalog.set_config(")
		b.WriteString(quoteLiteral(name))
		b.WriteString(", ")
		b.WriteString(quoteLiteral(want[name]))
		b.WriteString(", false)")
	}
	return b.String()
}

// quoteLiteral quotes s as an escape string constant (E'...'), whose meaning does not depend
// on the server's standard_conforming_strings.
func quoteLiteral(s string) string {
	return "E'" + strings.NewReplacer(`\`, `\\`, "'", "''").Replace(s) + "'"
}
func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// paramsIntern shares the parameter maps of clients that start with the same parameters (most
// clients of an application do): a session's Params is replaced whole when it changes, never
// written, so one map can serve them all, and an idle client holds none of its own.
type paramsIntern struct {
	mu sync.Mutex
	m  map[string]internedParams
}

// internedParams is a shared parameter map and its key (the table's copy, shared too).
type internedParams struct {
	key    string
	params map[string]string
}

// Bounds of paramsIntern: a client choosing parameters of its own (a random application_name)
// gets a map of its own once the table is full, rather than growing it.
const (
	maxInternedParams   = 256
	maxInternedKeyBytes = 1024
)

// intern returns params, or an equal map already in use, and its key (paramsKeyOf). Finding
// one allocates nothing: the key is built on the stack.
func (pi *paramsIntern) intern(params map[string]string) (map[string]string, string) {
	var buf [512]byte
	kb := appendParamsKey(buf[:0], params)
	if len(kb) > maxInternedKeyBytes {
		return params, string(kb)
	}
	pi.mu.Lock()
	defer pi.mu.Unlock()
	if e, ok := pi.m[string(kb)]; ok {
		return e.params, e.key
	}
	key := string(kb)
	if len(pi.m) < maxInternedParams {
		if pi.m == nil {
			pi.m = make(map[string]internedParams)
		}
		pi.m[key] = internedParams{key: key, params: params}
	}
	return params, key
}

// paramsKeyOf returns a canonical form of a parameter set: equal sets, and only they, have
// equal keys. Parameter names and values cannot contain NUL (the protocol ends strings with it).
func paramsKeyOf(params map[string]string) string {
	return string(appendParamsKey(nil, params))
}

// appendParamsKey appends paramsKeyOf(params) to b.
func appendParamsKey(b []byte, params map[string]string) []byte {
	var buf [16]string
	names := buf[:0]
	for name := range params {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		b = append(b, name...)
		b = append(b, 0)
		b = append(b, params[name]...)
		b = append(b, 0)
	}
	return b
}

// syncParams brings a server to the client's parameters before the client uses it.
func (s *session) syncParams(ctx context.Context, c *pool.Conn) error {
	st := stateOf(c)
	if st.ParamsKey == s.ParamsKey {
		return nil // the common case, on every attach: one string comparison
	}
	sql := paramsSQL(s.Params, st.Params)
	if sql == "" {
		st.ParamsKey = s.ParamsKey
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.Exec(ctx, sql); err != nil {
		st.Params, st.ParamsKey = nil, ""
		return err
	}
	st.Params, st.ParamsKey = maps.Clone(s.Params), s.ParamsKey
	return nil
}

// rereadParams reads back which parameters differ from the server's start values after the
// client changed some with SQL, and makes that the client's view. Called on a server no longer
// attached; on failure the server's state is unknown and the caller destroys it.
func (s *session) rereadParams(c *pool.Conn) error {
	// Every parameter the role may set whose value differs from the session's start; those the
	// tracker does not replay are dropped below (their change pinned the client instead).
	sql := "SELECT lower(name), pg_catalog.current_setting(name) FROM pg_catalog.pg_settings WHERE context IN ('user', 'superuser') AND setting IS DISTINCT FROM reset_val"
	s.mu.Lock()
	if custom := s.CustomParams(); len(custom) > 0 {
		// Custom parameters are not in pg_settings; an empty one was reset.
		names := make([]string, len(custom))
		for i, n := range custom {
			names[i] = "(" + quoteLiteral(n) + ")"
		}
		sql += " UNION ALL SELECT n, v FROM (SELECT n, pg_catalog.current_setting(n, true) AS v FROM (VALUES " +
			strings.Join(names, ", ") + ") AS c(n)) AS s WHERE v <> ''"
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(s.srv.ctx, 10*time.Second)
	defer cancel()
	rows, err := c.QueryRows(ctx, sql)
	if err != nil {
		return err
	}
	params := make(map[string]string, len(rows))
	s.mu.Lock()
	for _, r := range rows {
		if len(r) == 2 && r[0] != nil && r[1] != nil {
			if name := string(r[0]); s.Replays(name) || s.Params[name] != "" {
				params[name] = string(r[1])
			}
		}
	}
	s.mu.Unlock()
	key := paramsKeyOf(params)
	s.mu.Lock()
	s.Params, s.ParamsKey = params, key
	pin := s.Pinned == "" && s.txPooling && classify.UnsafeEncoding(params["client_encoding"])
	if pin {
		// The client switched to an encoding the classifier cannot read: it keeps the next
		// server it gets (see session.startup).
		s.Pinned, s.pinnedAt = classify.ClientEncoding, s.srv.stampNow()
	}
	s.mu.Unlock()
	if pin {
		s.srv.metrics.pinned(string(classify.ClientEncoding))
		s.log.Info("client pinned to its server connection", "reason", string(classify.ClientEncoding))
	}
	st := stateOf(c)
	st.Params, st.ParamsKey = maps.Clone(params), key
	return nil
}

// welcomeCache keeps the ParameterStatus messages a login sends, encoded, per pool and client
// parameter set: the clients of an application log in with the same parameters, and building
// the messages (a copy of the server's parameters, sorted and encoded) cost every login a
// dozen allocations. A pool reads its server's parameters once, at its first connection, and
// keeps them (pool.ServerParams), so an entry does not go stale; the cache is emptied when
// full, which also lets go of pools removed meanwhile.
type welcomeCache struct {
	mu sync.Mutex
	m  map[welcomeKey][]byte
}

type welcomeKey struct {
	pool   *pool.Pool
	params string // the client's ParamsKey
}

// maxWelcomes bounds welcomeCache (entries of a few hundred bytes each; a key is at most
// maxInternedKeyBytes).
const maxWelcomes = 256

// get returns the ParameterStatus messages for a client of p with parameters client (key
// their ParamsKey), p's server reporting server.
func (wc *welcomeCache) get(p *pool.Pool, server, client map[string]string, key string) []byte {
	if len(key) > maxInternedKeyBytes {
		// Parameters of a client's own, as paramsIntern does not share: not kept either.
		return appendParameterStatus(nil, reportedParams(server, client))
	}
	k := welcomeKey{pool: p, params: key}
	wc.mu.Lock()
	b, ok := wc.m[k]
	wc.mu.Unlock()
	if ok {
		return b
	}
	b = appendParameterStatus(nil, reportedParams(server, client))
	wc.mu.Lock()
	if len(wc.m) >= maxWelcomes {
		clear(wc.m)
	}
	if wc.m == nil {
		wc.m = make(map[welcomeKey][]byte)
	}
	wc.m[k] = b
	wc.mu.Unlock()
	return b
}

// appendParameterStatus appends a ParameterStatus message for each of params, by name.
func appendParameterStatus(buf []byte, params map[string]string) []byte {
	for _, name := range slices.Sorted(maps.Keys(params)) {
		buf, _ = (&pgproto3.ParameterStatus{Name: name, Value: params[name]}).Encode(buf)
	}
	return buf
}

// reportedParams is what the client is told at login: the server's reported parameters, with
// the values the client asked for itself.
func reportedParams(server, client map[string]string) map[string]string {
	out := maps.Clone(server)
	for name := range out {
		if v, ok := client[strings.ToLower(name)]; ok {
			out[name] = v
		}
	}
	return out
}

// stateOf returns what the tracker knows of server connection c, kept in its Tag.
func stateOf(c *pool.Conn) *txmode.ServerState {
	if st, ok := c.Tag.(*txmode.ServerState); ok {
		return st
	}
	st := txmode.NewServerState()
	c.Tag = st
	return st
}
