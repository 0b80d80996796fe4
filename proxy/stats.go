package proxy

import (
	"sort"
	"sync"
	"time"

	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy/admin"
)

// statsPeriod is PgBouncer's stats_period: SHOW STATS averages cover the last one.
const statsPeriod = time.Minute

// statsWindow turns the pools' running totals into PgBouncer's per-database totals and the
// averages over the last statsPeriod. Snapshots are taken lazily, when the stats are read: no
// goroutine runs for them.
type statsWindow struct {
	mu   sync.Mutex
	prev snapshot // at least statsPeriod before cur, when there are two
	cur  snapshot
}

// snapshot is every database's totals at a time.
type snapshot struct {
	at  time.Time
	dbs map[string]admin.StatsValues
}

// totals sums the pools' counters by upstream database, in PgBouncer's units.
func totals(stats []pool.Stat) map[string]admin.StatsValues {
	dbs := make(map[string]admin.StatsValues)
	for _, st := range stats {
		v := dbs[st.Database]
		v.ServerAssignmentCount += st.Acquires
		v.XactCount += st.Transactions
		v.QueryCount += st.Queries
		v.Received += st.Received
		v.Sent += st.Sent
		v.XactTime += uint64(st.XactTime / time.Microsecond)
		v.QueryTime += uint64(st.QueryTime / time.Microsecond)
		v.WaitTime += uint64(st.WaitDuration / time.Microsecond)
		dbs[st.Database] = v
	}
	return dbs
}

// window returns the totals now and those of the start of the last period (the process's
// first read when no period has passed).
func (w *statsWindow) window(stats []pool.Stat) (now, then snapshot) {
	now = snapshot{at: time.Now(), dbs: totals(stats)}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cur.at.IsZero() {
		w.cur = now
	}
	if now.at.Sub(w.cur.at) >= statsPeriod {
		w.prev, w.cur = w.cur, now
	}
	then = w.prev
	if then.at.IsZero() {
		then = w.cur
	}
	return now, then
}

// rows are SHOW STATS's rows: totals, and averages over the window as PgBouncer computes them
// (rates per second; times per transaction, query or wait).
func (w *statsWindow) rows(stats []pool.Stat) []admin.StatsRow {
	now, then := w.window(stats)
	secs := now.at.Sub(then.at).Seconds()
	var rows []admin.StatsRow
	for db, t := range now.dbs {
		d := diff(t, then.dbs[db])
		var avg admin.StatsValues
		if secs > 0 {
			rate := func(v uint64) uint64 { return uint64(float64(v) / secs) }
			avg.XactCount, avg.QueryCount = rate(d.XactCount), rate(d.QueryCount)
			avg.Received, avg.Sent = rate(d.Received), rate(d.Sent)
			avg.ServerAssignmentCount = rate(d.ServerAssignmentCount)
		}
		if d.XactCount > 0 {
			avg.XactTime = d.XactTime / d.XactCount
		}
		if d.QueryCount > 0 {
			avg.QueryTime = d.QueryTime / d.QueryCount
		}
		if d.ServerAssignmentCount > 0 {
			avg.WaitTime = d.WaitTime / d.ServerAssignmentCount
		}
		rows = append(rows, admin.StatsRow{Database: db, Total: t, Average: avg})
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Database < rows[j].Database })
	return rows
}

// diff is a - b, field by field (b may be the zero value).
func diff(a, b admin.StatsValues) admin.StatsValues {
	sub := func(x, y uint64) uint64 {
		if x < y {
			return 0
		}
		return x - y
	}
	return admin.StatsValues{
		ServerAssignmentCount: sub(a.ServerAssignmentCount, b.ServerAssignmentCount),
		XactCount:             sub(a.XactCount, b.XactCount),
		QueryCount:            sub(a.QueryCount, b.QueryCount),
		Received:              sub(a.Received, b.Received),
		Sent:                  sub(a.Sent, b.Sent),
		XactTime:              sub(a.XactTime, b.XactTime),
		QueryTime:             sub(a.QueryTime, b.QueryTime),
		WaitTime:              sub(a.WaitTime, b.WaitTime),
	}
}
