package admin

import (
	"strings"
)

// showFunc is the handler of one SHOW item; it writes the rows and returns nil, or refuses.
type showFunc func(c *Console, r *response) *Error

// showHandler returns the handler of SHOW name (case-insensitive), and whether the item is
// known at all: PgBouncer's items pgsidecar cannot answer are known and refused with 0A000,
// while unknown ones are syntax errors, as in PgBouncer (admin.c show_map, fake_param_list).
func showHandler(name string) (showFunc, bool) {
	switch item := strings.ToLower(name); item {
	case "help":
		return (*Console).showHelp, true
	case "pools":
		return (*Console).showPools, true
	case "clients":
		return func(c *Console, r *response) *Error { return c.showSockets(r, "C", c.b.Clients()) }, true
	case "servers":
		return func(c *Console, r *response) *Error { return c.showSockets(r, "S", c.b.Servers()) }, true
	case "databases":
		return (*Console).showDatabases, true
	case "stats":
		return (*Console).showStats, true
	case "stats_totals":
		return func(c *Console, r *response) *Error { return c.showStatsPart(r, statsTotalsColumns, true) }, true
	case "stats_averages":
		return func(c *Console, r *response) *Error { return c.showStatsPart(r, statsAveragesColumns, false) }, true
	case "totals":
		return (*Console).showTotals, true
	case "config":
		return (*Console).showConfig, true
	case "lists":
		return (*Console).showLists, true
	case "version":
		return (*Console).showVersion, true
	case "state":
		return (*Console).showState, true
	case "peers", "peer_pools":
		// pgsidecar has no peers: the right answer is PgBouncer's columns with no rows.
		cols := peerColumns
		if item == "peer_pools" {
			cols = peerPoolColumns
		}
		return func(_ *Console, r *response) *Error { r.rowDescription(cols); return nil }, true
	case "upstreams":
		return (*Console).showUpstreams, true
	case "pins":
		return (*Console).showPins, true
	case "fds", "sockets", "active_sockets", "users", "mem", "dns_hosts", "dns_zones":
		return func(*Console, *response) *Error { return notSupported("SHOW " + strings.ToUpper(item)) }, true
	}
	if key, value, ok := fakeParam(name); ok {
		return func(_ *Console, r *response) *Error {
			r.rowDescription([]column{{key, oidText}})
			r.dataRow(textCell(value))
			return nil
		}, true
	}
	return nil, false
}

// fakeParam is PgBouncer's answer to clients that SHOW or SET a few server parameters before
// doing anything else (admin.c fake_param_list): fixed values, and SETs of them are ignored.
func fakeParam(name string) (key, value string, ok bool) {
	switch key = strings.ToLower(name); key {
	case "client_encoding":
		return key, "UTF-8", true
	case "default_transaction_isolation":
		return key, "read committed", true
	case "standard_conforming_strings":
		return key, "on", true
	case "datestyle":
		return key, "ISO", true
	case "timezone":
		return key, "GMT", true
	}
	return "", "", false
}

// helpText lists what the console answers, in the layout of PgBouncer's SHOW HELP detail.
const helpText = "\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|VERSION" +
	"\n\tSHOW PEERS|PEER_POOLS" +
	"\n\tSHOW LISTS|STATE" +
	"\n\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS" +
	"\n\tSHOW UPSTREAMS|PINS" +
	"\n\tRELOAD" +
	"\n\tPAUSE [<db>]" +
	"\n\tRESUME [<db>]" +
	"\n\tDISABLE <db>" +
	"\n\tENABLE <db>" +
	"\n\tRECONNECT [<db>]" +
	"\n\tKILL [<db>]" +
	"\n\tKILL_CLIENT <client_id>" +
	"\n\tSHUTDOWN"

// showHelp sends PgBouncer's single "Console usage" notice and no rows (admin.c admin_show_help).
func (c *Console) showHelp(r *response) *Error {
	r.notice("Console usage", helpText)
	return nil
}

func (c *Console) showPools(r *response) *Error {
	r.rowDescription(poolColumns)
	for _, p := range c.b.Pools() {
		wait, waitUS := splitMicros(p.MaxWait)
		r.dataRow(textCell(p.Database), textCell(p.User),
			int4Cell(p.ClActive), int4Cell(p.ClWaiting),
			int4Cell(p.ClActiveCancelReq), int4Cell(p.ClWaitingCancelReq),
			int4Cell(p.SvActive), int4Cell(p.SvActiveCancel), int4Cell(p.SvBeingCanceled),
			int4Cell(p.SvIdle), int4Cell(p.SvUsed), int4Cell(p.SvTested), int4Cell(p.SvLogin),
			int4Cell(wait), int4Cell(waitUS),
			textCell(p.PoolMode), nullCell(p.LoadBalanceHosts))
	}
	return nil
}

// showSockets writes SHOW CLIENTS (typ "C") or SHOW SERVERS (typ "S"), filling in the
// placeholders PgBouncer's socket_row prints for missing values.
func (c *Console) showSockets(r *response, typ string, rows []SocketRow) *Error {
	r.rowDescription(socketColumns)
	for _, s := range rows {
		wait, waitUS := splitMicros(s.Wait)
		r.dataRow(textCell(typ),
			textCell(orDefault(s.User, "(nouser)")), textCell(orDefault(s.Database, "(nodb)")),
			textCell(orDefault(s.Replication, "none")), textCell(s.State),
			textCell(s.Addr), int4Cell(s.Port), textCell(s.LocalAddr), int4Cell(s.LocalPort),
			timeCell(s.ConnectTime), timeCell(s.RequestTime),
			int4Cell(wait), int4Cell(waitUS), boolCell(s.CloseNeeded),
			linkCell(s.ID), linkCell(s.LinkID), int4Cell(s.RemotePID), textCell(s.TLS),
			textCell(s.ApplicationName), int4Cell(s.PreparedStatements), uintCell(s.ID))
	}
	return nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func (c *Console) showDatabases(r *response) *Error {
	r.rowDescription(databaseColumns)
	for _, d := range c.b.Databases() {
		lifetime, _ := splitMicros(d.ServerLifetime)
		r.dataRow(textCell(d.Name), nullCell(d.Host), int4Cell(d.Port),
			textCell(d.Database), nullCell(d.ForceUser),
			int4Cell(d.PoolSize), int4Cell(d.MinPoolSize), int4Cell(d.ReservePoolSize),
			int4Cell(lifetime), nullCell(d.PoolMode), nullCell(d.LoadBalanceHosts),
			int4Cell(d.MaxConnections), int4Cell(d.CurrentConnections),
			int4Cell(d.MaxClientConnections), int4Cell(d.CurrentClientConnections),
			boolCell(d.Paused), boolCell(d.Disabled))
	}
	return nil
}

// statsFields is v in the order of PgBouncer's stats columns (stats.c write_stats).
func statsFields(v StatsValues) [11]uint64 {
	return [11]uint64{
		v.ServerAssignmentCount, v.XactCount, v.QueryCount, v.Received, v.Sent,
		v.XactTime, v.QueryTime, v.WaitTime, v.ClientParseCount, v.ServerParseCount, v.BindCount,
	}
}

func (c *Console) showStats(r *response) *Error {
	r.rowDescription(statsColumns)
	for _, s := range c.b.Stats() {
		row := make([][]byte, 0, len(statsColumns))
		row = append(row, textCell(s.Database))
		for _, v := range statsFields(s.Total) {
			row = append(row, uintCell(v))
		}
		for _, v := range statsFields(s.Average) {
			row = append(row, uintCell(v))
		}
		r.dataRow(row...)
	}
	return nil
}

// showStatsPart writes SHOW STATS_TOTALS (totals) or SHOW STATS_AVERAGES.
func (c *Console) showStatsPart(r *response, cols []column, totals bool) *Error {
	r.rowDescription(cols)
	for _, s := range c.b.Stats() {
		v := s.Average
		if totals {
			v = s.Total
		}
		row := make([][]byte, 0, len(cols))
		row = append(row, textCell(s.Database))
		for _, f := range statsFields(v) {
			row = append(row, uintCell(f))
		}
		r.dataRow(row...)
	}
	return nil
}

// showTotals writes SHOW TOTALS: every database together, one figure per row.
func (c *Console) showTotals(r *response) *Error {
	total, avg := sumStats(c.b.Stats())
	r.rowDescription(totalsColumns)
	for i, f := range statsFields(total) {
		r.dataRow(textCell("total_"+totalsNames[i]), uintCell(f))
	}
	for i, f := range statsFields(avg) {
		r.dataRow(textCell("avg_"+totalsNames[i]), uintCell(f))
	}
	return nil
}

// sumStats adds up the databases' figures. Rates add up; mean times are weighted by their
// rate (transactions, queries, server assignments per second), which gives PgBouncer's
// average over all pools (stats.c calc_average on summed counters) up to integer rounding of
// the rates the Backend supplies.
func sumStats(rows []StatsRow) (total, avg StatsValues) {
	var xactTime, queryTime, waitTime uint64 // Σ mean time × rate
	for _, s := range rows {
		t, a := s.Total, s.Average
		total.ServerAssignmentCount += t.ServerAssignmentCount
		total.XactCount += t.XactCount
		total.QueryCount += t.QueryCount
		total.Received += t.Received
		total.Sent += t.Sent
		total.XactTime += t.XactTime
		total.QueryTime += t.QueryTime
		total.WaitTime += t.WaitTime
		total.ClientParseCount += t.ClientParseCount
		total.ServerParseCount += t.ServerParseCount
		total.BindCount += t.BindCount

		avg.ServerAssignmentCount += a.ServerAssignmentCount
		avg.XactCount += a.XactCount
		avg.QueryCount += a.QueryCount
		avg.Received += a.Received
		avg.Sent += a.Sent
		avg.ClientParseCount += a.ClientParseCount
		avg.ServerParseCount += a.ServerParseCount
		avg.BindCount += a.BindCount
		xactTime += a.XactTime * a.XactCount
		queryTime += a.QueryTime * a.QueryCount
		waitTime += a.WaitTime * a.ServerAssignmentCount
	}
	if avg.XactCount > 0 {
		avg.XactTime = xactTime / avg.XactCount
	}
	if avg.QueryCount > 0 {
		avg.QueryTime = queryTime / avg.QueryCount
	}
	if avg.ServerAssignmentCount > 0 {
		avg.WaitTime = waitTime / avg.ServerAssignmentCount
	}
	return total, avg
}

func (c *Console) showConfig(r *response) *Error {
	r.rowDescription(configColumns)
	for _, kv := range c.b.Config() {
		r.dataRow(textCell(kv.Key), textCell(kv.Value), textCell(kv.Default), yesNo(kv.Changeable))
	}
	return nil
}

func (c *Console) showLists(r *response) *Error {
	l := c.b.Lists()
	const peers, peerPools = 0, 0
	counts := [...]int{
		l.Databases, l.Users, peers, l.Pools, peerPools,
		l.FreeClients, l.UsedClients, l.LoginClients, l.FreeServers, l.UsedServers,
		l.DNSNames, l.DNSZones, l.DNSQueries, l.DNSPending,
	}
	r.rowDescription(listsColumns)
	for i, n := range counts {
		r.dataRow(textCell(listsNames[i]), int4Cell(n))
	}
	return nil
}

func (c *Console) showVersion(r *response) *Error {
	r.rowDescription(versionColumns)
	r.dataRow(textCell(c.b.Version()))
	return nil
}

// showState writes PgBouncer's three rows (admin.c admin_show_state); pgsidecar never
// suspends.
func (c *Console) showState(r *response) *Error {
	s := c.b.State()
	r.rowDescription(stateColumns)
	r.dataRow(textCell("active"), yesNo(!s.Paused))
	r.dataRow(textCell("paused"), yesNo(s.Paused))
	r.dataRow(textCell("suspended"), yesNo(false))
	return nil
}

func (c *Console) showUpstreams(r *response) *Error {
	r.rowDescription(upstreamColumns)
	for _, u := range c.b.Upstreams() {
		var latency []byte // NULL until a check has completed
		if u.Checked {
			latency = secondsCell(u.Latency)
		}
		r.dataRow(textCell(u.Name), textCell(u.Upstream), boolCell(u.Checked), boolCell(u.Healthy),
			int4Cell(u.ConsecutiveFailures), int4Cell(u.ConsecutiveSuccesses),
			nullCell(u.LastError), latency, timeCell(u.LastCheck))
	}
	return nil
}

func (c *Console) showPins(r *response) *Error {
	r.rowDescription(pinColumns)
	for _, p := range c.b.Pins() {
		r.dataRow(uintCell(p.ClientID), textCell(p.Database), textCell(p.User),
			textCell(p.Reason), timeCell(p.Since))
	}
	return nil
}
