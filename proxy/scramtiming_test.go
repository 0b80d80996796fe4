package proxy

import (
	"bufio"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/config"
)

// TestSCRAMTimingHidesUsers: the time to the first SCRAM message does not tell a known user
// from an unknown one (each user's credentials are derived once, not per login).
func TestSCRAMTimingHidesUsers(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.AuthType = config.AuthSCRAMSHA256
		cfg.Users = []config.User{{Name: "known", Password: "plain-text password"}}
	})
	timeToSASL := func(user string) time.Duration {
		conn, err := net.DialTimeout("tcp", p.addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		rc := &rawClient{t: t, conn: conn, r: bufio.NewReader(conn)}
		start := time.Now()
		rc.send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
			Parameters: map[string]string{"user": user, "database": "postgres"}})
		typ, body := rc.recv()
		d := time.Since(start)
		if typ != 'R' || len(body) < 4 || body[3] != 10 { // AuthenticationSASL
			t.Fatalf("%s: got %q %x, want AuthenticationSASL", user, typ, body)
		}
		return d
	}
	// Alternating, so that a burst of load on a shared machine hits both alike.
	var knownTimes, unknownTimes []time.Duration
	timeToSASL("known") // the first login of a user may prepare what later ones use
	timeToSASL("nobody-at-all")
	for range 50 {
		knownTimes = append(knownTimes, timeToSASL("known"))
		unknownTimes = append(unknownTimes, timeToSASL("nobody-at-all"))
	}
	median := func(ds []time.Duration) time.Duration {
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	known, unknown := median(knownTimes), median(unknownTimes)
	t.Logf("median time to AuthenticationSASL: known user %v, unknown user %v", known, unknown)
	if known > 2*unknown || unknown > 2*known {
		t.Errorf("known user %v vs unknown user %v: more than 2x apart", known, unknown)
	}
}
