package pool_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/pool"
)

// TestAcquireWithin checks the wait bound of AcquireWithin on its two paths: waiting for a
// busy pool's connection, and dialling an upstream that never answers.
func TestAcquireWithin(t *testing.T) {
	defer leakCheck(t)()
	p, _ := newPool(t, func(c *pool.Config) { c.Size = 1 })
	defer p.Close()
	held := acquire(t, p)

	start := time.Now()
	c, err := p.AcquireWithin(context.Background(), 150*time.Millisecond)
	elapsed := time.Since(start)
	if err == nil {
		p.Release(c)
		t.Fatal("AcquireWithin on a full pool succeeded")
	}
	if !errors.Is(err, pool.ErrWaitTimeout) {
		t.Errorf("AcquireWithin: %v, want ErrWaitTimeout", err)
	}
	if elapsed < 150*time.Millisecond || elapsed > 2*time.Second {
		t.Errorf("AcquireWithin gave up after %v, want 150ms (plus a little)", elapsed)
	}
	if s := p.Stat(); s.Waiting != 0 || s.InUse != 1 {
		t.Errorf("after the timeout: Waiting=%d InUse=%d, want 0 1", s.Waiting, s.InUse)
	}

	// A waiter within its bound gets the released connection.
	got := make(chan *pool.Conn, 1)
	go func() {
		c, err := p.AcquireWithin(context.Background(), 10*time.Second)
		if err != nil {
			t.Errorf("AcquireWithin while the connection is released: %v", err)
		}
		got <- c
	}()
	for p.Stat().Waiting != 1 {
		time.Sleep(time.Millisecond)
	}
	p.Release(held)
	if c := <-got; c != held {
		t.Errorf("waiter got %p, want the released connection %p", c, held)
	} else {
		p.Release(c)
	}
}

// TestAcquireWithinBoundsDial checks that a dial to an upstream that accepts but never answers
// ends at the wait bound.
func TestAcquireWithinBoundsDial(t *testing.T) {
	defer leakCheck(t)()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c // held open, never answered
		}
	}()
	cc, err := pgconn.ParseConfig("postgres://u@" + ln.Addr().String() + "/db?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	p := pool.New(pool.Config{Key: "silent", ConnConfig: cc, Size: 1})
	defer p.Close()
	start := time.Now()
	c, err := p.AcquireWithin(context.Background(), 200*time.Millisecond)
	elapsed := time.Since(start)
	if err == nil {
		p.Release(c)
		t.Fatal("AcquireWithin of a silent upstream succeeded")
	}
	if !errors.Is(err, pool.ErrWaitTimeout) {
		t.Errorf("AcquireWithin: %v, want ErrWaitTimeout", err)
	}
	if elapsed < 200*time.Millisecond || elapsed > 3*time.Second {
		t.Errorf("AcquireWithin gave up after %v, want 200ms (plus a little)", elapsed)
	}
	_ = ln.Close()
	for c := range accepted {
		_ = c.Close()
	}
}
