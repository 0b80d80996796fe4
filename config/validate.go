package config

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/tcpopt"
)

// SecretKind tells how a users entry's password is stored.
type SecretKind int

const (
	// SecretPlain is a plain-text password.
	SecretPlain SecretKind = iota
	// SecretMD5 is "md5" followed by 32 hex digits: md5(password + user).
	SecretMD5
	// SecretSCRAM is a SCRAM-SHA-256 verifier
	// "SCRAM-SHA-256$<iter>:<salt>$<storedkey>:<serverkey>".
	SecretSCRAM
)

// String returns "plain", "md5" or "scram-sha-256".
func (k SecretKind) String() string {
	switch k {
	case SecretMD5:
		return "md5"
	case SecretSCRAM:
		return "scram-sha-256"
	}
	return "plain"
}

const scramPrefix = "SCRAM-SHA-256$"

// ClassifySecret tells whether secret is a SCRAM-SHA-256 verifier (it starts
// with "SCRAM-SHA-256$"), an md5 hash ("md5" and exactly 32 hex digits) or a
// plain-text password (anything else). It does not check that a verifier is
// well formed; Validate does.
func ClassifySecret(secret string) SecretKind {
	switch {
	case strings.HasPrefix(secret, scramPrefix):
		return SecretSCRAM
	case len(secret) == 35 && strings.HasPrefix(secret, "md5"):
		if _, err := hex.DecodeString(secret[3:]); err == nil {
			return SecretMD5
		}
	}
	return SecretPlain
}

// checkSCRAMVerifier reports what is wrong with a SCRAM-SHA-256 verifier,
// without quoting it.
func checkSCRAMVerifier(v string) error {
	rest := strings.TrimPrefix(v, scramPrefix)
	iterSalt, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return errors.New(`malformed SCRAM verifier: want "SCRAM-SHA-256$<iter>:<salt>$<storedkey>:<serverkey>"`)
	}
	iter, salt, ok1 := strings.Cut(iterSalt, ":")
	stored, server, ok2 := strings.Cut(keys, ":")
	if !ok1 || !ok2 {
		return errors.New(`malformed SCRAM verifier: want "SCRAM-SHA-256$<iter>:<salt>$<storedkey>:<serverkey>"`)
	}
	if n, err := strconv.Atoi(iter); err != nil || n < 1 {
		return errors.New("malformed SCRAM verifier: iteration count must be a positive integer")
	}
	if s, err := base64.StdEncoding.DecodeString(salt); err != nil || len(s) == 0 {
		return errors.New("malformed SCRAM verifier: salt is not base64")
	}
	for _, k := range []string{stored, server} {
		if b, err := base64.StdEncoding.DecodeString(k); err != nil || len(b) != 32 {
			return errors.New("malformed SCRAM verifier: stored and server keys must be 32 bytes in base64")
		}
	}
	return nil
}

// Validate checks c and returns every problem found, joined with
// errors.Join; each line names its key, such as
// `pool_mode: must be "session" or "transaction", got "foo"`. Messages never
// contain a secret. Validate reads the TLS files' metadata (they must exist)
// and, like pgconn.ParseConfig, the libpq environment variables.
func (c *Config) Validate() error {
	var errs []error
	add := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}

	if !slices.Contains([]string{ProfileLocal, ProfileProduction, ProfileEdge}, c.Profile) {
		add("profile", `must be "local", "production" or "edge", got %q`, c.Profile)
	}

	if len(c.Listen) == 0 {
		add("listen", "at least one address is required")
	}
	seen := map[string]bool{}
	var remote []string
	for _, a := range c.Listen {
		host, err := checkHostPort(a)
		if err != nil {
			add("listen", "%v", err)
			continue
		}
		if seen[a] {
			add("listen", "address %q is listed twice", a)
		}
		seen[a] = true
		if !isLoopbackHost(host) {
			remote = append(remote, a)
		}
	}
	if c.HTTPListen != "" {
		if _, err := checkHostPort(c.HTTPListen); err != nil {
			add("http_listen", "%v", err)
		}
	}

	if c.AuthType == AuthTrust && !c.AuthTrustRemote {
		for _, a := range remote {
			add("auth_type", `"trust" on non-loopback listen address %q would let anyone who can reach it connect; listen on a loopback address, use auth_type "md5" or "scram-sha-256", or set auth_trust_remote: true`, a)
		}
	}

	checkPoolMode := func(key, mode string) {
		if mode != PoolModeTransaction && mode != PoolModeSession {
			add(key, `must be "session" or "transaction", got %q`, mode)
		}
	}
	checkPoolMode("pool_mode", c.PoolMode)
	if c.PoolSize < 1 {
		add("pool_size", "must be at least 1, got %d", c.PoolSize)
	}
	if c.MinPoolSize < 0 {
		add("min_pool_size", "must not be negative, got %d", c.MinPoolSize)
	} else if c.PoolSize >= 1 && c.MinPoolSize > c.PoolSize {
		add("min_pool_size", "must not exceed pool_size (%d), got %d", c.PoolSize, c.MinPoolSize)
	}
	if c.MaxClientConn < 1 {
		add("max_client_conn", "must be at least 1, got %d", c.MaxClientConn)
	}

	for _, d := range []struct {
		key string
		val time.Duration
	}{
		{"query_wait_timeout", c.QueryWaitTimeout},
		{"query_wait_notice", c.QueryWaitNotice},
		{"server_idle_timeout", c.ServerIdleTimeout},
		{"server_lifetime", c.ServerLifetime},
		{"server_check_delay", c.ServerCheckDelay},
		{"connect_timeout", c.ConnectTimeout},
		{"query_timeout", c.QueryTimeout},
		{"retry_delay", c.RetryDelay},
		{"retry_max_delay", c.RetryMaxDelay},
		{"idle_transaction_timeout", c.IdleTransactionTimeout},
		{"client_idle_timeout", c.ClientIdleTimeout},
		{"client_login_timeout", c.ClientLoginTimeout},
		{"client_write_timeout", c.ClientWriteTimeout},
		{"shutdown_delay", c.ShutdownDelay},
		{"slow_query_threshold", c.SlowQueryThreshold},
		{"shutdown_timeout", c.ShutdownTimeout},
		{"tcp_keepidle", c.TCPKeepIdle},
		{"tcp_keepintvl", c.TCPKeepInterval},
		{"tcp_user_timeout", c.TCPUserTimeout},
		{"dns_max_ttl", c.DNSMaxTTL},
	} {
		if d.val < 0 {
			add(d.key, "must not be negative, got %s", d.val)
		}
	}
	if c.TCPKeepIdle > tcpopt.MaxKeepIdle {
		add("tcp_keepidle", "must be at most %s (the kernel's limit), got %s", tcpopt.MaxKeepIdle, c.TCPKeepIdle)
	}
	if c.TCPKeepInterval > tcpopt.MaxKeepInterval {
		add("tcp_keepintvl", "must be at most %s (the kernel's limit), got %s", tcpopt.MaxKeepInterval, c.TCPKeepInterval)
	}
	if c.TCPKeepCount < 0 || c.TCPKeepCount > tcpopt.MaxKeepCount {
		add("tcp_keepcnt", "must be from 0 to %d, got %d", tcpopt.MaxKeepCount, c.TCPKeepCount)
	}
	if c.TCPUserTimeout > tcpopt.MaxUserTimeout {
		add("tcp_user_timeout", "must be at most %s, got %s", tcpopt.MaxUserTimeout, c.TCPUserTimeout)
	}
	if c.ConnectTimeout == 0 {
		add("connect_timeout", "must be greater than 0")
	}
	if c.Retries < 0 {
		add("retries", "must not be negative, got %d", c.Retries)
	}
	if c.MaxMessageSize < 1024 {
		add("max_message_size", "must be at least 1024 bytes, got %d", c.MaxMessageSize)
	}
	if c.SessionState != SessionStatePin && c.SessionState != SessionStateRefuse {
		add("session_state", "must be %q or %q, got %q", SessionStatePin, SessionStateRefuse, c.SessionState)
	}
	if c.MaxProcsQueued < 0 {
		add("max_procs_queued", "must not be negative, got %d", c.MaxProcsQueued)
	}
	if c.MaxProcs < 0 {
		add("max_procs", "must not be negative, got %d", c.MaxProcs)
	}
	if c.MaxClientPreparedStatements < 0 {
		add("max_client_prepared_statements", "must not be negative, got %d", c.MaxClientPreparedStatements)
	}
	if c.MaxPreparedStatementBytes < 0 {
		add("max_prepared_statement_bytes", "must not be negative, got %d", c.MaxPreparedStatementBytes)
	}
	if c.SlowQueryTextBytes < 0 {
		add("slow_query_text_bytes", "must not be negative, got %d", c.SlowQueryTextBytes)
	}
	if c.MaxPools < 1 {
		add("max_pools", "must be at least 1, got %d", c.MaxPools)
	}
	if c.MaxLoginsInProgress < 1 {
		add("max_logins_in_progress", "must be at least 1, got %d", c.MaxLoginsInProgress)
	}
	if c.MaxRequestsInFlight < 16 {
		add("max_requests_in_flight", "must be at least 16, got %d", c.MaxRequestsInFlight)
	}
	if c.MaxPreparedStatements < 0 {
		add("max_prepared_statements", "must not be negative, got %d", c.MaxPreparedStatements)
	}

	if !slices.Contains([]string{AuthTrust, AuthMD5, AuthSCRAMSHA256}, c.AuthType) {
		add("auth_type", `must be "trust", "md5" or "scram-sha-256", got %q`, c.AuthType)
	}

	names := map[string]int{}
	for i, u := range c.Users {
		key := fmt.Sprintf("users[%d]", i)
		if u.Name == "" {
			add(key+".name", "must not be empty")
		} else if j, dup := names[u.Name]; dup {
			add(key+".name", "%q is already defined by users[%d]", u.Name, j)
		} else {
			names[u.Name] = i
		}
		switch {
		case u.Password == "":
			add(key+".password", "must not be empty (user %q)", u.Name)
		case ClassifySecret(u.Password) == SecretSCRAM:
			if err := checkSCRAMVerifier(u.Password); err != nil {
				add(key+".password", "%v (user %q)", err, u.Name)
			}
		}
	}

	if c.DatabaseURL != "" {
		if err := checkDSN(c.DatabaseURL); err != nil {
			add("database_url", "%v", err)
		}
	}
	for i, r := range c.Routes {
		key := fmt.Sprintf("routes[%d]", i)
		if r.Database == "" {
			add(key+".database", `must not be empty (use "*" to match any database)`)
		}
		if r.UpstreamDatabase == "*" {
			add(key+".upstream_database", `must be a database name, not "*"`)
		}
		if r.UpstreamUser == "*" {
			add(key+".upstream_user", `must be a user name, not "*"`)
		}
		if r.PoolSize < 0 {
			add(key+".pool_size", "must not be negative, got %d", r.PoolSize)
		}
		if r.PoolMode != "" {
			checkPoolMode(key+".pool_mode", r.PoolMode)
		}
		switch {
		case r.DSN != "":
			if err := checkDSN(r.DSN); err != nil {
				add(key+".dsn", "%v", err)
			}
		case c.DatabaseURL == "":
			add(key+".dsn", "is empty and database_url is not set: the route has no upstream")
		}
	}

	switch {
	case c.TLS.CertFile == "" && c.TLS.KeyFile == "":
	case c.TLS.CertFile == "":
		add("tls.cert_file", "must be set when tls.key_file is set")
	case c.TLS.KeyFile == "":
		add("tls.key_file", "must be set when tls.cert_file is set")
	}
	switch c.TLS.Mode {
	case "", TLSDisable, TLSAllow:
	case TLSRequire:
		if c.TLS.CertFile == "" {
			add("tls.mode", "is %q but tls.cert_file and tls.key_file are not set", TLSRequire)
		}
	default:
		add("tls.mode", "must be %q, %q or %q, got %q", TLSDisable, TLSAllow, TLSRequire, c.TLS.Mode)
	}
	for _, f := range []struct{ key, path string }{{"tls.cert_file", c.TLS.CertFile}, {"tls.key_file", c.TLS.KeyFile}} {
		if f.path == "" {
			continue
		}
		if st, err := os.Stat(f.path); err != nil {
			add(f.key, "%v", err)
		} else if st.IsDir() {
			add(f.key, "%q is a directory", f.path)
		}
	}

	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.LogLevel) {
		add("log_level", `must be "debug", "info", "warn" or "error", got %q`, c.LogLevel)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		add("log_format", `must be "text" or "json", got %q`, c.LogFormat)
	}
	return errors.Join(errs...)
}

// checkHostPort checks a listen address and returns its host.
func checkHostPort(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("invalid address %q: %w", addr, err)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return "", fmt.Errorf("invalid address %q: port must be a number from 0 to 65535", addr)
	}
	return host, nil
}

// isLoopbackHost reports whether host can only be reached from this
// machine: "localhost" or a loopback IP. "" (all interfaces), 0.0.0.0, ::,
// other IPs and other host names are not.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// checkDSN parses dsn like the pool will. The returned error never contains
// a secret and does not wrap pgconn's error, whose ConnString field holds
// the unredacted string.
func checkDSN(dsn string) error {
	if _, err := parseDSN(dsn); err != nil {
		// pgconn's own redaction is best effort on strings it cannot
		// split, so do not quote its message.
		return fmt.Errorf("cannot parse `%s`: %v", RedactDSN(dsn), err)
	}
	connString, _, err := SplitLoadBalanceHosts(dsn)
	if err != nil {
		return err
	}
	if _, err := pgconn.ParseConfig(connString); err != nil {
		return errors.New(scrub(err.Error(), dsn))
	}
	return nil
}
