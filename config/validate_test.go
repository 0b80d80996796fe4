package config

import (
	"strings"
	"testing"
	"time"
)

func TestValidateListsEveryProblem(t *testing.T) {
	_, err := load(t, []string{"--config=testdata/invalid.yaml", "--server-idle-timeout=-1s"}, nil)
	if err == nil {
		t.Fatal("Load succeeded, want error")
	}
	msg := err.Error()
	for _, want := range []string{
		`listen: invalid address "localhost:99999": port must be a number from 0 to 65535`,
		`pool_mode: must be "session" or "transaction", got "foo"`,
		`pool_size: must be at least 1, got 0`,
		`min_pool_size: must not be negative, got -1`,
		`max_client_conn: must be at least 1, got 0`,
		`query_wait_timeout: must not be negative, got -5s`,
		`server_idle_timeout: must not be negative, got -1s`,
		`connect_timeout: must be greater than 0`,
		`auth_type: must be "trust", "md5" or "scram-sha-256", got "kerberos"`,
		`log_level: must be "debug", "info", "warn" or "error", got "loud"`,
		`log_format: must be "text" or "json", got "xml"`,
		`max_message_size: must be at least 1024 bytes, got 100`,
		`database_url: `,
		`users[0].name: must not be empty`,
		`users[2].name: "dup" is already defined by users[1]`,
		`routes[0].database: must not be empty`,
		`routes[0].pool_mode: must be "session" or "transaction", got "sometimes"`,
		`tls.key_file: must be set when tls.cert_file is set`,
		`tls.cert_file: stat /nonexistent/cert.pem`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q", want)
		}
	}
	if strings.Contains(msg, "hunter2") {
		t.Errorf("error leaks the database_url password:\n%s", msg)
	}
	// One problem per line.
	if n := strings.Count(msg, "\n") + 1; n < 19 {
		t.Errorf("got %d lines, want at least 19:\n%s", n, msg)
	}
}

func valid() Config {
	c := Defaults(ProfileLocal)
	c.DatabaseURL = "postgres://app:pw@db.example.com:5432/app"
	return c
}

func TestValidateTrustRemote(t *testing.T) {
	tests := []struct {
		name    string
		listen  []string
		auth    string
		remote  bool
		wantErr string
	}{
		{"loopback v4", []string{"127.0.0.1:6432"}, AuthTrust, false, ""},
		{"loopback v6", []string{"[::1]:6432"}, AuthTrust, false, ""},
		{"localhost", []string{"localhost:6432"}, AuthTrust, false, ""},
		{"any v4", []string{"0.0.0.0:6432"}, AuthTrust, false, `auth_type: "trust" on non-loopback listen address "0.0.0.0:6432"`},
		{"any v6", []string{"127.0.0.1:6432", "[::]:6432"}, AuthTrust, false, `non-loopback listen address "[::]:6432"`},
		{"empty host", []string{":6432"}, AuthTrust, false, `non-loopback listen address ":6432"`},
		{"host name", []string{"db.example.com:6432"}, AuthTrust, false, `non-loopback listen address "db.example.com:6432"`},
		{"private ip", []string{"10.1.2.3:6432"}, AuthTrust, false, `non-loopback listen address "10.1.2.3:6432"`},
		{"allowed by auth_trust_remote", []string{"0.0.0.0:6432"}, AuthTrust, true, ""},
		{"scram on any", []string{"0.0.0.0:6432"}, AuthSCRAMSHA256, false, ""},
		{"md5 without users is fine", []string{"0.0.0.0:6432"}, AuthMD5, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			c.Listen, c.AuthType, c.AuthTrustRemote = tt.listen, tt.auth, tt.remote
			err := c.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("error %v, want %q", err, tt.wantErr)
			}
		})
	}
	// And through Load, from the environment.
	if _, err := load(t, nil, []string{"PGSIDECAR_LISTEN=0.0.0.0:6432"}); err == nil || !strings.Contains(err.Error(), "auth_trust_remote") {
		t.Errorf("Load with trust on 0.0.0.0: %v", err)
	}
	if _, err := load(t, nil, []string{"PGSIDECAR_LISTEN=0.0.0.0:6432", "PGSIDECAR_AUTH_TRUST_REMOTE=1"}); err != nil {
		t.Errorf("Load with auth_trust_remote: %v", err)
	}
}

func TestValidateCases(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string // "" = valid
	}{
		{"valid", func(*Config) {}, ""},
		{"no listen", func(c *Config) { c.Listen = nil }, "listen: at least one address is required"},
		{"missing port", func(c *Config) { c.Listen = []string{"127.0.0.1"} }, `listen: invalid address "127.0.0.1"`},
		{"duplicate listen", func(c *Config) { c.Listen = []string{"127.0.0.1:1", "127.0.0.1:1"} }, `listen: address "127.0.0.1:1" is listed twice`},
		{"port 0 ok", func(c *Config) { c.Listen = []string{"127.0.0.1:0"} }, ""},
		{"bad http_listen", func(c *Config) { c.HTTPListen = "nope" }, "http_listen: invalid address"},
		{"http disabled", func(c *Config) { c.HTTPListen = "" }, ""},
		{"min over max", func(c *Config) { c.MinPoolSize = 11 }, "min_pool_size: must not exceed pool_size (10), got 11"},
		{"negative retries", func(c *Config) { c.Retries = -1 }, "retries: must not be negative"},
		{"negative retry delay", func(c *Config) { c.RetryDelay = -time.Second }, "retry_delay: must not be negative, got -1s"},
		{"negative prepared", func(c *Config) { c.MaxPreparedStatements = -1 }, "max_prepared_statements: must not be negative"},
		{"profile", func(c *Config) { c.Profile = "prod" }, `profile: must be "local", "production" or "edge", got "prod"`},
		{"empty password", func(c *Config) { c.Users = []User{{Name: "a"}} }, `users[0].password: must not be empty (user "a")`},
		{"bad scram", func(c *Config) { c.Users = []User{{Name: "a", Password: "SCRAM-SHA-256$x:y$z"}} }, "users[0].password: malformed SCRAM verifier"},
		{"good scram", func(c *Config) {
			c.Users = []User{{Name: "a", Password: "SCRAM-SHA-256$4096:c2FsdA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBA="}}
		}, ""},
		{"route without upstream", func(c *Config) { c.DatabaseURL = ""; c.Routes = []Route{{Database: "x"}} }, "routes[0].dsn: is empty and database_url is not set"},
		{"no database_url and no routes is fine", func(c *Config) { c.DatabaseURL = "" }, ""},
		{"route bad dsn", func(c *Config) { c.Routes = []Route{{Database: "x", DSN: "host=h password='s3cr3t"}} }, "routes[0].dsn: cannot parse"},
		{"raw @ in a URL password", func(c *Config) { c.DatabaseURL = "postgres://app:s3cr@tPass@db/app" }, "percent-encode an '@' in the user name or password as %40"},
		{"route star upstream", func(c *Config) { c.Routes = []Route{{Database: "*", UpstreamUser: "*"}} }, `routes[0].upstream_user: must be a user name, not "*"`},
		{"route negative pool", func(c *Config) { c.Routes = []Route{{Database: "*", PoolSize: -1}} }, "routes[0].pool_size: must not be negative"},
		{"kv database_url", func(c *Config) { c.DatabaseURL = "host=db.example.com port=5432 user=app password='p w'" }, ""},
		{"multi-host url", func(c *Config) {
			c.DatabaseURL = "postgres://app:pw@h1.example.com:5432,[::1]:5433/app?target_session_attrs=read-write"
		}, ""},
		{"negative tcp_keepidle", func(c *Config) { c.TCPKeepIdle = -time.Second }, "tcp_keepidle: must not be negative, got -1s"},
		{"tcp_keepidle over the kernel's limit", func(c *Config) { c.TCPKeepIdle = 10 * time.Hour }, "tcp_keepidle: must be at most 9h6m7s (the kernel's limit), got 10h0m0s"},
		{"tcp_keepintvl over the kernel's limit", func(c *Config) { c.TCPKeepInterval = 10 * time.Hour }, "tcp_keepintvl: must be at most 9h6m7s"},
		{"tcp_keepcnt over the kernel's limit", func(c *Config) { c.TCPKeepCount = 128 }, "tcp_keepcnt: must be from 0 to 127, got 128"},
		{"negative tcp_keepcnt", func(c *Config) { c.TCPKeepCount = -1 }, "tcp_keepcnt: must be from 0 to 127, got -1"},
		{"negative tcp_user_timeout", func(c *Config) { c.TCPUserTimeout = -time.Second }, "tcp_user_timeout: must not be negative"},
		{"tcp_user_timeout too large", func(c *Config) { c.TCPUserTimeout = 1000 * time.Hour }, "tcp_user_timeout: must be at most"},
		{"tcp zeros are fine", func(c *Config) {
			c.TCPKeepAlive, c.TCPKeepIdle, c.TCPKeepInterval, c.TCPKeepCount, c.TCPUserTimeout = false, 0, 0, 0, 0
		}, ""},
		{"negative dns_max_ttl", func(c *Config) { c.DNSMaxTTL = -time.Second }, "dns_max_ttl: must not be negative"},
		{"dns_max_ttl 0", func(c *Config) { c.DNSMaxTTL = 0 }, ""},
		{"load_balance_hosts random", func(c *Config) {
			c.DatabaseURL = "postgres://app:pw@h1.example.com,h2.example.com/app?load_balance_hosts=random&target_session_attrs=any"
		}, ""},
		{"load_balance_hosts disable", func(c *Config) { c.DatabaseURL = "host=h1,h2 load_balance_hosts=disable" }, ""},
		{"load_balance_hosts bad", func(c *Config) {
			c.DatabaseURL = "postgres://app:s3cr3t@h1.example.com,h2.example.com/app?load_balance_hosts=round-robin"
		}, `database_url: load_balance_hosts: must be "disable" or "random", got "round-robin"`},
		{"route load_balance_hosts bad", func(c *Config) {
			c.Routes = []Route{{Database: "x", DSN: "host=h1,h2 password=s3cr3t load_balance_hosts=yes"}}
		}, `routes[0].dsn: load_balance_hosts: must be "disable" or "random", got "yes"`},
		{"tls key only", func(c *Config) { c.TLS.KeyFile = "testdata/full.yaml" }, "tls.cert_file: must be set when tls.key_file is set"},
		{"tls dir", func(c *Config) { c.TLS = TLS{CertFile: "testdata", KeyFile: "testdata/full.yaml"} }, `tls.cert_file: "testdata" is a directory`},
		{"tls ok", func(c *Config) { c.TLS = TLS{CertFile: "testdata/full.yaml", KeyFile: "testdata/full.yaml"} }, ""},
		{"tls require without a certificate", func(c *Config) { c.TLS.Mode = TLSRequire }, `tls.mode: is "require" but tls.cert_file`},
		{"tls mode unknown", func(c *Config) { c.TLS.Mode = "prefer" }, `tls.mode: must be "disable", "allow" or "require"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			tt.mod(&c)
			err := c.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("error %v, want %q", err, tt.wantErr)
			}
			if err != nil && (strings.Contains(err.Error(), "s3cr3t") || strings.Contains(err.Error(), "s3cr") || strings.Contains(err.Error(), "tPass")) {
				t.Errorf("error leaks a password: %v", err)
			}
		})
	}
}

func TestValidateDSNErrorsRedacted(t *testing.T) {
	for _, dsn := range []string{
		"postgres://admin:hunter2@db.example.com:badport/app",
		"postgres://admin:hunter2@db.example.com/app?sslmode=bogus",
		"postgres://admin@db.example.com/app?password=hunter2&sslmode=bogus",
		"host=db.example.com password=hunter2 sslmode=bogus",
		"host=db.example.com password='hunter2 x' port=nope",
		"host=db.example.com password='hunter2",
		"host=db.example.com sslmode=bogus sslpassword=hunter2",
	} {
		c := valid()
		c.DatabaseURL = dsn
		err := c.Validate()
		if err == nil {
			t.Errorf("%s: no error", RedactDSN(dsn))
			continue
		}
		if !strings.HasPrefix(err.Error(), "database_url: ") {
			t.Errorf("error does not name the key: %v", err)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("error leaks the password: %v", err)
		}
	}
}

func TestClassifySecret(t *testing.T) {
	for s, want := range map[string]SecretKind{
		"plain":                               SecretPlain,
		"md5":                                 SecretPlain,
		"md5zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz": SecretPlain,
		"md50123456789abcdef0123456789abcdef": SecretMD5,
		"SCRAM-SHA-256$4096:a$b:c":            SecretSCRAM,
	} {
		if got := ClassifySecret(s); got != want {
			t.Errorf("ClassifySecret(%q) = %v, want %v", s, got, want)
		}
	}
}
