package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/pgsidecar/pgsidecar/internal/tcpopt"
)

func load(t *testing.T, args, env []string) (*Config, error) {
	t.Helper()
	return Load(NewFlagSet("test"), args, env)
}

func mustLoad(t *testing.T, args, env []string) *Config {
	t.Helper()
	c, err := load(t, args, env)
	if err != nil {
		t.Fatalf("Load(%q, %q): %v", args, env, err)
	}
	return c
}

func TestPrecedence(t *testing.T) {
	const file = "--config=testdata/full.yaml"
	tests := []struct {
		name string
		args []string
		env  []string
		want func(*Config) any
		exp  any
	}{
		// pool_size: profile default 10, file 20, env 30, flag 40.
		{"pool_size default", nil, nil, func(c *Config) any { return c.PoolSize }, 10},
		{"pool_size file", []string{file}, nil, func(c *Config) any { return c.PoolSize }, 20},
		{"pool_size env over file", []string{file}, []string{"PGSIDECAR_POOL_SIZE=30"}, func(c *Config) any { return c.PoolSize }, 30},
		{"pool_size flag over env", []string{file, "--pool-size=40"}, []string{"PGSIDECAR_POOL_SIZE=30"}, func(c *Config) any { return c.PoolSize }, 40},
		{"pool_size env without file", nil, []string{"PGSIDECAR_POOL_SIZE=30"}, func(c *Config) any { return c.PoolSize }, 30},

		// pool_mode.
		{"pool_mode default", nil, nil, func(c *Config) any { return c.PoolMode }, "transaction"},
		{"pool_mode file", []string{file}, nil, func(c *Config) any { return c.PoolMode }, "session"},
		{"pool_mode env", []string{file}, []string{"PGSIDECAR_POOL_MODE=transaction"}, func(c *Config) any { return c.PoolMode }, "transaction"},
		{"pool_mode flag", []string{file, "--pool-mode", "session"}, []string{"PGSIDECAR_POOL_MODE=transaction"}, func(c *Config) any { return c.PoolMode }, "session"},

		// query_wait_timeout (a duration).
		{"query_wait_timeout default", nil, nil, func(c *Config) any { return c.QueryWaitTimeout }, 30 * time.Second},
		{"query_wait_timeout file", []string{file}, nil, func(c *Config) any { return c.QueryWaitTimeout }, 5 * time.Second},
		{"query_wait_timeout env", []string{file}, []string{"PGSIDECAR_QUERY_WAIT_TIMEOUT=750ms"}, func(c *Config) any { return c.QueryWaitTimeout }, 750 * time.Millisecond},
		{"query_wait_timeout flag", []string{file, "--query-wait-timeout=2m"}, []string{"PGSIDECAR_QUERY_WAIT_TIMEOUT=750ms"}, func(c *Config) any { return c.QueryWaitTimeout }, 2 * time.Minute},
		{"server_lifetime 0 in file", []string{file}, nil, func(c *Config) any { return c.ServerLifetime }, time.Duration(0)},

		// listen (a list).
		{"listen default", nil, nil, func(c *Config) any { return c.Listen }, []string{"127.0.0.1:6432"}},
		{"listen file", []string{file}, nil, func(c *Config) any { return c.Listen }, []string{"127.0.0.1:7432", "[::1]:7432"}},
		{"listen env", []string{file}, []string{"PGSIDECAR_LISTEN=127.0.0.1:6432, [::1]:6432"}, func(c *Config) any { return c.Listen }, []string{"127.0.0.1:6432", "[::1]:6432"}},
		{"listen flag", []string{file, "--listen=127.0.0.1:1,127.0.0.1:2", "--listen=[::1]:3"}, []string{"PGSIDECAR_LISTEN=127.0.0.1:6432"}, func(c *Config) any { return c.Listen }, []string{"127.0.0.1:1", "127.0.0.1:2", "[::1]:3"}},

		// http_listen: an empty env value counts and disables the server.
		{"http_listen file", []string{file}, nil, func(c *Config) any { return c.HTTPListen }, "127.0.0.1:9999"},
		{"http_listen env empty", []string{file}, []string{"PGSIDECAR_HTTP_LISTEN="}, func(c *Config) any { return c.HTTPListen }, ""},
		{"http_listen flag", []string{file, "--http-listen=127.0.0.1:1234"}, []string{"PGSIDECAR_HTTP_LISTEN="}, func(c *Config) any { return c.HTTPListen }, "127.0.0.1:1234"},

		// log_level, and an unset flag never overrides.
		{"log_level file", []string{file}, nil, func(c *Config) any { return c.LogLevel }, "debug"},
		{"log_level env", []string{file}, []string{"PGSIDECAR_LOG_LEVEL=warn"}, func(c *Config) any { return c.LogLevel }, "warn"},
		{"log_level unrelated flag", []string{file, "--retries=1"}, []string{"PGSIDECAR_LOG_LEVEL=warn"}, func(c *Config) any { return c.LogLevel }, "warn"},
		{"retries flag 0 overrides", []string{"--retries=0"}, []string{"PGSIDECAR_RETRIES=4"}, func(c *Config) any { return c.Retries }, 0},

		// bools.
		{"auth_trust_remote env", nil, []string{"PGSIDECAR_AUTH_TRUST_REMOTE=true"}, func(c *Config) any { return c.AuthTrustRemote }, true},
		{"auth_trust_remote flag", []string{"--auth-trust-remote=false"}, []string{"PGSIDECAR_AUTH_TRUST_REMOTE=true"}, func(c *Config) any { return c.AuthTrustRemote }, false},

		// TCP and DNS keys: a bool default true that env and flags turn off, durations, an int.
		{"tcp_keepalive default", nil, nil, func(c *Config) any { return c.TCPKeepAlive }, true},
		{"tcp_keepalive env off", nil, []string{"PGSIDECAR_TCP_KEEPALIVE=false"}, func(c *Config) any { return c.TCPKeepAlive }, false},
		{"tcp_keepalive flag over env", []string{"--tcp-keepalive=true"}, []string{"PGSIDECAR_TCP_KEEPALIVE=false"}, func(c *Config) any { return c.TCPKeepAlive }, true},
		{"tcp_keepalive flag off", []string{"--tcp-keepalive=false"}, nil, func(c *Config) any { return c.TCPKeepAlive }, false},
		{"tcp_keepidle default", nil, nil, func(c *Config) any { return c.TCPKeepIdle }, 30 * time.Second},
		{"tcp_keepidle env", nil, []string{"PGSIDECAR_TCP_KEEPIDLE=2m"}, func(c *Config) any { return c.TCPKeepIdle }, 2 * time.Minute},
		{"tcp_keepintvl flag", []string{"--tcp-keepintvl=5s"}, nil, func(c *Config) any { return c.TCPKeepInterval }, 5 * time.Second},
		{"tcp_keepcnt env", nil, []string{"PGSIDECAR_TCP_KEEPCNT=5"}, func(c *Config) any { return c.TCPKeepCount }, 5},
		{"tcp_user_timeout flag 0", []string{"--tcp-user-timeout=0"}, nil, func(c *Config) any { return c.TCPUserTimeout }, time.Duration(0)},
		{"dns_max_ttl default", nil, nil, func(c *Config) any { return c.DNSMaxTTL }, 15 * time.Second},
		{"dns_max_ttl env", nil, []string{"PGSIDECAR_DNS_MAX_TTL=0"}, func(c *Config) any { return c.DNSMaxTTL }, time.Duration(0)},
		{"dns_max_ttl flag", []string{"--dns-max-ttl=1m"}, []string{"PGSIDECAR_DNS_MAX_TTL=0"}, func(c *Config) any { return c.DNSMaxTTL }, time.Minute},

		// config file from the environment, and the flag winning over it.
		{"config from env", nil, []string{"PGSIDECAR_CONFIG=testdata/full.yaml"}, func(c *Config) any { return c.PoolSize }, 20},
		{"config flag over env", []string{"--config=testdata/profile_edge.yaml"}, []string{"PGSIDECAR_CONFIG=testdata/full.yaml"}, func(c *Config) any { return c.PoolSize }, 100},

		// profile defaults sit below the file.
		{"edge profile by flag, file value wins", []string{file, "--profile=edge"}, nil, func(c *Config) any { return c.PoolSize }, 20},
		{"edge profile by flag, default applies", []string{file, "--profile=edge"}, nil, func(c *Config) any { return c.Retries }, 5},
		{"profile env", nil, []string{"PGSIDECAR_PROFILE=production"}, func(c *Config) any { return c.LogFormat }, "json"},
		{"profile flag over env", []string{"--profile=local"}, []string{"PGSIDECAR_PROFILE=production"}, func(c *Config) any { return c.LogFormat }, "text"},

		// last occurrence in environ wins.
		{"duplicate env", nil, []string{"PGSIDECAR_POOL_SIZE=7", "PGSIDECAR_POOL_SIZE=8"}, func(c *Config) any { return c.PoolSize }, 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustLoad(t, tt.args, tt.env)
			if got := tt.want(c); !reflect.DeepEqual(got, tt.exp) {
				t.Errorf("got %#v, want %#v", got, tt.exp)
			}
		})
	}
}

func TestLoadFileRecords(t *testing.T) {
	c := mustLoad(t, []string{"--config=testdata/full.yaml"}, nil)
	wantUsers := []User{{"alice", "alice-plain"}, {"carol", "md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}
	if !reflect.DeepEqual(c.Users, wantUsers) {
		t.Errorf("Users = %v, want %v", c.Users, wantUsers)
	}
	wantRoutes := []Route{
		{Database: "reporting", DSN: "host=replica.example.com port=5433 sslmode=disable", UpstreamUser: "reader", Password: "reader-secret", PoolMode: "transaction", PoolSize: 4},
		{Database: "*", User: "batch", PoolSize: 2},
	}
	if !reflect.DeepEqual(c.Routes, wantRoutes) {
		t.Errorf("Routes = %v, want %v", c.Routes, wantRoutes)
	}
	if c.DatabaseURL != "postgres://admin:file-secret@db.example.com:5432/app?sslmode=require" {
		t.Errorf("DatabaseURL from file not loaded")
	}
}

func TestProfileDetection(t *testing.T) {
	tests := []struct {
		name        string
		args, env   []string
		wantProfile string
		wantPool    int
	}{
		{"no hint", nil, nil, "local", 10},
		{"kubernetes", nil, []string{"KUBERNETES_SERVICE_HOST=10.0.0.1"}, "production", 50},
		{"kubernetes empty", nil, []string{"KUBERNETES_SERVICE_HOST="}, "local", 10},
		{"explicit beats detection", nil, []string{"KUBERNETES_SERVICE_HOST=10.0.0.1", "PGSIDECAR_PROFILE=edge"}, "edge", 100},
		{"empty profile means detect", []string{"--profile="}, []string{"KUBERNETES_SERVICE_HOST=10.0.0.1"}, "production", 50},
		{"file profile", []string{"--config=testdata/profile_edge.yaml"}, []string{"KUBERNETES_SERVICE_HOST=10.0.0.1"}, "edge", 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustLoad(t, tt.args, tt.env)
			if c.Profile != tt.wantProfile || c.PoolSize != tt.wantPool {
				t.Errorf("profile %q pool_size %d, want %q %d", c.Profile, c.PoolSize, tt.wantProfile, tt.wantPool)
			}
		})
	}
}

func TestProfileDefaults(t *testing.T) {
	type row struct {
		pool                     int
		connect, query, retryDly time.Duration
		retries                  int
		logFormat                string
	}
	want := map[string]row{
		"local":      {10, 5 * time.Second, 60 * time.Second, 500 * time.Millisecond, 2, "text"},
		"production": {50, 10 * time.Second, 30 * time.Second, time.Second, 3, "json"},
		"edge":       {100, 5 * time.Second, 15 * time.Second, 200 * time.Millisecond, 5, "json"},
	}
	for profile, w := range want {
		t.Run(profile, func(t *testing.T) {
			for _, c := range []Config{Defaults(profile), *mustLoad(t, []string{"--profile", profile}, nil)} {
				got := row{c.PoolSize, c.ConnectTimeout, c.QueryTimeout, c.RetryDelay, c.Retries, c.LogFormat}
				if got != w {
					t.Errorf("got %+v, want %+v", got, w)
				}
				if c.Profile != profile {
					t.Errorf("Profile = %q", c.Profile)
				}
				// Shared defaults.
				if !reflect.DeepEqual(c.Listen, []string{"127.0.0.1:6432"}) || c.HTTPListen != "127.0.0.1:9930" ||
					c.PoolMode != "transaction" || c.MinPoolSize != 0 || c.MaxClientConn != 1000 ||
					c.QueryWaitTimeout != 30*time.Second || c.ServerIdleTimeout != 10*time.Minute ||
					c.ServerLifetime != time.Hour || c.ServerCheckDelay != 30*time.Second ||
					c.ServerResetQuery != "DISCARD ALL" || c.IdleTransactionTimeout != 0 ||
					c.ClientIdleTimeout != 0 || c.ClientLoginTimeout != 15*time.Second ||
					c.MaxMessageSize != 1<<30 || c.MaxPreparedStatements != 200 || c.AuthType != "trust" ||
					c.AuthTrustRemote || c.LogLevel != "info" || c.DatabaseURL != "" || c.TLS != (TLS{}) {
					t.Errorf("shared defaults wrong: %#v", c)
				}
			}
			if err := func() error { c := Defaults(profile); return c.Validate() }(); err != nil {
				t.Errorf("Defaults(%q) does not validate: %v", profile, err)
			}
		})
	}
	c := Defaults("bogus")
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), `profile: must be "local", "production" or "edge", got "bogus"`) {
		t.Errorf("unknown profile: %v", err)
	}
}

func TestDatabaseURLEnv(t *testing.T) {
	const a = "postgres://u:a@a.example.com/db"
	const b = "postgres://u:b@b.example.com/db"
	tests := []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"none", nil, nil, ""},
		{"DATABASE_URL", nil, []string{"DATABASE_URL=" + a}, a},
		{"PGSIDECAR_DATABASE_URL", nil, []string{"PGSIDECAR_DATABASE_URL=" + b}, b},
		{"PGSIDECAR_DATABASE_URL wins", nil, []string{"PGSIDECAR_DATABASE_URL=" + b, "DATABASE_URL=" + a}, b},
		{"PGSIDECAR_DATABASE_URL wins, other order", nil, []string{"DATABASE_URL=" + a, "PGSIDECAR_DATABASE_URL=" + b}, b},
		{"DATABASE_URL over file", []string{"--config=testdata/full.yaml"}, []string{"DATABASE_URL=" + a}, a},
		{"flag over env", []string{"--database-url=host=c.example.com"}, []string{"DATABASE_URL=" + a}, "host=c.example.com"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mustLoad(t, tt.args, tt.env).DatabaseURL; got != tt.want {
				t.Errorf("DatabaseURL = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestUsersEnv(t *testing.T) {
	const scram = "SCRAM-SHA-256$4096:c2FsdHNhbHQ=$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBA="
	c := mustLoad(t, []string{"--config=testdata/full.yaml"}, []string{"PGSIDECAR_USERS=alice:se:cret, bob:" + scram})
	want := []User{{"alice", "se:cret"}, {"bob", scram}}
	if !reflect.DeepEqual(c.Users, want) {
		t.Fatalf("Users = %#v, want %#v (env replaces file users)", c.Users, want)
	}
	if s, ok := c.UserSecret("bob"); !ok || s != scram {
		t.Errorf("UserSecret(bob) = %q, %v", s, ok)
	}
	if _, ok := c.UserSecret("carol"); ok {
		t.Errorf("UserSecret(carol) found; env users should replace file users")
	}

	_, err := load(t, nil, []string{"PGSIDECAR_USERS=alice:ok,nocolonsecret"})
	if err == nil || !strings.Contains(err.Error(), "PGSIDECAR_USERS entry 2 has no ':'") {
		t.Errorf("malformed users: %v", err)
	}
	if err != nil && strings.Contains(err.Error(), "nocolonsecret") {
		t.Errorf("error leaks the entry: %v", err)
	}
}

func TestListenEnv(t *testing.T) {
	c := mustLoad(t, nil, []string{"PGSIDECAR_LISTEN=127.0.0.1:6432,[::1]:6432,localhost:0"})
	want := []string{"127.0.0.1:6432", "[::1]:6432", "localhost:0"}
	if !reflect.DeepEqual(c.Listen, want) {
		t.Errorf("Listen = %q, want %q", c.Listen, want)
	}
}

func TestTLSEnvAndFlags(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for _, f := range []string{cert, key} {
		if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c := mustLoad(t, nil, []string{"PGSIDECAR_TLS_CERT_FILE=" + cert, "PGSIDECAR_TLS_KEY_FILE=" + key})
	if c.TLS != (TLS{CertFile: cert, KeyFile: key}) {
		t.Errorf("TLS from env = %+v", c.TLS)
	}
	c = mustLoad(t, []string{"--tls-cert-file", cert, "--tls-key-file", key}, nil)
	if c.TLS != (TLS{CertFile: cert, KeyFile: key}) {
		t.Errorf("TLS from flags = %+v", c.TLS)
	}
	_, err := load(t, []string{"--tls-cert-file", cert}, nil)
	if err == nil || !strings.Contains(err.Error(), "tls.key_file: must be set when tls.cert_file is set") {
		t.Errorf("cert without key: %v", err)
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  []string
		want []string
	}{
		{"unknown file keys", []string{"--config=testdata/unknown_key.yaml"}, nil, []string{
			"poolmode: unknown key in config file",
			"tls.cert: unknown key in config file",
		}},
		{"bad types", []string{"--config=testdata/bad_types.yaml"}, nil, []string{
			`pool_size: must be an integer, got "many"`,
			`query_wait_timeout: must be a duration with a unit like "30s" or "500ms", got 30`,
			`auth_trust_remote: must be true or false, got "maybe"`,
		}},
		{"bad env values", nil, []string{"PGSIDECAR_POOL_SIZE=x", "PGSIDECAR_SERVER_LIFETIME=1 hour"}, []string{
			`pool_size: must be an integer, got "x"`,
			`server_lifetime: must be a duration like "30s" or "500ms", got "1 hour"`,
		}},
		{"routes env refused", nil, []string{"PGSIDECAR_ROUTES=x"}, []string{
			"routes: can be set only in the config file",
		}},
		{"missing file", []string{"--config=testdata/nope.yaml"}, nil, []string{"read file testdata/nope.yaml"}},
		{"bad flag", []string{"--pool-size=abc"}, nil, []string{"pool-size"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := load(t, tt.args, tt.env)
			if err == nil {
				t.Fatal("Load succeeded, want error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestLoadHelp(t *testing.T) {
	_, err := Load(NewFlagSet("test"), []string{"--help"}, nil)
	if !errors.Is(err, pflag.ErrHelp) {
		t.Errorf("--help: %v, want pflag.ErrHelp", err)
	}
}

func TestFlagSetHasEveryKey(t *testing.T) {
	fs := NewFlagSet("test")
	for _, name := range []string{
		"config", "profile", "listen", "http-listen", "database-url", "pool-mode", "pool-size", "min-pool-size",
		"max-client-conn", "query-wait-timeout", "server-idle-timeout", "server-lifetime", "server-check-delay",
		"server-reset-query", "connect-timeout", "query-timeout", "retries", "retry-delay",
		"idle-transaction-timeout", "client-idle-timeout", "client-login-timeout", "max-message-size",
		"max-prepared-statements", "auth-type", "auth-trust-remote", "tls-cert-file", "tls-key-file",
		"log-level", "log-format", "tcp-keepalive", "tcp-keepidle", "tcp-keepintvl", "tcp-keepcnt",
		"tcp-user-timeout", "dns-max-ttl",
	} {
		if fs.Lookup(name) == nil {
			t.Errorf("flag --%s missing", name)
		}
	}
}

func TestLoadPreParsedFlagSet(t *testing.T) {
	fs := NewFlagSet("test")
	fs.Bool("version", false, "cmd's own flag")
	if err := fs.Parse([]string{"--version", "--listen=127.0.0.1:1,127.0.0.1:2"}); err != nil {
		t.Fatal(err)
	}
	c, err := Load(fs, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.Listen, []string{"127.0.0.1:1", "127.0.0.1:2"}) {
		t.Errorf("Listen = %q", c.Listen)
	}
}

// TestTCPKeysFromFile: the TCP and DNS keys load from a file and become TCPOptions.
func TestTCPKeysFromFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	file := "tcp_keepalive: true\ntcp_keepidle: 45s\ntcp_keepintvl: 5s\ntcp_keepcnt: 4\ntcp_user_timeout: 65s\ndns_max_ttl: 5s\n"
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	c := mustLoad(t, []string{"--config", path}, nil)
	want := tcpopt.Options{KeepAlive: true, KeepIdle: 45 * time.Second, KeepInterval: 5 * time.Second, KeepCount: 4, UserTimeout: 65 * time.Second}
	if got := c.TCPOptions(); got != want {
		t.Errorf("TCPOptions() = %+v, want %+v", got, want)
	}
	if c.DNSMaxTTL != 5*time.Second {
		t.Errorf("DNSMaxTTL = %s, want 5s", c.DNSMaxTTL)
	}
	prod := Defaults(ProfileProduction)
	if d := prod.TCPOptions(); d != (tcpopt.Options{KeepAlive: true, KeepIdle: 30 * time.Second,
		KeepInterval: 10 * time.Second, KeepCount: 3, UserTimeout: time.Minute}) {
		t.Errorf("default TCPOptions() = %+v", d)
	}
	// A bare number is refused, not read as nanoseconds (PgBouncer's keys are in seconds).
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("tcp_keepidle: 30\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := load(t, []string{"--config", bad}, nil); err == nil || !strings.Contains(err.Error(), "tcp_keepidle: must be a duration with a unit") {
		t.Errorf("tcp_keepidle: 30: %v", err)
	}
}

func TestBareTLSKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte("tls:\nusers: []\nroutes:\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := mustLoad(t, []string{"--config", path}, nil)
	if c.TLS != (TLS{}) || c.Users != nil || c.Routes != nil {
		t.Errorf("got %v", c)
	}
}

// TestItemsRedact: SHOW CONFIG's rows never show a password.
func TestItemsRedact(t *testing.T) {
	c := Defaults(ProfileLocal)
	c.DatabaseURL = "postgres://app:s3cret-pw@db.example.com/app"
	items := c.Items()
	if len(items) != len(settings) {
		t.Fatalf("%d items, want %d", len(items), len(settings))
	}
	for _, it := range items {
		if strings.Contains(it.Value, "s3cret-pw") || strings.Contains(it.Default, "s3cret-pw") {
			t.Errorf("%s shows the password: %q", it.Key, it.Value)
		}
		if it.Key == "pool_size" && (it.Value != "10" || !it.Changeable) {
			t.Errorf("pool_size item %+v", it)
		}
		if it.Key == "listen" && it.Changeable {
			t.Error("listen cannot change on reload")
		}
	}
}
