package auth

import (
	"encoding/base64"
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/xdg-go/scram"
)

var verifierRE = regexp.MustCompile(`^SCRAM-SHA-256\$4096:([A-Za-z0-9+/]{22}==)\$([A-Za-z0-9+/]{43}=):([A-Za-z0-9+/]{43}=)$`)

// converse runs an xdg-go/scram client for password against a server holding
// cred and reports whether both sides accept.
func converse(t *testing.T, cred scram.StoredCredentials, password string) bool {
	t.Helper()
	client, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		client, _ = scram.SHA256.NewClientUnprepped("", password, "")
	}
	server, err := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) { return cred, nil })
	if err != nil {
		t.Fatal(err)
	}
	cc, sc := client.NewConversation(), server.NewConversation()
	c1, err := cc.Step("")
	if err != nil {
		t.Fatal(err)
	}
	s1, err := sc.Step(c1)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := cc.Step(s1)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := sc.Step(c2)
	if err != nil {
		return false
	}
	if _, err := cc.Step(s2); err != nil {
		t.Fatalf("client rejects server signature: %v", err)
	}
	return sc.Valid()
}

func TestSCRAMVerifier(t *testing.T) {
	for _, tt := range []struct{ name, password string }{
		{"ascii", "s3cret"},
		{"empty", ""},
		{"nbsp", "pass\u00a0word"},
		{"emoji", "emoji\U0001F600"},
		{"long", strings.Repeat("x", 1000)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			v, err := SCRAMVerifier(tt.password)
			if err != nil {
				t.Fatal(err)
			}
			m := verifierRE.FindStringSubmatch(v)
			if m == nil {
				t.Fatalf("verifier %q does not match %s", v, verifierRE)
			}
			if salt, _ := base64.StdEncoding.DecodeString(m[1]); len(salt) != 16 {
				t.Errorf("salt is %d bytes, want 16", len(salt))
			}
			v2, err := SCRAMVerifier(tt.password)
			if err != nil {
				t.Fatal(err)
			}
			if v2 == v {
				t.Errorf("two verifiers are equal: salt is not random")
			}
			cred, err := parseVerifier(v)
			if err != nil {
				t.Fatal(err)
			}
			if got := formatVerifier(cred); got != v {
				t.Errorf("round trip: %q, want %q", got, v)
			}
			if !converse(t, cred, tt.password) {
				t.Errorf("right password rejected")
			}
			if converse(t, cred, tt.password+"x") {
				t.Errorf("wrong password accepted")
			}
		})
	}
}

// TestSCRAMVerifierPostgres checks the derivation against verifiers made by
// PostgreSQL 15 (CREATE ROLE ... PASSWORD), including passwords that SASLprep
// changes.
func TestSCRAMVerifierPostgres(t *testing.T) {
	for _, tt := range []struct{ password, verifier string }{
		{"soft\u00adhyphen", "SCRAM-SHA-256$4096:W1MFwLaUzgguTXeVD/+GrQ==$s+R3MkJnzGDBIuFwYJp/H6HLWSj9k/5hyqIQzz9ZMls=:QaZ+Xtd4is1qdE/QZnZ/Soo41OafSQPaeeUZLXLtRso="},
		{"pass\u00a0word", "SCRAM-SHA-256$4096:ACh+sXgqJ50yAzELlLtOZA==$BV+CvjtK8qHjslFR9v4dQ/8jsB45BWRgHMUqYO8RM+I=:Xbz4JGmAMl6cTHN59TSXWArPIhhq9yMeojTe572RUGY="},
	} {
		cred, err := parseVerifier(tt.verifier)
		if err != nil {
			t.Fatal(err)
		}
		derived, err := deriveCredentials(tt.password, []byte(cred.Salt))
		if err != nil {
			t.Fatal(err)
		}
		if got := formatVerifier(derived); got != tt.verifier {
			t.Errorf("password %q: derived %q, PostgreSQL made %q", tt.password, got, tt.verifier)
		}
	}
}

func TestParseVerifierErrors(t *testing.T) {
	good, err := SCRAMVerifier("s3cret")
	if err != nil {
		t.Fatal(err)
	}
	_, keys, _ := strings.Cut(strings.TrimPrefix(good, "SCRAM-SHA-256$"), "$")
	for _, v := range []string{
		"SCRAM-SHA-256$",
		"SCRAM-SHA-256$4096:c2FsdA==",
		"SCRAM-SHA-256$4096$" + keys,
		"SCRAM-SHA-256$0:c2FsdA==$" + keys,
		"SCRAM-SHA-256$-1:c2FsdA==$" + keys,
		"SCRAM-SHA-256$x:c2FsdA==$" + keys,
		"SCRAM-SHA-256$4096:$" + keys,
		"SCRAM-SHA-256$4096:!!!$" + keys,
		"SCRAM-SHA-256$4096:c2FsdA==$c2VjcmV0",
		"SCRAM-SHA-256$4096:c2FsdA==$c2VjcmV0:c2VjcmV0",
		"SCRAM-SHA-256$4096:c2FsdA==$" + keys + "x",
		"SCRAM-SHA-1$4096:c2FsdA==$" + keys,
	} {
		_, err := parseVerifier(v)
		if !errors.Is(err, errBadVerifier) {
			t.Errorf("parseVerifier(%q) = %v, want errBadVerifier", v, err)
			continue
		}
		if strings.Contains(err.Error(), "c2VjcmV0") || strings.Contains(err.Error(), keys[:10]) {
			t.Errorf("error %q contains part of the verifier", err)
		}
	}
}

func TestCredentialsPrepared(t *testing.T) {
	var c Credentials
	if err := c.Prepare(map[string]string{"a": "pw-a", "v": "SCRAM-SHA-256$4096:c2FsdA==$a2V5:a2V5"}); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.lookup("v"); ok {
		t.Error("a SCRAM verifier needs no derived credentials")
	}
	want, err := deriveCredentials("pw-a", userSalt("a"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.scramFor("a", "pw-a")
	if err != nil || string(got.StoredKey) != string(want.StoredKey) {
		t.Fatalf("prepared credentials differ: %v", err)
	}
	// A password changed since Prepare is derived anew, never the old credentials.
	other, err := c.scramFor("a", "pw-b")
	if err != nil || string(other.StoredKey) == string(want.StoredKey) {
		t.Fatalf("a changed password got the old credentials: %v", err)
	}
	if err := c.Prepare(map[string]string{}); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.lookup("a"); ok {
		t.Error("a removed user's credentials are kept")
	}
}
