package main

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

// Secrets with the characters that break naive quoting and splitting, and no fragment that
// ordinary output contains.
const (
	secretUpstream = "Qz@9:x Kv%7w"  // database_url's password
	secretRoute    = "Jx: 8@Wq%3v"   // a route's upstream password
	secretClient   = "Zk@ 7:Pq%1m y" // a users entry's password (client and upstream)
	secretWrong    = "Vq:6 @Xw%2j"   // a wrong password a client tries
)

// fragments returns every substring of s of n or more bytes.
func fragments(s string, n int) []string {
	var out []string
	for i := 0; i < len(s); i++ {
		for j := i + n; j <= len(s); j++ {
			out = append(out, s[i:j])
		}
	}
	return out
}

// TestNoSecretLeaks runs pgsidecar with a database_url, a route and a users entry whose
// passwords hold '@', '%', ':' and spaces, drives logins (right and wrong), queries, errors and
// a route whose upstream refuses its password, then scans the logs, /metrics, /api/health,
// `config print` and every error a client was sent: no fragment of 4 or more characters of any
// secret may appear.
func TestNoSecretLeaks(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := pgtest.Must(t, pgtest.Options{Auth: "scram-sha-256", Password: secretUpstream})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, sql := range []string{
		"CREATE ROLE rte LOGIN PASSWORD '" + strings.ReplaceAll(secretRoute, "'", "''") + "'",
		"CREATE ROLE cli LOGIN PASSWORD '" + strings.ReplaceAll(secretClient, "'", "''") + "'",
		"CREATE ROLE refused LOGIN PASSWORD 'something else entirely'",
	} {
		if err := c.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	upstream := (&url.URL{Scheme: "postgres", User: url.UserPassword("postgres", secretUpstream),
		Host: fmt.Sprintf("127.0.0.1:%d", c.Port()), Path: "/postgres", RawQuery: "sslmode=disable"}).String()
	file := filepath.Join(t.TempDir(), "pgsidecar.yaml")
	yaml := fmt.Sprintf(`auth_type: scram-sha-256
log_level: debug
users:
  - name: cli
    password: %q
  - name: postgres
    password: %q
routes:
  - database: reporting
    dsn: "host=127.0.0.1 port=%d dbname=postgres sslmode=disable"
    upstream_database: postgres
    upstream_user: rte
    password: %q
  - database: refusing
    dsn: "host=127.0.0.1 port=%d dbname=postgres sslmode=disable"
    upstream_database: postgres
    upstream_user: refused
    password: %q
`, secretClient, secretUpstream, c.Port(), secretRoute, c.Port(), secretWrong)
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"DATABASE_URL=" + upstream}
	args := []string{"--config", file, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--pool-size", "3"}

	var stdout, stderr bytes.Buffer
	started := make(chan running, 1)
	code := make(chan int, 1)
	runCtx, stop := context.WithCancel(ctx)
	go func() { code <- run(runCtx, args, env, &stdout, &stderr, started, nil) }()
	var inst running
	select {
	case inst = <-started:
	case c := <-code:
		stop()
		t.Fatalf("pgsidecar exited with %d\n%s%s", c, stdout.String(), stderr.String())
	case <-time.After(60 * time.Second):
		stop()
		t.Fatal("pgsidecar did not start")
	}
	addr := inst.ProxyAddrs[0].String()

	var seen strings.Builder // everything a client or an operator was shown
	var clientErrs strings.Builder
	defer func() { t.Logf("client errors:\n%s", clientErrs.String()) }()
	dial := func(user, password, database string) {
		u := url.URL{Scheme: "postgres", User: url.UserPassword(user, password), Host: addr, Path: "/" + database, RawQuery: "sslmode=disable"}
		conn, err := pgx.Connect(ctx, u.String())
		if err != nil {
			seen.WriteString(err.Error() + "\n")
			clientErrs.WriteString(user + "@" + database + ": " + err.Error() + "\n")
			return
		}
		defer conn.Close(ctx)
		var one int
		if err := conn.QueryRow(ctx, "select 1").Scan(&one); err != nil {
			seen.WriteString(err.Error() + "\n")
		}
		if _, err := conn.Exec(ctx, "select * from no_such_table"); err != nil {
			seen.WriteString(err.Error() + "\n")
			clientErrs.WriteString(user + "@" + database + ": " + err.Error() + "\n")
		}
	}
	dial("cli", secretClient, "postgres")         // works, through database_url's host as cli
	dial("cli", secretWrong, "postgres")          // wrong password
	dial("postgres", secretUpstream, "reporting") // the route
	dial("postgres", secretUpstream, "refusing")  // a route whose upstream refuses its password
	dial("nobody", secretWrong, "postgres")       // unknown user

	for _, path := range []string{"/metrics", "/api/health", "/readyz", "/startupz"} {
		_, body := get(t, "http://"+inst.HTTPAddr.String()+path)
		seen.WriteString(body + "\n")
	}
	var printed, printErr bytes.Buffer
	if c := run(ctx, []string{"config", "print", "--config", file}, env, &printed, &printErr, nil, nil); c != exitOK {
		t.Errorf("config print: exit %d: %s", c, printErr.String())
	}
	seen.WriteString(printed.String() + printErr.String())
	stop()
	select {
	case <-code:
	case <-time.After(60 * time.Second):
		t.Fatal("pgsidecar did not stop")
	}
	seen.WriteString(stdout.String() + stderr.String())

	all := seen.String()
	if !strings.Contains(all, "pgsidecar_") || !strings.Contains(all, "42P01") {
		t.Fatalf("the scan did not see the run (no metrics or no client error):\n%s", all)
	}
	for _, secret := range []string{secretUpstream, secretRoute, secretClient, secretWrong} {
		frags := fragments(secret, 4)
		// The forms a secret takes in a URL or a query string, too.
		userinfo := strings.TrimPrefix(url.UserPassword("u", secret).String(), "u:")
		for _, encoded := range []string{userinfo, url.QueryEscape(secret), url.PathEscape(secret)} {
			frags = append(frags, fragments(encoded, 6)...)
		}
		for _, frag := range frags {
			if i := strings.Index(all, frag); i >= 0 {
				lo, hi := max(0, i-80), min(len(all), i+len(frag)+80)
				t.Errorf("a fragment %q of a secret appears: ...%s...", frag, all[lo:hi])
				break
			}
		}
	}
}
