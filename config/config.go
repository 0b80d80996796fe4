package config

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/pgsidecar/pgsidecar/internal/tcpopt"
)

// Profile names. A profile selects a set of built-in defaults; see Defaults.
// What transaction mode does with session state that cannot move between servers.
const (
	// SessionStatePin keeps the client on its server for the rest of its session.
	SessionStatePin = "pin"
	// SessionStateRefuse fails the statement with an error instead.
	SessionStateRefuse = "refuse"
)

const (
	ProfileLocal      = "local"
	ProfileProduction = "production"
	ProfileEdge       = "edge"
)

// Pool modes.
const (
	PoolModeTransaction = "transaction"
	PoolModeSession     = "session"
)

// Client authentication methods (auth_type).
const (
	AuthTrust       = "trust"
	AuthMD5         = "md5"
	AuthSCRAMSHA256 = "scram-sha-256"
)

// redacted replaces every secret in printed output.
const redacted = "xxxxx"

// Config is the complete, merged configuration of pgsidecar. Load builds it
// from profile defaults, a YAML file, the environment and flags; Validate
// checks it. Every field is documented, with its key, default and the meaning
// of its zero value, in the package documentation.
//
// Config holds secrets (DatabaseURL, user and route passwords). Its String,
// GoString and Print methods redact them; never log fields individually.
type Config struct {
	Profile    string
	Listen     []string
	HTTPListen string
	// HTTPQuit serves POST /quitquitquit, which drains and stops the process like SIGTERM.
	HTTPQuit bool
	// ShutdownDelay is how long a stopping pgsidecar keeps accepting and serving after readiness
	// turned false; ShutdownTimeout then bounds how long open transactions may take to finish.
	ShutdownDelay, ShutdownTimeout time.Duration
	DatabaseURL                    string
	PoolMode                       string
	PoolSize                       int
	MinPoolSize                    int
	MaxClientConn                  int
	QueryWaitTimeout               time.Duration
	QueryWaitNotice                time.Duration
	ServerIdleTimeout              time.Duration
	ServerLifetime                 time.Duration
	ServerCheckDelay               time.Duration
	ServerResetQuery               string
	ConnectTimeout                 time.Duration
	QueryTimeout                   time.Duration
	Retries                        int
	RetryDelay                     time.Duration
	RetryMaxDelay                  time.Duration
	IdleTransactionTimeout         time.Duration
	ClientIdleTimeout              time.Duration
	ClientLoginTimeout             time.Duration
	// MaxLoginsInProgress bounds the connections still logging in; beyond it the oldest login
	// in progress is closed to make room.
	MaxLoginsInProgress int
	// SlowQueryThreshold logs requests that take at least this long (0 = off), with the first
	// SlowQueryTextBytes bytes of their SQL text (0 = no text).
	SlowQueryThreshold time.Duration
	SlowQueryTextBytes int
	// AdminUsers may run every admin console command; StatsUsers only SHOW. AdminPgBouncer
	// answers the admin console as database "pgbouncer" too.
	AdminUsers, StatsUsers []string
	AdminPgBouncer         bool
	// MaxPools bounds the pools made for (database, user) pairs that are not configured routes
	// (see Upstream.Configured); a client asking for one more is refused with 53300.
	MaxPools int
	// ClientWriteTimeout ends a client a write to which stays blocked this long (it reads
	// nothing); 0 = never.
	ClientWriteTimeout    time.Duration
	TCPKeepAlive          bool
	TCPKeepIdle           time.Duration
	TCPKeepInterval       time.Duration
	TCPKeepCount          int
	TCPUserTimeout        time.Duration
	DNSMaxTTL             time.Duration
	MaxMessageSize        int
	MaxPreparedStatements int
	// MaxClientPreparedStatements bounds the named prepared statements one client may hold in
	// transaction mode; a Parse beyond it fails with 53400. 0 = no limit.
	MaxClientPreparedStatements int
	// MaxPreparedStatementBytes bounds the bytes of statement text held by the shared
	// prepared-statement registry in transaction mode; a Parse of a new text beyond it fails
	// with 53400. 0 = no limit.
	MaxPreparedStatementBytes int
	// MaxRequestsInFlight bounds the requests and replies one transaction-mode client may
	// have queued (sent to a server and not answered yet, or answered by the proxy behind
	// them); the proxy reads no more from a client at the limit until replies drain.
	MaxRequestsInFlight int
	MaxProcs            int
	MaxProcsQueued      int
	SessionState        string
	AuthType            string
	AuthTrustRemote     bool
	Users               []User
	Routes              []Route
	TLS                 TLS
	LogLevel            string
	LogFormat           string
}

// User is one entry of the users key: a client login name and its secret.
//
// Password is a plain-text password, a SCRAM verifier
// ("SCRAM-SHA-256$<iter>:<salt>$<storedkey>:<serverkey>") or an md5 hash
// ("md5" followed by 32 hex digits). It authenticates clients and, when it is
// plain text, is also the password pgsidecar uses to log in upstream as Name.
type User struct {
	Name     string
	Password string
}

// Route maps a client-side (database, user) pair to an upstream. Routes are
// read from the config file only. The first matching route wins; when none
// matches, the default route (DatabaseURL with the client's database and
// user) is used. See Config.Resolve.
type Route struct {
	// Database is the client-side database name; "*" matches any.
	Database string
	// User is the client-side user name; "" or "*" matches any.
	User string
	// DSN is the upstream connection string (URL or keyword/value);
	// "" means DatabaseURL.
	DSN string
	// UpstreamDatabase is the database used upstream; "" means the client's.
	UpstreamDatabase string
	// UpstreamUser is the user used upstream; "" means the client's.
	UpstreamUser string
	// Password is the upstream password; "" means look it up (see Resolve).
	Password string
	// PoolSize is the pool size for this route; 0 means Config.PoolSize.
	PoolSize int
	// PoolMode is the pool mode for this route; "" means Config.PoolMode.
	PoolMode string
}

// TLS holds the certificate and key for client-facing TLS. Both empty
// disables TLS; setting only one is a validation error.
type TLS struct {
	CertFile string
	KeyFile  string
	// Mode is the clients' TLS: TLSDisable (never, even with a certificate), TLSAllow (when
	// the client asks; the default with a certificate) or TLSRequire (a plaintext login is
	// refused with 28000, as PostgreSQL's hostssl refuses it). "" = allow.
	Mode string
}

// Client TLS modes (TLS.Mode).
const (
	TLSDisable = "disable"
	TLSAllow   = "allow"
	TLSRequire = "require"
)

// Defaults returns the built-in defaults of profile:
//
//	key               local   production  edge
//	pool_size         10      50          100
//	connect_timeout   5s      10s         5s
//	query_timeout     60s     30s         15s
//	retries           2       3           5
//	retry_delay       500ms   1s          200ms
//	log_format        text    json        json
//
// Every other key has the same default in all profiles (see the package
// documentation). An unknown profile name yields the local defaults with
// Profile set to that name, so that Validate reports it.
func Defaults(profile string) Config {
	c := Config{
		Profile:                     profile,
		Listen:                      []string{"127.0.0.1:6432"},
		HTTPListen:                  "127.0.0.1:9930",
		ShutdownDelay:               0,
		ShutdownTimeout:             5 * time.Second,
		PoolMode:                    PoolModeTransaction,
		PoolSize:                    10,
		MinPoolSize:                 0,
		MaxClientConn:               1000,
		QueryWaitTimeout:            30 * time.Second,
		QueryWaitNotice:             0,
		ServerIdleTimeout:           10 * time.Minute,
		ServerLifetime:              time.Hour,
		ServerCheckDelay:            30 * time.Second,
		ServerResetQuery:            "DISCARD ALL",
		ConnectTimeout:              5 * time.Second,
		QueryTimeout:                60 * time.Second,
		Retries:                     2,
		RetryDelay:                  500 * time.Millisecond,
		RetryMaxDelay:               2 * time.Second,
		IdleTransactionTimeout:      0,
		ClientIdleTimeout:           0,
		ClientLoginTimeout:          15 * time.Second,
		MaxLoginsInProgress:         1000,
		MaxPools:                    100,
		AdminPgBouncer:              true,
		SlowQueryThreshold:          5 * time.Second,
		SlowQueryTextBytes:          256,
		ClientWriteTimeout:          60 * time.Second,
		MaxMessageSize:              1 << 30,
		MaxPreparedStatements:       200,
		MaxClientPreparedStatements: 1000,
		MaxPreparedStatementBytes:   64 << 20,
		MaxRequestsInFlight:         1000,
		MaxProcs:                    1,
		MaxProcsQueued:              2,
		SessionState:                SessionStatePin,
		AuthType:                    AuthTrust,
		LogLevel:                    "info",
		LogFormat:                   "text",
		// Probes after 30 s of idleness keep pooled connections known to cloud NATs and load
		// balancers, which forget idle flows (AWS NAT gateway after 350 s, Azure after 4 min),
		// and find a dead peer within a minute (30 s + 3 x 10 s); the user timeout gives a peer
		// that vanished with data in flight the same minute instead of about fifteen.
		TCPKeepAlive:    true,
		TCPKeepIdle:     30 * time.Second,
		TCPKeepInterval: 10 * time.Second,
		TCPKeepCount:    3,
		TCPUserTimeout:  60 * time.Second,
		// PgBouncer's dns_max_ttl default; DNS-based failovers (RDS, Aurora) publish 5 s TTLs.
		DNSMaxTTL: 15 * time.Second,
	}
	switch profile {
	case ProfileProduction:
		// 5 s for endpoints to stop routing here, 20 s for transactions: within Kubernetes'
		// default 30 s grace period.
		c.ShutdownDelay, c.ShutdownTimeout = 5*time.Second, 20*time.Second
		c.PoolSize = 50
		c.ConnectTimeout = 10 * time.Second
		c.QueryTimeout = 30 * time.Second
		c.Retries = 3
		c.RetryDelay = time.Second
		c.LogFormat = "json"
	case ProfileEdge:
		c.ShutdownDelay, c.ShutdownTimeout = 5*time.Second, 20*time.Second
		c.PoolSize = 100
		c.ConnectTimeout = 5 * time.Second
		c.QueryTimeout = 15 * time.Second
		c.Retries = 5
		c.RetryDelay = 200 * time.Millisecond
		c.LogFormat = "json"
	}
	return c
}

// TCPOptions returns the TCP settings (tcp_keepalive, tcp_keepidle, tcp_keepintvl, tcp_keepcnt,
// tcp_user_timeout) for the sockets of both sides: server connections and client connections.
func (c *Config) TCPOptions() tcpopt.Options {
	return tcpopt.Options{
		KeepAlive:    c.TCPKeepAlive,
		KeepIdle:     c.TCPKeepIdle,
		KeepInterval: c.TCPKeepInterval,
		KeepCount:    c.TCPKeepCount,
		UserTimeout:  c.TCPUserTimeout,
	}
}

// UserSecret returns the secret of the users entry called name, for client
// authentication. ok is false when there is no such entry.
func (c *Config) UserSecret(name string) (secret string, ok bool) {
	for _, u := range c.Users {
		if u.Name == name {
			return u.Password, true
		}
	}
	return "", false
}

// printed is the YAML shape of Config used by Print; keys match the config
// file keys.
type printed struct {
	Profile                     string         `yaml:"profile"`
	Listen                      []string       `yaml:"listen"`
	HTTPListen                  string         `yaml:"http_listen"`
	HTTPQuit                    bool           `yaml:"http_quit"`
	ShutdownDelay               string         `yaml:"shutdown_delay"`
	ShutdownTimeout             string         `yaml:"shutdown_timeout"`
	DatabaseURL                 string         `yaml:"database_url"`
	PoolMode                    string         `yaml:"pool_mode"`
	PoolSize                    int            `yaml:"pool_size"`
	MinPoolSize                 int            `yaml:"min_pool_size"`
	MaxClientConn               int            `yaml:"max_client_conn"`
	QueryWaitTimeout            string         `yaml:"query_wait_timeout"`
	QueryWaitNotice             string         `yaml:"query_wait_notice"`
	ServerIdleTimeout           string         `yaml:"server_idle_timeout"`
	ServerLifetime              string         `yaml:"server_lifetime"`
	ServerCheckDelay            string         `yaml:"server_check_delay"`
	ServerResetQuery            string         `yaml:"server_reset_query"`
	ConnectTimeout              string         `yaml:"connect_timeout"`
	QueryTimeout                string         `yaml:"query_timeout"`
	Retries                     int            `yaml:"retries"`
	RetryDelay                  string         `yaml:"retry_delay"`
	RetryMaxDelay               string         `yaml:"retry_max_delay"`
	IdleTransactionTimeout      string         `yaml:"idle_transaction_timeout"`
	ClientIdleTimeout           string         `yaml:"client_idle_timeout"`
	ClientLoginTimeout          string         `yaml:"client_login_timeout"`
	ClientWriteTimeout          string         `yaml:"client_write_timeout"`
	MaxLoginsInProgress         int            `yaml:"max_logins_in_progress"`
	MaxPools                    int            `yaml:"max_pools"`
	AdminUsers                  []string       `yaml:"admin_users"`
	StatsUsers                  []string       `yaml:"stats_users"`
	AdminPgBouncer              bool           `yaml:"admin_pgbouncer"`
	SlowQueryThreshold          string         `yaml:"slow_query_threshold"`
	SlowQueryTextBytes          int            `yaml:"slow_query_text_bytes"`
	TCPKeepAlive                bool           `yaml:"tcp_keepalive"`
	TCPKeepIdle                 string         `yaml:"tcp_keepidle"`
	TCPKeepInterval             string         `yaml:"tcp_keepintvl"`
	TCPKeepCount                int            `yaml:"tcp_keepcnt"`
	TCPUserTimeout              string         `yaml:"tcp_user_timeout"`
	DNSMaxTTL                   string         `yaml:"dns_max_ttl"`
	MaxMessageSize              int            `yaml:"max_message_size"`
	MaxPreparedStatements       int            `yaml:"max_prepared_statements"`
	MaxClientPreparedStatements int            `yaml:"max_client_prepared_statements"`
	MaxPreparedStatementBytes   int            `yaml:"max_prepared_statement_bytes"`
	MaxRequestsInFlight         int            `yaml:"max_requests_in_flight"`
	MaxProcs                    int            `yaml:"max_procs"`
	MaxProcsQueued              int            `yaml:"max_procs_queued"`
	SessionState                string         `yaml:"session_state"`
	AuthType                    string         `yaml:"auth_type"`
	AuthTrustRemote             bool           `yaml:"auth_trust_remote"`
	Users                       []printedUser  `yaml:"users"`
	Routes                      []printedRoute `yaml:"routes"`
	TLS                         printedTLS     `yaml:"tls"`
	LogLevel                    string         `yaml:"log_level"`
	LogFormat                   string         `yaml:"log_format"`
}

type printedUser struct {
	Name     string `yaml:"name"`
	Password string `yaml:"password"`
}

type printedRoute struct {
	Database         string `yaml:"database"`
	User             string `yaml:"user,omitempty"`
	DSN              string `yaml:"dsn,omitempty"`
	UpstreamDatabase string `yaml:"upstream_database,omitempty"`
	UpstreamUser     string `yaml:"upstream_user,omitempty"`
	Password         string `yaml:"password,omitempty"`
	PoolSize         int    `yaml:"pool_size,omitempty"`
	PoolMode         string `yaml:"pool_mode,omitempty"`
}

type printedTLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	Mode     string `yaml:"mode"`
}

func redactSecret(s string) string {
	if s == "" {
		return ""
	}
	return redacted
}

func (c *Config) printable() printed {
	d := func(v time.Duration) string { return v.String() }
	p := printed{
		Profile:                     c.Profile,
		Listen:                      c.Listen,
		HTTPListen:                  c.HTTPListen,
		HTTPQuit:                    c.HTTPQuit,
		ShutdownDelay:               d(c.ShutdownDelay),
		ShutdownTimeout:             d(c.ShutdownTimeout),
		DatabaseURL:                 RedactDSN(c.DatabaseURL),
		PoolMode:                    c.PoolMode,
		PoolSize:                    c.PoolSize,
		MinPoolSize:                 c.MinPoolSize,
		MaxClientConn:               c.MaxClientConn,
		QueryWaitTimeout:            d(c.QueryWaitTimeout),
		QueryWaitNotice:             d(c.QueryWaitNotice),
		ServerIdleTimeout:           d(c.ServerIdleTimeout),
		ServerLifetime:              d(c.ServerLifetime),
		ServerCheckDelay:            d(c.ServerCheckDelay),
		ServerResetQuery:            c.ServerResetQuery,
		ConnectTimeout:              d(c.ConnectTimeout),
		QueryTimeout:                d(c.QueryTimeout),
		Retries:                     c.Retries,
		RetryDelay:                  d(c.RetryDelay),
		RetryMaxDelay:               d(c.RetryMaxDelay),
		IdleTransactionTimeout:      d(c.IdleTransactionTimeout),
		ClientIdleTimeout:           d(c.ClientIdleTimeout),
		ClientLoginTimeout:          d(c.ClientLoginTimeout),
		ClientWriteTimeout:          d(c.ClientWriteTimeout),
		MaxLoginsInProgress:         c.MaxLoginsInProgress,
		MaxPools:                    c.MaxPools,
		AdminUsers:                  c.AdminUsers,
		StatsUsers:                  c.StatsUsers,
		AdminPgBouncer:              c.AdminPgBouncer,
		SlowQueryThreshold:          d(c.SlowQueryThreshold),
		SlowQueryTextBytes:          c.SlowQueryTextBytes,
		TCPKeepAlive:                c.TCPKeepAlive,
		TCPKeepIdle:                 d(c.TCPKeepIdle),
		TCPKeepInterval:             d(c.TCPKeepInterval),
		TCPKeepCount:                c.TCPKeepCount,
		TCPUserTimeout:              d(c.TCPUserTimeout),
		DNSMaxTTL:                   d(c.DNSMaxTTL),
		MaxMessageSize:              c.MaxMessageSize,
		MaxPreparedStatements:       c.MaxPreparedStatements,
		MaxClientPreparedStatements: c.MaxClientPreparedStatements,
		MaxPreparedStatementBytes:   c.MaxPreparedStatementBytes,
		MaxRequestsInFlight:         c.MaxRequestsInFlight,
		MaxProcs:                    c.MaxProcs,
		MaxProcsQueued:              c.MaxProcsQueued,
		SessionState:                c.SessionState,
		AuthType:                    c.AuthType,
		AuthTrustRemote:             c.AuthTrustRemote,
		TLS:                         printedTLS{CertFile: c.TLS.CertFile, KeyFile: c.TLS.KeyFile, Mode: c.TLS.Mode},
		LogLevel:                    c.LogLevel,
		LogFormat:                   c.LogFormat,
	}
	if p.Listen == nil {
		p.Listen = []string{}
	}
	p.Users = make([]printedUser, 0, len(c.Users))
	for _, u := range c.Users {
		p.Users = append(p.Users, printedUser{Name: u.Name, Password: redactSecret(u.Password)})
	}
	p.Routes = make([]printedRoute, 0, len(c.Routes))
	for _, r := range c.Routes {
		p.Routes = append(p.Routes, printedRoute{
			Database:         r.Database,
			User:             r.User,
			DSN:              RedactDSN(r.DSN),
			UpstreamDatabase: r.UpstreamDatabase,
			UpstreamUser:     r.UpstreamUser,
			Password:         redactSecret(r.Password),
			PoolSize:         r.PoolSize,
			PoolMode:         r.PoolMode,
		})
	}
	return p
}

// Print writes the effective configuration to w as YAML, in the config file
// format, with every secret redacted: DSNs through RedactDSN, user and route
// passwords as "xxxxx".
func (c *Config) Print(w io.Writer) error {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(c.printable()); err != nil {
		return fmt.Errorf("print config: %w", err)
	}
	if err := enc.Close(); err != nil {
		return fmt.Errorf("print config: %w", err)
	}
	if _, err := w.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("print config: %w", err)
	}
	return nil
}

// String returns the redacted YAML form of c (as Print writes it), so that
// formatting a Config with %v or %s never reveals a secret.
func (c Config) String() string {
	var buf bytes.Buffer
	if err := c.Print(&buf); err != nil {
		return "config: " + err.Error()
	}
	return buf.String()
}

// GoString makes %#v redact like String.
func (c Config) GoString() string { return c.String() }

// String returns the user's name with its secret redacted.
func (u User) String() string {
	return fmt.Sprintf("{name:%s password:%s}", u.Name, redactSecret(u.Password))
}

// GoString makes %#v redact like String.
func (u User) GoString() string { return u.String() }

// String returns the route with its DSN and password redacted.
func (r Route) String() string {
	return fmt.Sprintf("{database:%s user:%s dsn:%s upstream_database:%s upstream_user:%s password:%s pool_size:%d pool_mode:%s}",
		r.Database, r.User, RedactDSN(r.DSN), r.UpstreamDatabase, r.UpstreamUser, redactSecret(r.Password), r.PoolSize, r.PoolMode)
}

// GoString makes %#v redact like String.
func (r Route) GoString() string { return r.String() }

// RestartOnly names the settings that differ between c and next and that a running pgsidecar
// cannot change (a reload keeps their old values until a restart): what its listeners, HTTP
// server, process and readiness prober were started with.
func (c *Config) RestartOnly(next *Config) []string {
	var names []string
	add := func(name string, changed bool) {
		if changed {
			names = append(names, name)
		}
	}
	add("profile", c.Profile != next.Profile)
	add("listen", !slices.Equal(c.Listen, next.Listen))
	add("http_listen", c.HTTPListen != next.HTTPListen)
	add("http_quit", c.HTTPQuit != next.HTTPQuit)
	add("tls", c.TLS != next.TLS)
	add("log_format", c.LogFormat != next.LogFormat)
	add("max_procs", c.MaxProcs != next.MaxProcs)
	add("max_procs_queued", c.MaxProcsQueued != next.MaxProcsQueued)
	add("tcp options (tcp_*) of client sockets", c.TCPOptions() != next.TCPOptions())
	add("database_url, for the readiness prober", c.DatabaseURL != next.DatabaseURL)
	add("routes, for the readiness probers", !slices.Equal(c.Routes, next.Routes))
	return names
}
