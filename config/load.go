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
// its type, where it lives in Config and its documentation. users and
// routes are not settings: they are lists of records (see decodeUsers and
// decodeRoutes).
type setting struct {
	name  string // file key; "." separates nesting ("tls.cert_file")
	kind  kind
	field func(*Config) any // pointer to the Config field
	// doc is the key's documentation (Markdown), written once: README's key table is
	// generated from it (TestREADMEKeys), and the flag's help is its first sentence.
	doc string
}

// docDefaults are the Default column of README's key table where the profiles' values alone
// do not say it.
var docDefaults = map[string]string{
	"profile":                      "detected (see above)",
	"tls.mode":                     "`allow`",
	"max_message_size":             "`1073741824` (1 GiB)",
	"max_prepared_statement_bytes": "`67108864` (64 MiB)",
}

// usage is the flag help: the doc's first sentence without Markdown, and the defaults.
func (s setting) usage() string {
	text := s.doc
	if i := strings.Index(text, ". "); i >= 0 {
		text = text[:i]
	}
	text = strings.TrimSuffix(strings.ReplaceAll(text, "`", ""), ".")
	def := strings.ReplaceAll(s.defaultDoc(), "`", "")
	return fmt.Sprintf("%s (default %s) (env %s)", text, def, s.envName())
}

// defaultDoc describes the key's default in every profile: "`10`", or "10 local, 50
// production, 100 edge" when they differ.
func (s setting) defaultDoc() string {
	if d, ok := docDefaults[s.name]; ok {
		return d
	}
	profiles := []string{ProfileLocal, ProfileProduction, ProfileEdge}
	vals := make([]string, len(profiles))
	for i, p := range profiles {
		c := Defaults(p)
		vals[i] = formatDefault(s.field(&c))
	}
	switch {
	case vals[0] == vals[1] && vals[1] == vals[2]:
		return "`" + vals[0] + "`"
	case vals[1] == vals[2]:
		return fmt.Sprintf("%s local, %s production and edge", vals[0], vals[1])
	}
	return fmt.Sprintf("%s local, %s production, %s edge", vals[0], vals[1], vals[2])
}

// formatDefault writes a default value as README shows it.
func formatDefault(v any) string {
	switch v := v.(type) {
	case *string:
		if *v == "" {
			return `""`
		}
		return *v
	case *int:
		return strconv.Itoa(*v)
	case *bool:
		return strconv.FormatBool(*v)
	case *time.Duration:
		d := *v
		switch {
		case d == 0:
			return "0"
		case d%time.Hour == 0:
			return fmt.Sprintf("%dh", d/time.Hour)
		case d%time.Minute == 0 && d > time.Minute:
			return fmt.Sprintf("%dm", d/time.Minute)
		case d%time.Second == 0:
			return fmt.Sprintf("%ds", d/time.Second)
		}
		return fmt.Sprintf("%dms", d/time.Millisecond)
	case *[]string:
		quoted := make([]string, len(*v))
		for i, s := range *v {
			quoted[i] = strconv.Quote(s)
		}
		return "[" + strings.Join(quoted, ", ") + "]"
	}
	return fmt.Sprint(v)
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
	{"profile", kindString, func(c *Config) any { return &c.Profile }, "`local`, `production` or `edge`. Empty means detect."},
	{"listen", kindList, func(c *Config) any { return &c.Listen }, "Client listen addresses (`host:port`, IPv6 as `[::1]:6432`). At least one is required. Port 0 picks a free port. An empty host means every interface."},
	{"http_listen", kindString, func(c *Config) any { return &c.HTTPListen }, "Address of the probes and metrics server. `\"\"` disables it."},
	{"http_quit", kindBool, func(c *Config) any { return &c.HTTPQuit }, "Serve `POST /quitquitquit`: drain and exit as on SIGTERM."},
	{"shutdown_delay", kindDuration, func(c *Config) any { return &c.ShutdownDelay }, "On SIGTERM, keep accepting and serving this long after readiness turned false (see Shutdown)."},
	{"shutdown_timeout", kindDuration, func(c *Config) any { return &c.ShutdownTimeout }, "After `shutdown_delay`, how long open transactions and session-mode clients may take before the remaining clients get `57P01`."},
	{"database_url", kindString, func(c *Config) any { return &c.DatabaseURL }, "Default upstream, as a `postgres://` URL or a keyword/value string. Its user logs in with its password. `\"\"` means no default upstream (in `local`, a disposable cluster is started instead). Prefer the environment: a flag shows in the process list. An `@` in a URL's user name or password must be percent-encoded (`%40`): a URL with more than one raw `@` before its host is refused, with that advice and without quoting it."},
	{"pool_mode", kindString, func(c *Config) any { return &c.PoolMode }, "`transaction` returns the server connection after each transaction. `session` returns it when the client leaves."},
	{"pool_size", kindInt, func(c *Config) any { return &c.PoolSize }, "Maximum server connections per route (upstream, database, user). At least 1."},
	{"min_pool_size", kindInt, func(c *Config) any { return &c.MinPoolSize }, "Server connections kept open per pool, checked every second. The pools of configured pairs (see `max_pools`) are created at start; others at the first login. When the upstream refuses the login (a wrong password, a missing database), refilling backs off from 2 s to a minute instead of dialing every second. 0 opens connections on demand only. At most `pool_size`."},
	{"max_client_conn", kindInt, func(c *Config) any { return &c.MaxClientConn }, "Maximum clients in total. Extra clients are refused with `53300`. An idle client costs about 2.5 KB of resident memory and no goroutine (10,000 idle clients measured by `make bench`; see Performance), so 10,000 fit in about 45 MB; raise the process's open-file limit with it. At least 1."},
	{"query_wait_timeout", kindDuration, func(c *Config) any { return &c.QueryWaitTimeout }, "How long a client waits for a server connection. When it expires the client gets FATAL `08006` and is disconnected. 0 waits forever."},
	{"query_wait_notice", kindDuration, func(c *Config) any { return &c.QueryWaitNotice }, "A client that has waited this long for a server connection gets one `NOTICE` (code `00000`, `pgsidecar: waiting for a server connection for …: N of M in use, K clients waiting …`, plus the last dial error while the upstream is failing), then keeps waiting. A client that does not take the notice within a second is disconnected (its stream would be cut mid-message). 0 = never."},
	{"server_idle_timeout", kindDuration, func(c *Config) any { return &c.ServerIdleTimeout }, "Idle server connections beyond `min_pool_size` are closed after this. 0 never closes them."},
	{"server_lifetime", kindDuration, func(c *Config) any { return &c.ServerLifetime }, "Server connections older than this (minus up to 10 % jitter) are closed when released or while idle. 0 means unlimited."},
	{"server_check_delay", kindDuration, func(c *Config) any { return &c.ServerCheckDelay }, "An idle server connection unused for longer than this is checked (a non-blocking peek at its socket) before it is handed out; a dead one is closed and the next one tried. 0 = check every time; negative = never."},
	{"server_reset_query", kindString, func(c *Config) any { return &c.ServerResetQuery }, "Run on a server connection when a session-mode client leaves. `\"\"` runs nothing."},
	{"connect_timeout", kindDuration, func(c *Config) any { return &c.ConnectTimeout }, "Limit for one upstream dial plus login. Must be greater than 0."},
	{"query_timeout", kindDuration, func(c *Config) any { return &c.QueryTimeout }, "A request running longer than this gets its server query cancelled (as a CancelRequest would); the client gets PostgreSQL's `57014 canceling statement due to user request` and the server connection stays usable. A server that answers neither within a further grace period (query_timeout, between 1 s and 5 s) is disconnected and the client gets `FATAL 08006` saying so, instead of waiting on a silent network; when the reason is a client that reads nothing of its result, that client is closed too, so that the server's slot is freed at once. 0 = none."},
	{"retries", kindInt, func(c *Config) any { return &c.Retries }, "How often a request refused by a terminating server is sent to another server (transaction mode; see *Failures*). 0 = never. Dials are retried regardless, for as long as `query_wait_timeout` allows."},
	{"retry_delay", kindDuration, func(c *Config) any { return &c.RetryDelay }, "First backoff delay between dial attempts while the upstream refuses (exponential, full jitter, capped at `retry_max_delay`). 0 = 100 ms."},
	{"retry_max_delay", kindDuration, func(c *Config) any { return &c.RetryMaxDelay }, "Cap of the backoff between dial attempts and between re-sends of a refused request. 0 = 2 s."},
	{"idle_transaction_timeout", kindDuration, func(c *Config) any { return &c.IdleTransactionTimeout }, "A client idle this long inside a transaction (holding its server) gets `FATAL 25P03` and is disconnected; its transaction is rolled back and the server reused. 0 = off."},
	{"client_idle_timeout", kindDuration, func(c *Config) any { return &c.ClientIdleTimeout }, "A client idle this long outside a transaction gets `FATAL 57P05` and is disconnected. 0 = off."},
	{"client_write_timeout", kindDuration, func(c *Config) any { return &c.ClientWriteTimeout }, "A write to a client that stays blocked this long (the client reads nothing of its result) ends that client; its server connection is closed and its slot freed. The bound is per write of at most 64 KiB, so a client that reads slowly but steadily is never cut; a write that does not block costs nothing. 0 = never."},
	{"client_login_timeout", kindDuration, func(c *Config) any { return &c.ClientLoginTimeout }, "Time a client has to finish TLS, startup and authentication. Short, so that connections that never log in cannot hold the login slots for long. 0 = no limit."},
	{"max_logins_in_progress", kindInt, func(c *Config) any { return &c.MaxLoginsInProgress }, "Connections still logging in. At the bound, pgsidecar accepts no more connections (they wait in the kernel's listen backlog) until a login ends or the oldest one has taken over a second (a prompt client logs in within milliseconds), which is then closed to make room (counted in `pgsidecar_logins_evicted_total`): a flood of connections that never log in cannot hold the slots, and a burst of prompt logins, however large, is let in as fast as logins complete (10,000 connections opened at once in `make bench` all log in). Each login in progress holds a goroutine and its buffers, a few KB. Failed logins are throttled per client address: after 3 within a minute, each further failure is answered 200 ms later than the one before, up to 2 s (`pgsidecar_auth_failures_total`). At least 1."},
	{"max_pools", kindInt, func(c *Config) any { return &c.MaxPools }, "Pools for (database, user) pairs the configuration does not name; a login needing one more is refused with `53300`. The configuration names `database_url`'s own database and user, and every route giving both a database (not `*`) and a user (not `*`); their pools are made at start, kept until exit and not counted here. Any other pool is kept only while its upstream accepts logins: a pool whose upstream never accepted one is dropped when its last client leaves, and an unused pool whose last dial failed is dropped within a second, with its goroutine and metric series. At least 1."},
	{"tcp_keepalive", kindBool, func(c *Config) any { return &c.TCPKeepAlive }, "TCP keepalive probes on client and server sockets: they find a peer that vanished while the connection was idle, and keep idle pooled connections known to NATs and load balancers. `false` turns them off (Go's own 15 s probes too)."},
	{"tcp_keepidle", kindDuration, func(c *Config) any { return &c.TCPKeepIdle }, "Idle time before the first probe, rounded up to whole seconds. 0 = Go's default, 15 s. At most 32767 s."},
	{"tcp_keepintvl", kindDuration, func(c *Config) any { return &c.TCPKeepInterval }, "Time between unanswered probes, rounded up to whole seconds. 0 = Go's default, 15 s. At most 32767 s."},
	{"tcp_keepcnt", kindInt, func(c *Config) any { return &c.TCPKeepCount }, "Unanswered probes before the connection is dropped. 0 = Go's default, 9. At most 127. The defaults drop a silent peer after 30 s + 3 × 10 s = 1 minute."},
	{"tcp_user_timeout", kindDuration, func(c *Config) any { return &c.TCPUserTimeout }, "`TCP_USER_TIMEOUT` (Linux; ignored elsewhere): a connection whose sent data stays unacknowledged this long is dropped, instead of after the kernel's ~15 minutes of retransmissions; with keepalive on it also bounds unanswered probes. The default equals `tcp_keepidle + tcp_keepintvl × tcp_keepcnt`, so a dead peer is found within a minute with or without data in flight. A slow query is never cut: the server's kernel acknowledges what it receives. 0 = the kernel's default (off), as in libpq and PgBouncer."},
	{"dns_max_ttl", kindDuration, func(c *Config) any { return &c.DNSMaxTTL }, "How long the addresses of an upstream host name are used before they are looked up again, whatever the DNS TTL (PgBouncer's key and default). See *Failures*. 0 = look up on every dial."},
	{"max_message_size", kindInt, func(c *Config) any { return &c.MaxMessageSize }, "Largest protocol message accepted, in bytes. Checked before any allocation; a larger message is a protocol error (`08P01`). At least 1024."},
	{"max_procs", kindInt, func(c *Config) any { return &c.MaxProcs }, "GOMAXPROCS. One thread, like PgBouncer: relaying is bound by system calls, and more threads add wake-ups between threads. Raise it when one core saturates (for example many TLS clients). 0 = Go's default (CPU count or container limit)."},
	{"max_procs_queued", kindInt, func(c *Config) any { return &c.MaxProcsQueued }, "GOMAXPROCS while clients queue deep for servers (more than four waiting per server in use, two samples in a row, sampled every 250 ms); back to `max_procs` after two seconds of a short queue. A second thread then hands freed servers to waiting clients sooner. Capped at Go's default GOMAXPROCS (the CPU count, or a container's CPU limit); 0 (or not above `max_procs`) = always `max_procs`."},
	{"session_state", kindString, func(c *Config) any { return &c.SessionState }, "Transaction mode, for SQL that leaves state on the server (see *Pinning*): `pin` keeps the client on its server for the rest of its session; `refuse` fails the statement with `0A000` instead (a simple `Query` is failed by the server, so an explicit transaction is aborted as PostgreSQL would abort it)."},
	{"max_prepared_statements", kindInt, func(c *Config) any { return &c.MaxPreparedStatements }, "Shared prepared statements kept per server connection (LRU) in transaction mode. 0 = no limit. Tracking cannot be turned off (drivers would break)."},
	{"max_client_prepared_statements", kindInt, func(c *Config) any { return &c.MaxClientPreparedStatements }, "Named prepared statements one client may hold in transaction mode. A Parse beyond it fails with `ERROR 53400` (the client goes on; closing a statement makes room). Statement names longer than 1024 bytes fail with `42622`. 0 = no limit."},
	{"max_prepared_statement_bytes", kindInt, func(c *Config) any { return &c.MaxPreparedStatementBytes }, "Bytes of statement text (each distinct text held once, however many clients prepared it) in the shared registry of transaction mode. A Parse of a new text beyond it fails with `ERROR 53400`; texts already held keep working. 0 = no limit."},
	{"max_requests_in_flight", kindInt, func(c *Config) any { return &c.MaxRequestsInFlight }, "Requests (and replies the proxy makes itself, such as `CloseComplete`) one transaction-mode client may have queued awaiting the server. At the limit the proxy sends the server a `Flush` and reads no more from that client until half have drained, so a client that pipelines without reading holds bounded memory (about 100 bytes an entry) and is slowed, not buffered. At least 16."},
	{"auth_type", kindString, func(c *Config) any { return &c.AuthType }, "Client authentication: `trust`, `md5` or `scram-sha-256`. With md5 or SCRAM and no `users`, nobody can log in."},
	{"auth_trust_remote", kindBool, func(c *Config) any { return &c.AuthTrustRemote }, "Allows `trust` on listen addresses that are not loopback. Without it, that configuration is refused."},
	{"tls.cert_file", kindString, func(c *Config) any { return &c.TLS.CertFile }, "PEM certificate for client-side TLS."},
	{"tls.key_file", kindString, func(c *Config) any { return &c.TLS.KeyFile }, "PEM key. Set both or neither, and the files must exist. Neither means client TLS is off (`SSLRequest` is answered `N`). The files are checked every second and the certificate reloaded when they change (a renewal, an updated Secret): new logins get the new one, open connections keep theirs; a change that does not load keeps the old one and is logged."},
	{"tls.mode", kindString, func(c *Config) any { return &c.TLS.Mode }, "Client TLS: `disable` (never offered, even with a certificate), `allow` (when the client asks), `require` (a client that does not use TLS is refused with `28000`, as PostgreSQL's `hostssl` refuses it; needs a certificate; cancel requests are still accepted in plaintext, as PostgreSQL accepts them). `\"\"` = `allow`."},
	{"slow_query_threshold", kindDuration, func(c *Config) any { return &c.SlowQueryThreshold }, "Requests that take at least this long, from their sending to their `ReadyForQuery`, are logged at `warn` as `slow query`, once each, with their duration, database, user, SQLSTATE (when they failed) and the first `slow_query_text_bytes` of their SQL text; parameter values (`Bind`) never. 0 = off."},
	{"slow_query_text_bytes", kindInt, func(c *Config) any { return &c.SlowQueryTextBytes }, "How much of a slow request's SQL text is logged, in bytes (cut at a character boundary). 0 logs no text: choose it when literals in SQL may be secret."},
	{"admin_users", kindList, func(c *Config) any { return &c.AdminUsers }, "Users who may run every command of the admin console (database `pgsidecar`, see *Admin console*), after logging in as any client does (`auth_type`). Empty: nobody."},
	{"stats_users", kindList, func(c *Config) any { return &c.StatsUsers }, "Users who may run the admin console's `SHOW` commands only; anyone else gets `42501`."},
	{"admin_pgbouncer", kindBool, func(c *Config) any { return &c.AdminPgBouncer }, "Answer the admin console as database `pgbouncer` too, so that pgbouncer_exporter and scripts written for PgBouncer work unchanged. A real upstream database of that name is then unreachable."},
	{"log_level", kindString, func(c *Config) any { return &c.LogLevel }, "`debug`, `info`, `warn` or `error`. Logs use `log/slog` and go to stderr."},
	{"log_format", kindString, func(c *Config) any { return &c.LogFormat }, "`text` or `json`."},
}

// recordDocs document the keys that hold lists of records, as settings' docs do theirs.
var recordDocs = []struct{ name, env, doc string }{
	{"users", "`USERS`", "Client logins, `{name, password}`. See below."},
	{"routes", "—", "Maps a client's database and user to an upstream (file only). See below."},
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
		usage := s.usage()
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

// Item is one setting as SHOW CONFIG lists it: its value and its default in the profile in
// force, as text, secrets redacted.
type Item struct {
	Key, Value, Default string
	// Changeable reports whether a reload applies a change (see RestartOnly).
	Changeable bool
}

// Items lists every setting of c, in documentation order.
func (c *Config) Items() []Item {
	def := Defaults(c.Profile)
	restart := map[string]bool{"profile": true, "listen": true, "http_listen": true, "http_quit": true,
		"log_format": true, "max_procs": true, "max_procs_queued": true,
		"tcp_keepalive": true, "tcp_keepidle": true, "tcp_keepintvl": true, "tcp_keepcnt": true, "tcp_user_timeout": true}
	items := make([]Item, 0, len(settings))
	for _, s := range settings {
		cc := *c
		value, dflt := formatDefault(s.field(&cc)), formatDefault(s.field(&def))
		if s.name == "database_url" {
			value, dflt = RedactDSN(c.DatabaseURL), RedactDSN(def.DatabaseURL)
		}
		items = append(items, Item{Key: s.name, Value: value, Default: dflt,
			Changeable: !restart[s.name] && !strings.HasPrefix(s.name, "tls.")})
	}
	return items
}
