package pool

import (
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		client.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// waitAlive polls c.alive until it reports want: what the peer sent takes a moment to arrive.
func waitAlive(t *testing.T, c *Conn, want bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for c.alive() != want {
		if time.Now().After(deadline) {
			t.Fatalf("alive() still %v after 5s, want %v", !want, want)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestAliveCheck(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	t.Run("quiet peer", func(t *testing.T) {
		client, _ := tcpPair(t)
		c := &Conn{Conn: client}
		for range 3 {
			if !c.alive() {
				t.Fatal("alive() = false for a connection whose peer sent nothing")
			}
		}
		if n := testing.AllocsPerRun(100, func() { c.alive() }); n != 0 {
			t.Errorf("alive() allocates %v times per call, want 0", n)
		}
	})

	t.Run("peer sent data", func(t *testing.T) {
		client, server := tcpPair(t)
		c := &Conn{Conn: client}
		if _, err := server.Write([]byte("E")); err != nil {
			t.Fatal(err)
		}
		waitAlive(t, c, false)
		// The peek consumed nothing.
		_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
		var b [1]byte
		if _, err := io.ReadFull(client, b[:]); err != nil || b[0] != 'E' {
			t.Errorf("read after the check: %q, %v; want \"E\"", b[:], err)
		}
	})

	t.Run("peer closed", func(t *testing.T) {
		client, server := tcpPair(t)
		c := &Conn{Conn: client}
		server.Close()
		waitAlive(t, c, false)
	})

	t.Run("not a socket", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		if c := (&Conn{Conn: a}); !c.alive() {
			t.Error("alive() = false for a pipe, want true (cannot check)")
		}
	})
}
