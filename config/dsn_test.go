package config

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRedactDSN(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"", ""},
		{"postgres://app:hunter2@db.example.com:5432/app?sslmode=require",
			"postgres://app:xxxxx@db.example.com:5432/app?sslmode=require"},
		{"postgresql://app:hun%40ter2@h1:5432,h2:5433/app",
			"postgresql://app:xxxxx@h1:5432,h2:5433/app"},
		{"postgres://app@[::1]:5432/app?password=hunter2&sslpassword=hunter2&application_name=x",
			"postgres://app@[::1]:5432/app?password=xxxxx&sslpassword=xxxxx&application_name=x"},
		// A raw '@' in the password: refused by validation, and nothing of it shown.
		{"postgres://app:hun@ter2@db/app", "postgres://xxxxx@..."},
		{"postgres://db.example.com/app", "postgres://db.example.com/app"},
		{"host=db.example.com user=app password=hunter2 dbname=app",
			"host=db.example.com user=app password=xxxxx dbname=app"},
		{"host=db.example.com password = 'hunter2 with \\' quote' sslmode=require",
			"host=db.example.com password=xxxxx sslmode=require"},
		{"host=db sslpassword=hunter2", "host=db sslpassword=xxxxx"},
		{"host=db password='hunter2", "host=db password=xxxxx ..."},
		{"host=db oops hunter2 password=hunter2", "host=db oops hunter2 password=xxxxx ..."},
	}
	for _, tt := range tests {
		got := RedactDSN(tt.in)
		if got != tt.want {
			t.Errorf("RedactDSN(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	// No password survives, whatever the form.
	for _, tt := range tests[:len(tests)-1] {
		if strings.Contains(RedactDSN(tt.in), "hunter2") || strings.Contains(RedactDSN(tt.in), "hun%40ter2") {
			t.Errorf("RedactDSN(%q) leaks the password", tt.in)
		}
	}
}

func TestPrintRedacts(t *testing.T) {
	c := mustLoad(t, []string{"--config=testdata/full.yaml"}, []string{
		"PGSIDECAR_USERS=alice:alice-plain,bob:bob-secret",
	})
	var buf bytes.Buffer
	if err := c.Print(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, secret := range []string{"file-secret", "alice-plain", "bob-secret", "reader-secret"} {
		if strings.Contains(out, secret) {
			t.Errorf("Print leaks %q:\n%s", secret, out)
		}
		for _, s := range []string{c.String(), fmt.Sprint(c), fmt.Sprintf("%v %+v %#v %s", *c, *c, *c, *c), fmt.Sprint(c.Users, c.Routes)} {
			if strings.Contains(s, secret) {
				t.Errorf("formatting leaks %q: %s", secret, s)
			}
		}
	}
	for _, want := range []string{
		"profile: local\n",
		"database_url: postgres://admin:xxxxx@db.example.com:5432/app?sslmode=require\n",
		"pool_mode: session\n",
		"pool_size: 20\n",
		"query_wait_timeout: 5s\n",
		"server_lifetime: 0s\n",
		"auth_type: md5\n",
		"  - name: bob\n    password: xxxxx\n",
		"dsn: host=replica.example.com port=5433 sslmode=disable\n",
		"upstream_user: reader\n",
		"tls:\n  cert_file: \"\"\n",
		"max_message_size: 1073741824\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("Print output lacks %q:\n%s", want, out)
		}
	}
}

func TestPrintRoundTrips(t *testing.T) {
	// Printed output (secrets aside) is a valid config file that loads to
	// the same values.
	c := mustLoad(t, []string{"--profile=edge", "--pool-mode=session", "--listen=127.0.0.1:1,[::1]:2"}, nil)
	var buf bytes.Buffer
	if err := c.Print(&buf); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "printed.yaml")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	c2 := mustLoad(t, []string{"--config=" + path}, nil)
	if c.String() != c2.String() {
		t.Errorf("round trip differs:\n%s\n---\n%s", c, c2)
	}
}
