package pool

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"
)

// TestCancelTLSHandshakeFails: a cancel over TLS whose handshake fails returns an error (it
// used to panic on the failed TLS connection, leaving the session waiting for the cancel).
func TestCancelTLSHandshakeFails(t *testing.T) {
	// The cancel's destination agrees to TLS, then hangs up mid-handshake.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan struct{})
	go func() {
		defer close(served)
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		var req [8]byte
		if _, err := io.ReadFull(conn, req[:]); err == nil {
			_, _ = conn.Write([]byte{'S'})
		}
	}()
	client, server := tcpPair(t)
	defer client.Close()
	defer server.Close()
	c := &Conn{Conn: &addrConn{Conn: client, remote: ln.Addr()}, PID: 1, SecretKey: []byte{1, 2, 3, 4},
		cancelTLS: &tls.Config{ServerName: "localhost"}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.CancelRequest(ctx); err == nil {
		t.Fatal("a cancel whose TLS handshake failed reported success")
	}
	<-served
}

// addrConn is a net.Conn that reports another remote address.
type addrConn struct {
	net.Conn
	remote net.Addr
}

func (c *addrConn) RemoteAddr() net.Addr { return c.remote }
