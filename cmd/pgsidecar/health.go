package main

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/health"
	"github.com/pgsidecar/pgsidecar/pool"
)

// report is the "details" document of /api/health: stable snake_case names, times in seconds.
type report struct {
	Profile         string               `json:"profile"`
	Version         string               `json:"version"`
	UptimeSeconds   float64              `json:"uptime_seconds"`
	Upstreams       []health.ProbeStatus `json:"upstreams"`
	Pools           []poolReport         `json:"pools"`
	Recommendations []string             `json:"recommendations"`
}

// poolReport is one pool in /api/health.
type poolReport struct {
	Key                string  `json:"key"`
	Database           string  `json:"database"`
	User               string  `json:"user"`
	Size               int     `json:"size"`
	MinSize            int     `json:"min_size"`
	Open               int     `json:"open"`
	Idle               int     `json:"idle"`
	Active             int     `json:"active"`
	Dialing            int     `json:"dialing"`
	Clients            int     `json:"clients"`
	Waiting            int     `json:"waiting"`
	MaxWaitSeconds     float64 `json:"max_wait_seconds"`
	Acquires           uint64  `json:"acquires"`
	Waits              uint64  `json:"waits"`
	WaitSeconds        float64 `json:"wait_seconds"`
	Transactions       uint64  `json:"transactions"`
	Queries            uint64  `json:"queries"`
	BytesReceived      uint64  `json:"bytes_received"`
	BytesSent          uint64  `json:"bytes_sent"`
	Dials              uint64  `json:"dials"`
	DialErrors         uint64  `json:"dial_errors"`
	ServerCloses       uint64  `json:"server_closes"`
	StatementEvictions uint64  `json:"statement_evictions"`
	LastError          string  `json:"last_error,omitempty"`
}

func poolReportOf(st pool.Stat, lastErr error) poolReport {
	r := poolReport{Key: st.Key, Database: st.Database, User: st.User, Size: st.Size, MinSize: st.MinSize,
		Open: st.Open, Idle: st.Idle, Active: st.InUse, Dialing: st.Dialing, Clients: st.Clients, Waiting: st.Waiting,
		MaxWaitSeconds: st.MaxWait.Seconds(), Acquires: st.Acquires, Waits: st.Waits, WaitSeconds: st.WaitDuration.Seconds(),
		Transactions: st.Transactions, Queries: st.Queries, BytesReceived: st.Received, BytesSent: st.Sent,
		Dials: st.Dials, DialErrors: st.DialErrors, ServerCloses: st.Closes, StatementEvictions: st.StatementEvictions}
	if lastErr != nil {
		// pgconn's messages name host, user and database, never the password.
		r.LastError = lastErr.Error()
	}
	return r
}

// adviceWindow is how far back the recommendations look; samples are taken every
// adviceInterval and kept for the window.
const (
	adviceWindow   = time.Minute
	adviceInterval = 10 * time.Second
)

// advisor turns what happened in the last minute into recommendations an operator can act on.
type advisor struct {
	pools   *pool.Set
	probers []*health.Prober
	pins    func() (map[string]int, int)
	cfg     func() *config.Config

	mu      sync.Mutex
	samples []sample // oldest first, spanning at most adviceWindow
}

// sample is the pools' counters at one time.
type sample struct {
	at    time.Time
	pools map[string]pool.Stat
}

func (a *advisor) take(now time.Time) sample {
	s := sample{at: now, pools: make(map[string]pool.Stat)}
	for _, st := range a.pools.Stats() {
		s.pools[st.Key] = st
	}
	return s
}

// run samples the pools until ctx ends.
func (a *advisor) run(ctx context.Context) {
	a.record(a.take(time.Now()))
	t := time.NewTicker(adviceInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			a.record(a.take(now))
		}
	}
}

func (a *advisor) record(s sample) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.samples = append(a.samples, s)
	for len(a.samples) > 1 && s.at.Sub(a.samples[1].at) >= adviceWindow {
		a.samples = a.samples[1:]
	}
}

// recommendations compares now with the oldest sample of the window.
func (a *advisor) recommendations() []string {
	now := a.take(time.Now())
	a.mu.Lock()
	var then sample
	if len(a.samples) > 0 {
		then = a.samples[0]
	}
	a.mu.Unlock()
	cfg := a.cfg()
	var out []string
	keys := make([]string, 0, len(now.pools))
	for k := range now.pools {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		st, old := now.pools[k], then.pools[k]
		name := st.Database + "/" + st.User
		if waits := st.Waits - old.Waits; waits > 0 && st.Waits >= old.Waits {
			out = append(out, fmt.Sprintf("Pool %s: clients waited for a server connection %d times in the last minute (%.1f s in all); raise pool_size (now %d) if the upstream has connections to spare, or look for long transactions.",
				name, waits, (st.WaitDuration-old.WaitDuration).Seconds(), st.Size))
		}
		if ev := st.StatementEvictions - old.StatementEvictions; ev >= 100 && st.StatementEvictions >= old.StatementEvictions {
			out = append(out, fmt.Sprintf("Pool %s: %d shared prepared statements were evicted from servers in the last minute and prepared again; raise max_prepared_statements (now %d).",
				name, ev, cfg.MaxPreparedStatements))
		}
	}
	for _, p := range a.probers {
		st := p.Status()
		switch {
		case st.Checked && !st.Healthy:
			out = append(out, fmt.Sprintf("Upstream %s is unhealthy: %s. Clients wait for it (query_wait_timeout) and then get an error.", st.Name, st.LastError))
		case st.MaxConnections > 0 && st.Connections*10 >= st.MaxConnections*9:
			out = append(out, fmt.Sprintf("Upstream %s has %d of its max_connections (%d) in use; lower pool_size across its clients or raise max_connections.", st.Name, st.Connections, st.MaxConnections))
		}
	}
	pinned, clients := a.pins()
	reasons := make([]string, 0, len(pinned))
	for r := range pinned {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	for _, r := range reasons {
		if n := pinned[r]; n >= 10 || n >= 3 && n*4 >= clients {
			out = append(out, fmt.Sprintf("%d of %d clients are pinned to their server connection (%s): each holds a server for its whole session. See README's Pinning for what causes it and how to avoid it.", n, clients, r))
		}
	}
	return out
}

// serveStatus snapshots the process for /api/health.
func serveStatus(cfg *config.Config, started time.Time, pools *pool.Set, probers []*health.Prober, adv *advisor) report {
	version, _ := buildVersion()
	r := report{Profile: cfg.Profile, Version: version, UptimeSeconds: time.Since(started).Seconds(),
		Upstreams: []health.ProbeStatus{}, Pools: []poolReport{}, Recommendations: adv.recommendations()}
	for _, p := range probers {
		r.Upstreams = append(r.Upstreams, p.Status())
	}
	for _, st := range pools.Stats() {
		var lastErr error
		if p, ok := pools.Lookup(st.Key); ok {
			lastErr = p.LastError()
		}
		r.Pools = append(r.Pools, poolReportOf(st, lastErr))
	}
	if r.Recommendations == nil {
		r.Recommendations = []string{}
	}
	return r
}
