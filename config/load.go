package config

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// EnvPrefix is the prefix of every environment variable pgsidecar reads,
// except DATABASE_URL and KUBERNETES_SERVICE_HOST.
const EnvPrefix = "PGSIDECAR_"

type kind int

const (
	kindString kind = iota
	kindInt
	kindBool
	kindDuration
	kindList
)

// setting describes one scalar (or string list) key: its name in the file,
// its type, where it lives in Config and its flag help text. users and
// routes are not settings: they are lists of records (see decodeUsers and
// decodeRoutes).
type setting struct {
	name  string // file key; "." separates nesting ("tls.cert_file")
	kind  kind
	field func(*Config) any // pointer to the Config field
	usage string
}

// flagName is the flag for the key: "tls.cert_file" -> "tls-cert-file".
func (s setting) flagName() string {
	return strings.NewReplacer("_", "-", ".", "-").Replace(s.name)
}

// envName is the environment variable for the key:
// "tls.cert_file" -> "PGSIDECAR_TLS_CERT_FILE".
func (s setting) envName() string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(s.name, ".", "_"))
}

// settings lists every key except users and routes, in documentation order.
var settings = []setting{
	{"profile", kindString, func(c *Config) any { return &c.Profile }, `defaults profile: "local", "production" or "edge" (default: production if KUBERNETES_SERVICE_HOST is set, else local)`},
	{"listen", kindList, func(c *Config) any { return &c.Listen }, `client listen addresses, comma-separated host:port (default "127.0.0.1:6432")`},
	{"http_listen", kindString, func(c *Config) any { return &c.HTTPListen }, `HTTP (health, metrics) listen address; "" disables (default "127.0.0.1:9930")`},
	{"database_url", kindString, func(c *Config) any { return &c.DatabaseURL }, `default upstream, postgres:// URL or keyword/value DSN (default $DATABASE_URL)`},
	{"pool_mode", kindString, func(c *Config) any { return &c.PoolMode }, `"transaction" or "session" (default "transaction")`},
	{"pool_size", kindInt, func(c *Config) any { return &c.PoolSize }, `server connections per route (default 10 local, 50 production, 100 edge)`},
	{"min_pool_size", kindInt, func(c *Config) any { return &c.MinPoolSize }, `server connections kept open per route (default 0)`},
	{"max_client_conn", kindInt, func(c *Config) any { return &c.MaxClientConn }, `maximum client connections in total (default 1000)`},
	{"query_wait_timeout", kindDuration, func(c *Config) any { return &c.QueryWaitTimeout }, `how long a client waits for a server connection; 0 waits forever (default 30s)`},
	{"query_wait_notice", kindDuration, func(c *Config) any { return &c.QueryWaitNotice }, `send a waiting client a NOTICE after it waited this long for a server connection; 0 never (default 0)`},
	{"server_idle_timeout", kindDuration, func(c *Config) any { return &c.ServerIdleTimeout }, `close server connections idle this long; 0 never (default 10m)`},
	{"server_lifetime", kindDuration, func(c *Config) any { return &c.ServerLifetime }, `close server connections older than this once released; 0 never (default 1h)`},
	{"server_check_delay", kindDuration, func(c *Config) any { return &c.ServerCheckDelay }, `check a server connection idle longer than this before reuse; 0 always (default 30s)`},
	{"server_reset_query", kindString, func(c *Config) any { return &c.ServerResetQuery }, `query run on a server connection released in session mode; "" none (default "DISCARD ALL")`},
	{"connect_timeout", kindDuration, func(c *Config) any { return &c.ConnectTimeout }, `upstream dial and login timeout per attempt (default 5s local, 10s production, 5s edge)`},
	{"query_timeout", kindDuration, func(c *Config) any { return &c.QueryTimeout }, `cancel a request's server query after this; 0 none (default 60s local, 30s production, 15s edge)`},
	{"retries", kindInt, func(c *Config) any { return &c.Retries }, `transaction mode: times a request refused by a terminating server is sent to another server; 0 never (default 2 local, 3 production, 5 edge)`},
	{"retry_delay", kindDuration, func(c *Config) any { return &c.RetryDelay }, `first delay between upstream dial attempts, exponential with jitter; 0 means 100ms (default 500ms local, 1s production, 200ms edge)`},
	{"retry_max_delay", kindDuration, func(c *Config) any { return &c.RetryMaxDelay }, `cap of the exponential backoff between dial attempts and request re-sends; 0 means 2s (default 2s)`},
	{"idle_transaction_timeout", kindDuration, func(c *Config) any { return &c.IdleTransactionTimeout }, `disconnect a client idle in a transaction this long; 0 off (default 0)`},
	{"client_idle_timeout", kindDuration, func(c *Config) any { return &c.ClientIdleTimeout }, `disconnect a client idle this long; 0 off (default 0)`},
	{"client_write_timeout", kindDuration, func(c *Config) any { return &c.ClientWriteTimeout }, `end a client a write to which stays blocked this long (it reads nothing); 0 never (default 60s)`},
	{"client_login_timeout", kindDuration, func(c *Config) any { return &c.ClientLoginTimeout }, `time a client has to complete startup and authentication; 0 none (default 15s)`},
	{"max_logins_in_progress", kindInt, func(c *Config) any { return &c.MaxLoginsInProgress }, `connections still logging in; at the bound the oldest login in progress, if over a second old, is closed to make room, else the new connection is refused with 53300; at least 1 (default 1000)`},
	{"max_pools", kindInt, func(c *Config) any { return &c.MaxPools }, `pools for (database, user) pairs that are not configured routes; one more is refused with 53300; at least 1 (default 100)`},
	{"tcp_keepalive", kindBool, func(c *Config) any { return &c.TCPKeepAlive }, `TCP keepalive probes on client and server sockets (default true)`},
	{"tcp_keepidle", kindDuration, func(c *Config) any { return &c.TCPKeepIdle }, `idle time before the first keepalive probe, whole seconds; 0 = Go's 15s (default 30s)`},
	{"tcp_keepintvl", kindDuration, func(c *Config) any { return &c.TCPKeepInterval }, `time between keepalive probes, whole seconds; 0 = Go's 15s (default 10s)`},
	{"tcp_keepcnt", kindInt, func(c *Config) any { return &c.TCPKeepCount }, `unanswered keepalive probes before a connection is dropped; 0 = Go's 9 (default 3)`},
	{"tcp_user_timeout", kindDuration, func(c *Config) any { return &c.TCPUserTimeout }, `TCP_USER_TIMEOUT (Linux): drop a connection whose sent data stays unacknowledged this long; 0 = kernel default, off (default 60s)`},
	{"dns_max_ttl", kindDuration, func(c *Config) any { return &c.DNSMaxTTL }, `how long an upstream host name's addresses are used before they are looked up again; 0 = on every dial (default 15s)`},
	{"max_message_size", kindInt, func(c *Config) any { return &c.MaxMessageSize }, `largest protocol message accepted, in bytes, at least 1024 (default 1073741824)`},
	{"max_procs", kindInt, func(c *Config) any { return &c.MaxProcs }, `threads running Go code (GOMAXPROCS); 0 = Go's default, the CPU count or container CPU limit (default 1)`},
	{"max_procs_queued", kindInt, func(c *Config) any { return &c.MaxProcsQueued }, `threads running Go code while clients queue deep for servers (at most the CPU count or container CPU limit); 0 = always max_procs (default 2)`},
	{"session_state", kindString, func(c *Config) any { return &c.SessionState }, `transaction mode, for SQL that leaves state on the server (LISTEN, session advisory locks, temp tables, ...): "pin" the client to its server, or "refuse" the statement with an error (default "pin")`},
	{"max_prepared_statements", kindInt, func(c *Config) any { return &c.MaxPreparedStatements }, `prepared statements kept per server connection in transaction mode, least recently used closed first; 0 = no limit (default 200)`},
	{"max_client_prepared_statements", kindInt, func(c *Config) any { return &c.MaxClientPreparedStatements }, `named prepared statements one client may hold in transaction mode; more fail with 53400; 0 = no limit (default 1000)`},
	{"max_prepared_statement_bytes", kindInt, func(c *Config) any { return &c.MaxPreparedStatementBytes }, `bytes of statement text the shared prepared-statement registry holds in transaction mode; a new statement beyond it fails with 53400; 0 = no limit (default 67108864)`},
	{"max_requests_in_flight", kindInt, func(c *Config) any { return &c.MaxRequestsInFlight }, `requests one transaction-mode client may have awaiting replies; at the limit it is read no further until replies drain; at least 16 (default 1000)`},
	{"auth_type", kindString, func(c *Config) any { return &c.AuthType }, `client authentication: "trust", "md5" or "scram-sha-256" (default "trust")`},
	{"auth_trust_remote", kindBool, func(c *Config) any { return &c.AuthTrustRemote }, `allow auth_type trust on non-loopback listen addresses (default false)`},
	{"tls.cert_file", kindString, func(c *Config) any { return &c.TLS.CertFile }, `PEM certificate for client TLS; with --tls-key-file (default none: no TLS)`},
	{"tls.key_file", kindString, func(c *Config) any { return &c.TLS.KeyFile }, `PEM private key for client TLS; with --tls-cert-file (default none: no TLS)`},
	{"tls.mode", kindString, func(c *Config) any { return &c.TLS.Mode }, `client TLS: "disable", "allow" (when the client asks) or "require" (a plaintext login gets 28000; needs a certificate) (default "allow")`},
	{"log_level", kindString, func(c *Config) any { return &c.LogLevel }, `"debug", "info", "warn" or "error" (default "info")`},
	{"log_format", kindString, func(c *Config) any { return &c.LogFormat }, `"text" or "json" (default text local, json production and edge)`},
}

// fileOnlyKeys are list keys accepted in the file besides settings.
// "tls" appears alone when the file has a bare "tls:".
var fileOnlyKeys = []string{"users", "routes", "tls"}

// NewFlagSet returns a flag set defining --config and one flag per setting
// (--pool-mode, --tls-cert-file, ...). Flags have zero defaults: a flag only
// overrides the other sources when it is given on the command line. The set
// uses pflag.ContinueOnError, so Load returns parse errors (including
// pflag.ErrHelp for --help). users and routes have no flags: pass secrets
// through the file or the environment, not the command line.
func NewFlagSet(name string) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.String("config", "", "YAML config file (env "+EnvPrefix+"CONFIG)")
	for _, s := range settings {
		usage := s.usage + " (env " + s.envName() + ")"
		switch s.kind {
		case kindString:
			fs.String(s.flagName(), "", usage)
		case kindInt:
			fs.Int(s.flagName(), 0, usage)
		case kindBool:
			fs.Bool(s.flagName(), false, usage)
		case kindDuration:
			fs.Duration(s.flagName(), 0, usage)
		case kindList:
			fs.StringSlice(s.flagName(), nil, usage)
		}
	}
	return fs
}

// Load parses args into fs (from NewFlagSet, possibly with more flags added
// by the caller; nil means a new one) and returns the merged, validated
// configuration. A caller that parsed fs itself passes nil args. Parse a flag
// set only once: pflag appends to a list flag given again. environ is the environment as os.Environ returns it; Load
// reads no other environment, so tests can pass their own. When a variable
// appears more than once, the last occurrence wins.
//
// Sources, lowest precedence first: the profile's defaults, the YAML file
// named by --config or PGSIDECAR_CONFIG, the environment, flags given in
// args. The error lists every problem found, one per line, each naming the
// key; it never contains a secret.
func Load(fs *pflag.FlagSet, args []string, environ []string) (*Config, error) {
	if fs == nil {
		fs = NewFlagSet("pgsidecar")
	}
	if args != nil || !fs.Parsed() {
		if err := fs.Parse(args); err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
	}
	env := envMap(environ)

	v := viper.New()
	var errs []error

	path := env[EnvPrefix+"CONFIG"]
	if f := fs.Lookup("config"); f != nil && f.Changed {
		path = f.Value.String()
	}
	if path != "" {
		v.SetConfigFile(path)
		if ext := strings.TrimPrefix(filepath.Ext(path), "."); !slices.Contains(viper.SupportedExts, ext) {
			v.SetConfigType("yaml")
		}
		if err := v.ReadInConfig(); err != nil {
			return nil, fmt.Errorf("config: read file %s: %w", path, err)
		}
		errs = append(errs, checkFileKeys(v.AllKeys())...)
	}

	// Viper's environment support reads the process environment, so the
	// environment layer is fed from environ instead: merged over the file,
	// it ranks above the file and below flags.
	fromEnv, envErrs := envSettings(env)
	errs = append(errs, envErrs...)
	if len(fromEnv) > 0 {
		if err := v.MergeConfigMap(fromEnv); err != nil {
			return nil, fmt.Errorf("config: merge environment: %w", err)
		}
	}

	// Viper ranks a bound flag above everything, but only when it was set
	// on the command line (pflag's Changed).
	for _, s := range settings {
		if f := fs.Lookup(s.flagName()); f != nil {
			if err := v.BindPFlag(s.name, f); err != nil {
				return nil, fmt.Errorf("config: bind flag --%s: %w", s.flagName(), err)
			}
		}
	}

	profile, err := toString(v.Get("profile"))
	if err != nil {
		errs = append(errs, fmt.Errorf("profile: %w", err))
	}
	profile = strings.TrimSpace(profile)
	if profile == "" {
		profile = DetectProfile(env["KUBERNETES_SERVICE_HOST"])
	}
	c := Defaults(profile)
	for _, s := range settings {
		v.SetDefault(s.name, deref(s.field(&c)))
	}
	for _, s := range settings {
		if s.name == "profile" {
			continue
		}
		if err := assign(s.field(&c), s.kind, v.Get(s.name)); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s.name, err))
		}
	}
	users, uerrs := decodeUsers(v.Get("users"))
	errs = append(errs, uerrs...)
	c.Users = users
	routes, rerrs := decodeRoutes(v.Get("routes"))
	errs = append(errs, rerrs...)
	c.Routes = routes

	if err := c.Validate(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &c, nil
}

// DetectProfile returns the profile used when none is configured:
// production when kubernetesServiceHost (the value of
// KUBERNETES_SERVICE_HOST) is not empty, else local.
func DetectProfile(kubernetesServiceHost string) string {
	if kubernetesServiceHost != "" {
		return ProfileProduction
	}
	return ProfileLocal
}

func envMap(environ []string) map[string]string {
	m := make(map[string]string, len(environ))
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			continue
		}
		m[k] = v
	}
	return m
}

func checkFileKeys(keys []string) []error {
	var errs []error
	for _, k := range keys {
		known := slices.Contains(fileOnlyKeys, k) || slices.ContainsFunc(settings, func(s setting) bool { return s.name == k })
		if !known {
			errs = append(errs, fmt.Errorf("%s: unknown key in config file", k))
		}
	}
	slices.SortFunc(errs, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
	return errs
}

// envSettings turns the environment into a nested settings map. A string
// setting set to "" counts (PGSIDECAR_HTTP_LISTEN= disables the HTTP
// server); for other kinds an empty variable is ignored.
func envSettings(env map[string]string) (map[string]any, []error) {
	out := map[string]any{}
	var errs []error
	put := func(name string, val any) {
		m := out
		parts := strings.Split(name, ".")
		for _, p := range parts[:len(parts)-1] {
			sub, ok := m[p].(map[string]any)
			if !ok {
				sub = map[string]any{}
				m[p] = sub
			}
			m = sub
		}
		m[parts[len(parts)-1]] = val
	}
	for _, s := range settings {
		val, ok := env[s.envName()]
		if !ok && s.name == "database_url" {
			val, ok = env["DATABASE_URL"]
		}
		if !ok {
			continue
		}
		switch s.kind {
		case kindString:
			put(s.name, val)
		case kindList:
			if l := splitList(val); len(l) > 0 {
				put(s.name, l)
			}
		default:
			if strings.TrimSpace(val) != "" {
				put(s.name, strings.TrimSpace(val))
			}
		}
	}
	if val, ok := env[EnvPrefix+"USERS"]; ok && strings.TrimSpace(val) != "" {
		users, uerrs := parseUsersEnv(val)
		errs = append(errs, uerrs...)
		if len(uerrs) == 0 {
			put("users", users)
		}
	}
	if _, ok := env[EnvPrefix+"ROUTES"]; ok {
		errs = append(errs, errors.New("routes: can be set only in the config file, not with "+EnvPrefix+"ROUTES"))
	}
	return out, errs
}

// parseUsersEnv parses "alice:secret,bob:SCRAM-SHA-256$..." (entries split on
// ',', each entry on its first ':'). Errors never quote an entry, which may
// hold a secret.
func parseUsersEnv(val string) ([]any, []error) {
	var users []any
	var errs []error
	for i, entry := range strings.Split(val, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		name, pw, ok := strings.Cut(entry, ":")
		if !ok {
			errs = append(errs, fmt.Errorf("users: %sUSERS entry %d has no ':' between name and password", EnvPrefix, i+1))
			continue
		}
		users = append(users, map[string]any{"name": strings.TrimSpace(name), "password": pw})
	}
	return users, errs
}

func splitList(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

func deref(p any) any {
	switch p := p.(type) {
	case *string:
		return *p
	case *int:
		return *p
	case *bool:
		return *p
	case *time.Duration:
		return *p
	case *[]string:
		return *p
	}
	panic(fmt.Sprintf("config: unsupported field type %T", p))
}

// assign converts raw (from any source) to the type of the field dst points
// to. On error, or when raw is nil (a key present but empty in YAML), dst
// is left unchanged.
func assign(dst any, k kind, raw any) error {
	if raw == nil {
		return nil
	}
	switch dst := dst.(type) {
	case *string:
		v, err := toString(raw)
		if err != nil {
			return err
		}
		*dst = v
	case *int:
		v, err := toInt(raw)
		if err != nil {
			return err
		}
		*dst = v
	case *bool:
		v, err := toBool(raw)
		if err != nil {
			return err
		}
		*dst = v
	case *time.Duration:
		v, err := toDuration(raw)
		if err != nil {
			return err
		}
		*dst = v
	case *[]string:
		v, err := toList(raw)
		if err != nil {
			return err
		}
		*dst = v
	default:
		return fmt.Errorf("unsupported field type %T (kind %d)", dst, k)
	}
	return nil
}

func toString(raw any) (string, error) {
	switch v := raw.(type) {
	case nil:
		return "", nil
	case string:
		return v, nil
	case int, int64, uint64, float64, bool:
		return fmt.Sprint(v), nil
	}
	return "", fmt.Errorf("must be a string, got %s", typeName(raw))
}

func toInt(raw any) (int, error) {
	switch v := raw.(type) {
	case int:
		return v, nil
	case int64:
		if v < math.MinInt || v > math.MaxInt {
			return 0, fmt.Errorf("integer %d out of range", v)
		}
		return int(v), nil
	case uint64:
		if v > math.MaxInt {
			return 0, fmt.Errorf("integer %d out of range", v)
		}
		return int(v), nil
	case float64:
		if v != math.Trunc(v) || v < math.MinInt || v > math.MaxInt {
			return 0, fmt.Errorf("must be an integer, got %v", v)
		}
		return int(v), nil
	case string:
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return 0, fmt.Errorf("must be an integer, got %q", v)
		}
		return n, nil
	}
	return 0, fmt.Errorf("must be an integer, got %s", typeName(raw))
}

func toBool(raw any) (bool, error) {
	switch v := raw.(type) {
	case bool:
		return v, nil
	case string:
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return false, fmt.Errorf("must be true or false, got %q", v)
		}
		return b, nil
	}
	return false, fmt.Errorf("must be true or false, got %s", typeName(raw))
}

// toDuration accepts Go duration syntax ("500ms", "1m30s"). A bare number
// other than 0 is refused rather than read as nanoseconds.
func toDuration(raw any) (time.Duration, error) {
	switch v := raw.(type) {
	case time.Duration:
		return v, nil
	case string:
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil {
			return 0, fmt.Errorf(`must be a duration like "30s" or "500ms", got %q`, v)
		}
		return d, nil
	case int, int64, uint64, float64:
		if fmt.Sprint(v) == "0" {
			return 0, nil
		}
		return 0, fmt.Errorf(`must be a duration with a unit like "30s" or "500ms", got %v`, v)
	}
	return 0, fmt.Errorf(`must be a duration like "30s", got %s`, typeName(raw))
}

func toList(raw any) ([]string, error) {
	switch v := raw.(type) {
	case nil:
		return nil, nil
	case string:
		return splitList(v), nil
	case []string:
		var out []string
		for _, e := range v {
			out = append(out, splitList(e)...)
		}
		return out, nil
	case []any:
		out := make([]string, 0, len(v))
		for i, e := range v {
			s, err := toString(e)
			if err != nil {
				return nil, fmt.Errorf("item %d: %w", i, err)
			}
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("must be a list of strings, got %s", typeName(raw))
}

func typeName(v any) string {
	switch v.(type) {
	case map[string]any, map[any]any:
		return "a mapping"
	case []any:
		return "a list"
	}
	return fmt.Sprintf("%T", v)
}

// records converts a list of mappings, as decoded from YAML or built from
// the environment, checking each mapping's keys against allowed.
func records(key string, raw any, allowed []string) ([]map[string]any, []error) {
	if raw == nil {
		return nil, nil
	}
	list, ok := raw.([]any)
	if !ok {
		if l, ok2 := raw.([]map[string]any); ok2 {
			for _, m := range l {
				list = append(list, m)
			}
		} else {
			return nil, []error{fmt.Errorf("%s: must be a list of mappings, got %s", key, typeName(raw))}
		}
	}
	var out []map[string]any
	var errs []error
	for i, item := range list {
		m := map[string]any{}
		switch item := item.(type) {
		case map[string]any:
			for k, v := range item {
				m[strings.ToLower(k)] = v
			}
		case map[any]any:
			for k, v := range item {
				m[strings.ToLower(fmt.Sprint(k))] = v
			}
		default:
			errs = append(errs, fmt.Errorf("%s[%d]: must be a mapping, got %s", key, i, typeName(item)))
			continue
		}
		var unknown []string
		for k := range m {
			if !slices.Contains(allowed, k) {
				unknown = append(unknown, k)
			}
		}
		slices.Sort(unknown)
		for _, k := range unknown {
			errs = append(errs, fmt.Errorf("%s[%d]: unknown key %q", key, i, k))
		}
		out = append(out, m)
	}
	return out, errs
}

func decodeUsers(raw any) ([]User, []error) {
	recs, errs := records("users", raw, []string{"name", "password"})
	users := make([]User, 0, len(recs))
	for i, m := range recs {
		var u User
		if err := assign(&u.Name, kindString, m["name"]); err != nil {
			errs = append(errs, fmt.Errorf("users[%d].name: %w", i, err))
		}
		if err := assign(&u.Password, kindString, m["password"]); err != nil {
			// The message names the type only, never the value.
			errs = append(errs, fmt.Errorf("users[%d].password: must be a string", i))
		}
		users = append(users, u)
	}
	if len(users) == 0 {
		return nil, errs
	}
	return users, errs
}

func decodeRoutes(raw any) ([]Route, []error) {
	recs, errs := records("routes", raw, []string{"database", "user", "dsn", "upstream_database", "upstream_user", "password", "pool_size", "pool_mode"})
	routes := make([]Route, 0, len(recs))
	for i, m := range recs {
		var r Route
		fields := []struct {
			key string
			dst any
			k   kind
		}{
			{"database", &r.Database, kindString},
			{"user", &r.User, kindString},
			{"dsn", &r.DSN, kindString},
			{"upstream_database", &r.UpstreamDatabase, kindString},
			{"upstream_user", &r.UpstreamUser, kindString},
			{"password", &r.Password, kindString},
			{"pool_size", &r.PoolSize, kindInt},
			{"pool_mode", &r.PoolMode, kindString},
		}
		for _, f := range fields {
			if err := assign(f.dst, f.k, m[f.key]); err != nil {
				if f.key == "password" || f.key == "dsn" {
					err = errors.New("must be a string")
				}
				errs = append(errs, fmt.Errorf("routes[%d].%s: %w", i, f.key, err))
			}
		}
		routes = append(routes, r)
	}
	if len(routes) == 0 {
		return nil, errs
	}
	return routes, errs
}
