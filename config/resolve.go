package config

import (
	"fmt"
	"strconv"
)

// Upstream is where a client's (database, user) pair is served: the result
// of Config.Resolve.
type Upstream struct {
	// Key identifies the pool: the connection string with database and user
	// applied, no password and any sslpassword masked. It holds no secret and may be logged or used
	// as a map key. Two pairs with the same Key share a pool.
	Key string
	// ConnString is the full connection string for pgconn.ParseConfig, with
	// database, user and password applied. It holds the password: never log
	// it.
	ConnString string
	// Database and User are the upstream database and user.
	Database, User string
	// PoolSize and MinPoolSize bound the pool; MinPoolSize never exceeds
	// PoolSize.
	PoolSize, MinPoolSize int
	// PoolMode is "transaction" or "session".
	PoolMode string
	// LoadBalanceHosts is the connection string's load_balance_hosts option:
	// LoadBalanceDisable (also when absent) or LoadBalanceRandom. The option
	// is removed from ConnString, since pgconn does not know it; the pool
	// implements it. Key keeps it.
	LoadBalanceHosts string
	// HasPassword reports whether a password was found for the upstream user
	// (see Resolve); without one the upstream must accept the user without.
	HasPassword bool
	// WantsPrimary is set when the connection string's target_session_attrs is
	// read-write or primary: a server that refuses a write as read-only
	// (25006) has been demoted and is no longer the one the route wants.
	WantsPrimary bool
	// ClientDatabase and ClientUser are the pair Resolve was asked for.
	ClientDatabase, ClientUser string
	// Configured reports whether the operator named this pair: a route with a database other
	// than "*" and a user other than "" or "*", or database_url's own database and user.
	// Other pairs are chosen by clients; their pools are bounded by max_pools and dropped
	// when idle and failing.
	Configured bool
}

// String returns a description of u without its password.
func (u Upstream) String() string {
	return fmt.Sprintf("{key:%s database:%s user:%s pool_size:%d min_pool_size:%d pool_mode:%s load_balance_hosts:%s}",
		u.Key, u.Database, u.User, u.PoolSize, u.MinPoolSize, u.PoolMode, u.LoadBalanceHosts)
}

// GoString makes %#v redact like String.
func (u Upstream) GoString() string { return u.String() }

// ConfiguredUpstreams resolves every (database, user) pair the configuration names (see
// Upstream.Configured), once each: database_url's own database and user, and every route whose
// database and user are both given. A pair whose first matching route is another one is
// skipped, as clients asking for it get that route.
func (c *Config) ConfiguredUpstreams() ([]Upstream, error) {
	type pair struct{ database, user string }
	var pairs []pair
	if c.DatabaseURL != "" {
		if d, err := parseDSN(c.DatabaseURL); err == nil {
			user, _ := d.get("user")
			db, ok := d.get("database")
			if !ok {
				db = user
			}
			if user != "" {
				pairs = append(pairs, pair{db, user})
			}
		}
	}
	for _, r := range c.Routes {
		if r.Database != "*" && r.User != "" && r.User != "*" {
			pairs = append(pairs, pair{r.Database, r.User})
		}
	}
	var ups []Upstream
	seen := make(map[string]bool)
	for _, p := range pairs {
		up, err := c.Resolve(p.database, p.user)
		if err != nil {
			return nil, err
		}
		if up.Configured && !seen[up.Key] {
			seen[up.Key] = true
			ups = append(ups, up)
		}
	}
	return ups, nil
}

// Route returns the first route matching the client's database and user: its
// Database equal to database or "*", and its User equal to user, "" or "*".
// ok is false when no route matches, meaning the default route (DatabaseURL
// with the client's database and user) applies.
func (c *Config) Route(database, user string) (r Route, ok bool) {
	for _, r := range c.Routes {
		if (r.Database == "*" || r.Database == database) && (r.User == "" || r.User == "*" || r.User == user) {
			return r, true
		}
	}
	return Route{}, false
}

// Resolve returns the upstream serving a client that asked for database as
// user.
//
// The first matching route (see Route) applies; with none, the default
// route: DatabaseURL with the client's database and user. The upstream
// database and user are the route's upstream_database and upstream_user when
// set, else the client's. The connection string is the route's dsn, else
// DatabaseURL; every option in it (hosts, ports, sslmode,
// target_session_attrs, ...) is kept, and its database, user and password
// are replaced. The exception is load_balance_hosts, which pgconn does not
// know: it is removed from ConnString and returned as LoadBalanceHosts.
//
// The upstream password is, in order: the route's password; the
// connection string's own password when the upstream user is the user
// written in that connection string (so the DATABASE_URL user logs in with
// its URL password); the plain-text password of the users entry named like
// the upstream user (SCRAM verifiers and md5 hashes cannot log in upstream);
// else none, and the connection string's password is removed, so the
// upstream must accept the user without a password (trust, a .pgpass file
// or PGPASSWORD read by pgconn) or refuse the login.
func (c *Config) Resolve(database, user string) (Upstream, error) {
	r, routed := c.Route(database, user)
	up := Upstream{
		ClientDatabase: database,
		ClientUser:     user,
		Database:       database,
		User:           user,
		PoolSize:       c.PoolSize,
		PoolMode:       c.PoolMode,
	}
	if r.UpstreamDatabase != "" {
		up.Database = r.UpstreamDatabase
	}
	if r.UpstreamUser != "" {
		up.User = r.UpstreamUser
	}
	if r.PoolSize > 0 {
		up.PoolSize = r.PoolSize
	}
	if r.PoolMode != "" {
		up.PoolMode = r.PoolMode
	}
	up.MinPoolSize = min(c.MinPoolSize, up.PoolSize)

	connStr, source := r.DSN, "the route's dsn"
	if connStr == "" {
		connStr, source = c.DatabaseURL, "database_url"
	}
	if connStr == "" {
		return Upstream{}, fmt.Errorf("resolve database %s user %s: no upstream: database_url is not set and the route has no dsn",
			strconv.Quote(database), strconv.Quote(user))
	}
	d, err := parseDSN(connStr)
	if err != nil {
		return Upstream{}, fmt.Errorf("resolve database %s user %s: %s: %v",
			strconv.Quote(database), strconv.Quote(user), source, err)
	}

	password := r.Password
	if password == "" {
		dsnUser, _ := d.get("user")
		if dsnPassword, ok := d.get("password"); ok && dsnUser == up.User {
			password = dsnPassword
		}
	}
	if password == "" {
		if secret, ok := c.UserSecret(up.User); ok && ClassifySecret(secret) == SecretPlain {
			password = secret
		}
	}
	// RedactDSN masks an sslpassword left in the options.
	up.Key = RedactDSN(d.withLogin(up.Database, up.User, ""))
	up.LoadBalanceHosts, err = d.takeLoadBalanceHosts()
	if err != nil {
		return Upstream{}, fmt.Errorf("resolve database %s user %s: %s: %v",
			strconv.Quote(database), strconv.Quote(user), source, err)
	}
	up.HasPassword = password != ""
	tsa, _ := d.get("target_session_attrs")
	up.WantsPrimary = tsa == "read-write" || tsa == "primary"
	if routed {
		up.Configured = r.Database != "*" && r.User != "" && r.User != "*"
	} else {
		dsnUser, _ := d.get("user")
		dsnDB, ok := d.get("database")
		if !ok {
			dsnDB = dsnUser // PostgreSQL's default
		}
		up.Configured = dsnUser != "" && dsnDB == database && dsnUser == user
	}
	up.ConnString = d.withLogin(up.Database, up.User, password)
	return up, nil
}
