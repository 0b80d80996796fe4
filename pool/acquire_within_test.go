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

// TestAcquireWithinDeadlinesOutOfOrder: waiters with different bounds give up each at its own
// time, whatever their order in the queue, and a waiter without a bound keeps its place.
func TestAcquireWithinDeadlinesOutOfOrder(t *testing.T) {
	defer leakCheck(t)()
	p, _ := newPool(t, func(c *pool.Config) { c.Size = 1 })
	defer p.Close()
	held := acquire(t, p)

	type result struct {
		wait    time.Duration
		elapsed time.Duration
		err     error
	}
	results := make(chan result, 3)
	start := time.Now()
	for i, wait := range []time.Duration{600 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond} {
		go func() {
			c, err := p.AcquireWithin(context.Background(), wait)
			if err == nil {
				p.Release(c)
			}
			results <- result{wait, time.Since(start), err}
		}()
		for p.Stat().Waiting != i+1 {
			time.Sleep(time.Millisecond)
		}
	}
	unbounded := make(chan *pool.Conn, 1)
	go func() {
		c, err := p.Acquire(context.Background())
		if err != nil {
			t.Errorf("unbounded Acquire: %v", err)
		}
		unbounded <- c
	}()
	for p.Stat().Waiting != 4 {
		time.Sleep(time.Millisecond)
	}
	var prev time.Duration
	for range 3 {
		r := <-results
		if !errors.Is(r.err, pool.ErrWaitTimeout) {
			t.Errorf("waiter bounded by %v: %v, want ErrWaitTimeout", r.wait, r.err)
		}
		if r.elapsed < r.wait || r.elapsed > r.wait+time.Second {
			t.Errorf("waiter bounded by %v gave up after %v", r.wait, r.elapsed)
		}
		if r.wait < prev {
			t.Errorf("waiter bounded by %v gave up after the one bounded by %v", r.wait, prev)
		}
		prev = r.wait
	}
	if s := p.Stat(); s.Waiting != 1 {
		t.Errorf("after the bounded waiters gave up: Waiting=%d, want 1", s.Waiting)
	}
	p.Release(held)
	if c := <-unbounded; c != held {
		t.Errorf("unbounded waiter got %p, want the released connection %p", c, held)
	} else {
		p.Release(c)
	}
}
