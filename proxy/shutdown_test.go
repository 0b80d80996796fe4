package proxy

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestShutdownDuringLogins shuts the server down while clients are logging in and querying: no
// data race (the suite runs with -race), no hang, and every session ends.
func TestShutdownDuringLogins(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	loggedIn := make(chan struct{})
	var once sync.Once
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
				conn, err := pgx.Connect(cctx, p.dsn("postgres", "postgres"))
				if err == nil {
					once.Do(func() { close(loggedIn) })
					_, _ = conn.Exec(cctx, "select 1")
					_ = conn.Close(cctx)
				}
				ccancel()
			}
		}()
	}
	select {
	case <-loggedIn: // logins are under way
	case <-ctx.Done():
		close(stop)
		wg.Wait()
		t.Fatal("no client logged in")
	}
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	if err := p.srv.Shutdown(sctx); err != nil {
		t.Logf("shutdown: %v", err) // sessions closed at the deadline is acceptable here
	}
	close(stop)
	wg.Wait()
	p.srv.mu.Lock()
	n := len(p.srv.sessions)
	p.srv.mu.Unlock()
	if n != 0 {
		t.Errorf("%d sessions left after shutdown", n)
	}
}
