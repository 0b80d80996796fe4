package config

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

const testSCRAM = "SCRAM-SHA-256$4096:c2FsdA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBA="

func resolveConfig() Config {
	c := Defaults(ProfileLocal)
	c.MinPoolSize = 3
	c.DatabaseURL = "postgres://admin:adminpw@db.example.com:5432/postgres?sslmode=disable&application_name=sidecar"
	c.Users = []User{
		{Name: "alice", Password: "alicepw"},
		{Name: "bob", Password: testSCRAM},
		{Name: "carol", Password: "md50123456789abcdef0123456789abcdef"},
	}
	c.Routes = []Route{
		{Database: "reporting", DSN: "host=replica.example.com port=5433 sslmode=disable application_name='a b'", UpstreamUser: "reader", Password: "readerpw", PoolMode: "session", PoolSize: 4},
		{Database: "*", User: "batch", UpstreamDatabase: "batchdb", PoolSize: 2},
		{Database: "legacy", User: "*", DSN: "postgres://legacy_owner:legacypw@legacy.example.com:6000/ignored?password=qpw&dbname=ignored2&sslmode=disable"},
		{Database: "analytics", User: "alice", UpstreamUser: "admin"},
		{Database: "multi", DSN: "postgresql://h1.example.com:5432,h2.example.com:5433/x?sslmode=disable&target_session_attrs=read-write", Password: "multipw"},
	}
	return c
}

func TestResolve(t *testing.T) {
	c := resolveConfig()
	if err := c.Validate(); err != nil {
		t.Fatalf("test config invalid: %v", err)
	}
	tests := []struct {
		name           string
		database, user string
		wantDB         string
		wantUser       string
		wantPassword   string
		wantHost       string
		wantPort       uint16
		wantPoolSize   int
		wantMinPool    int
		wantMode       string
		wantAppName    string
	}{
		{"default route, DATABASE_URL user gets URL password", "app", "admin", "app", "admin", "adminpw", "db.example.com", 5432, 10, 3, "transaction", "sidecar"},
		{"default route, plain users entry", "app", "alice", "app", "alice", "alicepw", "db.example.com", 5432, 10, 3, "transaction", "sidecar"},
		{"default route, SCRAM entry gives no upstream password", "app", "bob", "app", "bob", "", "db.example.com", 5432, 10, 3, "transaction", "sidecar"},
		{"default route, md5 entry gives no upstream password", "app", "carol", "app", "carol", "", "db.example.com", 5432, 10, 3, "transaction", "sidecar"},
		{"default route, unknown user: URL password not reused", "app", "nobody", "app", "nobody", "", "db.example.com", 5432, 10, 3, "transaction", "sidecar"},
		{"route with dsn, user mapping and own password", "reporting", "alice", "reporting", "reader", "readerpw", "replica.example.com", 5433, 4, 3, "session", "a b"},
		{"first match wins over later wildcard", "reporting", "batch", "reporting", "reader", "readerpw", "replica.example.com", 5433, 4, 3, "session", "a b"},
		{"wildcard database route, database mapping", "anything", "batch", "batchdb", "batch", "", "db.example.com", 5432, 2, 2, "transaction", "sidecar"},
		{"route dsn user differs: users entry", "legacy", "alice", "legacy", "alice", "alicepw", "legacy.example.com", 6000, 10, 3, "transaction", ""},
		{"route dsn user matches: dsn password (query wins)", "legacy", "legacy_owner", "legacy", "legacy_owner", "qpw", "legacy.example.com", 6000, 10, 3, "transaction", ""},
		{"user mapped to DATABASE_URL user", "analytics", "alice", "analytics", "admin", "adminpw", "db.example.com", 5432, 10, 3, "transaction", "sidecar"},
		{"route user not matching falls through", "analytics", "bob", "analytics", "bob", "", "db.example.com", 5432, 10, 3, "transaction", "sidecar"},
		{"multi-host url", "multi", "zed", "multi", "zed", "multipw", "h1.example.com", 5432, 10, 3, "transaction", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up, err := c.Resolve(tt.database, tt.user)
			if err != nil {
				t.Fatal(err)
			}
			if up.Database != tt.wantDB || up.User != tt.wantUser || up.PoolSize != tt.wantPoolSize ||
				up.MinPoolSize != tt.wantMinPool || up.PoolMode != tt.wantMode {
				t.Errorf("got %v, want db %s user %s pool %d/%d %s", up, tt.wantDB, tt.wantUser, tt.wantMinPool, tt.wantPoolSize, tt.wantMode)
			}
			pc, err := pgconn.ParseConfig(up.ConnString)
			if err != nil {
				t.Fatalf("ParseConfig(ConnString %s): %v", RedactDSN(up.ConnString), err)
			}
			if pc.Database != tt.wantDB || pc.User != tt.wantUser || pc.Password != tt.wantPassword ||
				pc.Host != tt.wantHost || pc.Port != tt.wantPort {
				t.Errorf("ConnString parses to db %q user %q password %q host %q port %d; want %q %q %q %q %d",
					pc.Database, pc.User, pc.Password, pc.Host, pc.Port,
					tt.wantDB, tt.wantUser, tt.wantPassword, tt.wantHost, tt.wantPort)
			}
			if pc.TLSConfig != nil {
				t.Errorf("sslmode=disable lost")
			}
			if got := pc.RuntimeParams["application_name"]; got != tt.wantAppName {
				t.Errorf("application_name = %q, want %q", got, tt.wantAppName)
			}
			// Key: no secret, and it still identifies database and user.
			for _, secret := range []string{"adminpw", "alicepw", "readerpw", "legacypw", "qpw", "multipw"} {
				if strings.Contains(up.Key, secret) || strings.Contains(up.String(), secret) || strings.Contains(fmt.Sprintf("%#v", up), secret) {
					t.Errorf("Key or String leaks %q: %s", secret, up.Key)
				}
			}
			kc, err := pgconn.ParseConfig(up.Key)
			if err != nil {
				t.Fatalf("Key does not parse: %v", err)
			}
			if kc.Database != tt.wantDB || kc.User != tt.wantUser || kc.Host != tt.wantHost || kc.Port != tt.wantPort || kc.Password != "" {
				t.Errorf("Key %q parses to %s@%s:%d/%s", up.Key, kc.User, kc.Host, kc.Port, kc.Database)
			}
		})
	}

	// Multi-host: the second host survives.
	up, err := c.Resolve("multi", "zed")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := pgconn.ParseConfig(up.ConnString)
	if err != nil {
		t.Fatal(err)
	}
	if len(pc.Fallbacks) != 1 || pc.Fallbacks[0].Host != "h2.example.com" || pc.Fallbacks[0].Port != 5433 || pc.ValidateConnect == nil {
		t.Errorf("multi-host options lost: %+v validate=%v", pc.Fallbacks, pc.ValidateConnect != nil)
	}
}

func TestResolveKeyStable(t *testing.T) {
	c := resolveConfig()
	a, _ := c.Resolve("app", "alice")
	b, _ := c.Resolve("app", "alice")
	d, _ := c.Resolve("app", "bob")
	if a.Key != b.Key || a.Key == d.Key {
		t.Errorf("keys: %q %q %q", a.Key, b.Key, d.Key)
	}
	// Two client databases mapped to the same upstream share a pool.
	c.Routes = []Route{{Database: "x", UpstreamDatabase: "shared"}, {Database: "y", UpstreamDatabase: "shared"}}
	x, _ := c.Resolve("x", "alice")
	y, _ := c.Resolve("y", "alice")
	if x.Key != y.Key {
		t.Errorf("mapped keys differ: %q %q", x.Key, y.Key)
	}
}

func TestResolveSpecialCharacters(t *testing.T) {
	for _, base := range []string{"postgres://db.example.com:5432/x?sslmode=disable", "host=db.example.com port=5432 sslmode=disable"} {
		c := Defaults(ProfileLocal)
		c.DatabaseURL = base
		c.Users = []User{{Name: "we ird@user", Password: `p@ss:w/o'r\d %20`}}
		up, err := c.Resolve("my db/ä", "we ird@user")
		if err != nil {
			t.Fatal(err)
		}
		pc, err := pgconn.ParseConfig(up.ConnString)
		if err != nil {
			t.Fatalf("%s: %v", base, err)
		}
		if pc.Database != "my db/ä" || pc.User != "we ird@user" || pc.Password != `p@ss:w/o'r\d %20` {
			t.Errorf("%s: got db %q user %q password %q", base, pc.Database, pc.User, pc.Password)
		}
	}
}

func TestResolveNoUpstream(t *testing.T) {
	c := Defaults(ProfileLocal)
	c.Users = []User{{Name: "alice", Password: "alicepw"}}
	_, err := c.Resolve("app", "alice")
	if err == nil || !strings.Contains(err.Error(), "database_url is not set") {
		t.Errorf("err = %v", err)
	}
	if err != nil && strings.Contains(err.Error(), "alicepw") {
		t.Errorf("error leaks a password: %v", err)
	}
}

func TestRouteMatching(t *testing.T) {
	c := Config{Routes: []Route{
		{Database: "a", User: "u"},
		{Database: "a", User: "*"},
		{Database: "*", User: ""},
	}}
	for _, tt := range []struct {
		db, user string
		want     int
	}{
		{"a", "u", 0}, {"a", "v", 1}, {"b", "u", 2},
	} {
		r, ok := c.Route(tt.db, tt.user)
		if !ok || r != c.Routes[tt.want] {
			t.Errorf("Route(%s, %s) = %v %v, want routes[%d]", tt.db, tt.user, r, ok, tt.want)
		}
	}
	if _, ok := (&Config{Routes: []Route{{Database: "a"}}}).Route("b", "u"); ok {
		t.Error("Route matched a different database")
	}
}

func TestResolveKeyMasksSSLPassword(t *testing.T) {
	c := Defaults(ProfileLocal)
	c.DatabaseURL = "host=db.example.com sslpassword=keypass user=admin password=adminpw"
	up, err := c.Resolve("app", "admin")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(up.Key, "keypass") || strings.Contains(up.Key, "adminpw") {
		t.Errorf("Key leaks a secret: %s", up.Key)
	}
	if !strings.Contains(up.ConnString, "sslpassword=keypass") || !strings.Contains(up.ConnString, "password=adminpw") {
		t.Errorf("ConnString lost options: %s", RedactDSN(up.ConnString))
	}
}

// TestResolveLoadBalanceHosts: load_balance_hosts leaves ConnString (pgconn would send it to the
// server, which refuses unknown parameters) and comes back as LoadBalanceHosts; Key keeps it,
// so two routes differing only in it get separate pools.
func TestResolveLoadBalanceHosts(t *testing.T) {
	tests := []struct {
		name, dsn, want string
	}{
		{"url random", "postgres://app:pw@h1.example.com:5432,h2.example.com:5433/x?load_balance_hosts=random&sslmode=disable", LoadBalanceRandom},
		{"url random last", "postgres://app:pw@h1.example.com,h2.example.com/x?sslmode=disable&target_session_attrs=read-write&load_balance_hosts=random", LoadBalanceRandom},
		{"url disable", "postgres://app:pw@h1.example.com,h2.example.com/x?load_balance_hosts=disable", LoadBalanceDisable},
		{"url absent", "postgres://app:pw@h1.example.com,h2.example.com/x", LoadBalanceDisable},
		{"kv random", "host=h1.example.com,h2.example.com user=app password=pw load_balance_hosts=random sslmode=disable", LoadBalanceRandom},
		{"kv twice, last wins", "host=h1.example.com,h2.example.com load_balance_hosts=random load_balance_hosts=disable", LoadBalanceDisable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Defaults(ProfileLocal)
			c.DatabaseURL = tt.dsn
			if err := c.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			up, err := c.Resolve("app", "app")
			if err != nil {
				t.Fatal(err)
			}
			if up.LoadBalanceHosts != tt.want {
				t.Errorf("LoadBalanceHosts = %q, want %q", up.LoadBalanceHosts, tt.want)
			}
			if strings.Contains(up.ConnString, "load_balance_hosts") {
				t.Errorf("ConnString keeps the option: %s", RedactDSN(up.ConnString))
			}
			pc, err := pgconn.ParseConfig(up.ConnString)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := pc.RuntimeParams["load_balance_hosts"]; ok {
				t.Error("load_balance_hosts would be sent to the server")
			}
			hosts := []string{pc.Host}
			for _, fb := range pc.Fallbacks {
				if fb.Host != hosts[len(hosts)-1] { // sslmode=prefer lists each host twice
					hosts = append(hosts, fb.Host)
				}
			}
			if strings.Join(hosts, ",") != "h1.example.com,h2.example.com" {
				t.Errorf("ConnString parses to hosts %q, want h1 then h2", hosts)
			}
			if strings.Contains(tt.dsn, "load_balance_hosts") != strings.Contains(up.Key, "load_balance_hosts") {
				t.Errorf("Key %s: option kept %v, want %v", up.Key, !strings.Contains(tt.dsn, "load_balance_hosts"), strings.Contains(tt.dsn, "load_balance_hosts"))
			}
		})
	}

	c := Defaults(ProfileLocal)
	c.DatabaseURL = "postgres://app:s3cr3t@h1,h2/x?load_balance_hosts=on"
	_, err := c.Resolve("app", "app")
	if err == nil || !strings.Contains(err.Error(), `load_balance_hosts: must be "disable" or "random", got "on"`) || strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("Resolve with a bad load_balance_hosts: %v", err)
	}
}

func TestSplitLoadBalanceHosts(t *testing.T) {
	tests := []struct {
		dsn, wantConn, wantMode, wantErr string
	}{
		{"postgres://u:pw@h1,h2/db?load_balance_hosts=random", "postgres://u:pw@h1,h2/db", LoadBalanceRandom, ""},
		{"postgres://u:pw@h1,h2/db?a=1&load_balance_hosts=random&b=2", "postgres://u:pw@h1,h2/db?a=1&b=2", LoadBalanceRandom, ""},
		{"postgresql://h1,h2?load_balance_hosts=disable", "postgresql://h1,h2", LoadBalanceDisable, ""},
		{"postgres://u:pw@h1/db?sslmode=disable", "postgres://u:pw@h1/db?sslmode=disable", LoadBalanceDisable, ""},
		{"host=h1,h2 dbname=db password='p w' load_balance_hosts=random", "host=h1,h2 dbname=db password='p w'", LoadBalanceRandom, ""},
		{"host=h1 password=x", "host=h1 password=x", LoadBalanceDisable, ""},
		{"postgres://u:s3cr3t@h1,h2/db?load_balance_hosts=sometimes", "", "", `got "sometimes"`},
		{"host=h1 password='s3cr3t", "", "", "cannot parse"},
	}
	for _, tt := range tests {
		conn, mode, err := SplitLoadBalanceHosts(tt.dsn)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || strings.Contains(err.Error(), "s3cr3t") {
				t.Errorf("SplitLoadBalanceHosts(%s): %v, want an error with %q and no secret", RedactDSN(tt.dsn), err, tt.wantErr)
			}
			continue
		}
		if err != nil || conn != tt.wantConn || mode != tt.wantMode {
			t.Errorf("SplitLoadBalanceHosts(%s) = %q, %q, %v; want %q, %q", RedactDSN(tt.dsn), RedactDSN(conn), mode, err, RedactDSN(tt.wantConn), tt.wantMode)
		}
	}
}

// Configured marks the pairs an operator named, whose pools are kept; the rest are chosen by
// clients.
func TestResolveConfigured(t *testing.T) {
	c := resolveConfig()
	c.Routes = append(c.Routes, Route{Database: "named", User: "alice", DSN: "host=h sslmode=disable"})
	for _, tt := range []struct {
		database, user string
		want           bool
	}{
		{"postgres", "admin", true},   // database_url's own database and user
		{"app", "admin", false},       // another database on the default route
		{"postgres", "alice", false},  // another user
		{"named", "alice", true},      // a route naming both
		{"reporting", "alice", false}, // a route for any user
		{"anything", "batch", false},  // a wildcard database
		{"legacy", "zed", false},      // a wildcard user
	} {
		up, err := c.Resolve(tt.database, tt.user)
		if err != nil {
			t.Fatal(err)
		}
		if up.Configured != tt.want {
			t.Errorf("Resolve(%q, %q).Configured = %v, want %v", tt.database, tt.user, up.Configured, tt.want)
		}
	}
	c.DatabaseURL = "postgres://owner@db.example.com/?sslmode=disable"
	if up, _ := c.Resolve("owner", "owner"); !up.Configured {
		t.Error("a database_url without a database names the user's own")
	}
}

func TestConfiguredUpstreams(t *testing.T) {
	c := resolveConfig()
	c.Routes = append(c.Routes,
		Route{Database: "named", User: "alice", DSN: "host=h sslmode=disable"},
		Route{Database: "named", User: "alice", DSN: "host=shadowed sslmode=disable"}, // never matches
		Route{Database: "reporting", User: "zed"},                                     // shadowed by the first route, for any user
	)
	ups, err := c.ConfiguredUpstreams()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, up := range ups {
		got = append(got, up.Database+"/"+up.User)
	}
	if want := []string{"postgres/admin", "analytics/admin", "named/alice"}; !slices.Equal(got, want) {
		t.Errorf("ConfiguredUpstreams = %q, want %q", got, want)
	}
}
