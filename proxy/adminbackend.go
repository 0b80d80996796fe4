package proxy

import (
	"context"
	"errors"
	"net"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy/admin"
)

// adminBackend is the admin console's view of the Server: package admin reads and acts
// through it and owns nothing.
type adminBackend struct{ s *Server }

var _ admin.Backend = adminBackend{}

func (s *Server) adminBackend() admin.Backend { return adminBackend{s} }

// pauses are the PAUSE and DISABLE state of the admin console, by client-side database name
// ("" = all). any makes the check on every transaction a load when nothing is paused.
type pauses struct {
	any      atomic.Bool
	mu       sync.Mutex
	all      bool
	dbs      map[string]bool
	disabled map[string]bool
	lifted   chan struct{} // closed, and replaced, when a pause ends
}

func (p *pauses) pausedLocked(db string) bool { return p.all || p.dbs[db] }

// wait returns once database db is not paused, or ctx's error.
func (p *pauses) wait(ctx context.Context, db string) error {
	if !p.any.Load() {
		return nil
	}
	for {
		p.mu.Lock()
		if !p.pausedLocked(db) {
			p.mu.Unlock()
			return nil
		}
		if p.lifted == nil {
			p.lifted = make(chan struct{})
		}
		lifted := p.lifted
		p.mu.Unlock()
		select {
		case <-lifted:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (p *pauses) pause(db string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pausedLocked(db) {
		return admin.ErrAlreadyPaused
	}
	if db == "" {
		p.all = true
	} else {
		if p.dbs == nil {
			p.dbs = make(map[string]bool)
		}
		p.dbs[db] = true
	}
	p.any.Store(true)
	return nil
}

func (p *pauses) resume(db string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case db == "" && (p.all || len(p.dbs) > 0):
		p.all, p.dbs = false, nil
	case db != "" && p.dbs[db]:
		delete(p.dbs, db)
	default:
		return admin.ErrNotPaused
	}
	p.any.Store(p.all || len(p.dbs) > 0)
	if p.lifted != nil {
		close(p.lifted)
		p.lifted = nil
	}
	return nil
}

func (p *pauses) setDisabled(db string, disabled bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.disabled == nil {
		p.disabled = make(map[string]bool)
	}
	if disabled {
		p.disabled[db] = true
	} else {
		delete(p.disabled, db)
	}
}

func (p *pauses) isDisabled(db string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.disabled[db]
}

// sessionInfo is a snapshot of one logged-in client session.
type sessionInfo struct {
	sess                   *session
	id                     uint64
	user, database         string
	server                 *pool.Conn
	waiting                time.Time
	connected, lastRequest time.Time
	pinned                 string
	pinnedAt               time.Time
	appName                string
	statements             int
	remote, local          net.Addr
	tls                    string
	admin                  bool
}

// sessionInfos snapshots the logged-in sessions, by id.
func (s *Server) sessionInfos() []sessionInfo {
	s.mu.Lock()
	sessions := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		sessions = append(sessions, sess)
	}
	s.mu.Unlock()
	infos := make([]sessionInfo, 0, len(sessions))
	for _, sess := range sessions {
		sess.mu.Lock()
		if !sess.loggedIn {
			sess.mu.Unlock()
			continue
		}
		in := sessionInfo{sess: sess, id: sess.id, user: sess.user, database: sess.database, server: sess.server,
			waiting: s.timeOf(sess.waitingSince), connected: s.timeOf(sess.connected), lastRequest: s.timeOf(sess.queryStart),
			pinned: string(sess.Pinned), pinnedAt: s.timeOf(sess.pinnedAt), appName: sess.Params["application_name"],
			statements: sess.Tracker.Stats().Statements, remote: sess.conn.RemoteAddr(), local: sess.conn.LocalAddr(),
			tls: tlsDescription(sess.conn), admin: sess.console != nil}
		sess.mu.Unlock()
		infos = append(infos, in)
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].id < infos[j].id })
	return infos
}

func splitAddr(a net.Addr) (string, int) {
	if a == nil {
		return "", 0
	}
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String(), 0
	}
	p, _ := strconv.Atoi(port)
	return host, p
}

func (b adminBackend) Pools() []admin.PoolRow {
	var rows []admin.PoolRow
	for _, st := range b.s.pools.Stats() {
		rows = append(rows, admin.PoolRow{
			Database: st.Database, User: st.User,
			// PgBouncer's cl_active: clients linked to a server or idle, all but the waiting.
			ClActive: max(st.Clients-st.Waiting, 0), ClWaiting: st.Waiting,
			SvActive: st.InUse, SvIdle: st.Idle - st.Used, SvUsed: st.Used, SvLogin: st.Dialing,
			MaxWait: st.MaxWait, PoolMode: b.poolMode(st.Key),
		})
	}
	return rows
}

// poolMode is the pool mode of the pool key's route.
func (b adminBackend) poolMode(key string) string {
	if k, ok := b.s.routes.originOf(key); ok {
		if up, err := b.s.config().Resolve(k.database, k.user); err == nil {
			return up.PoolMode
		}
	}
	return b.s.config().PoolMode
}

func (b adminBackend) Clients() []admin.SocketRow {
	var rows []admin.SocketRow
	for _, in := range b.s.sessionInfos() {
		addr, port := splitAddr(in.remote)
		laddr, lport := splitAddr(in.local)
		row := admin.SocketRow{ID: in.id, User: in.user, Database: in.database, State: "idle",
			Addr: addr, Port: port, LocalAddr: laddr, LocalPort: lport,
			ConnectTime: in.connected, RequestTime: in.lastRequest, TLS: in.tls,
			ApplicationName: in.appName, PreparedStatements: in.statements}
		switch {
		case in.server != nil:
			row.State, row.LinkID = "active", uint64(in.server.PID)
		case !in.waiting.IsZero():
			row.State, row.Wait = "waiting", time.Since(in.waiting)
		}
		rows = append(rows, row)
	}
	return rows
}

func (b adminBackend) Servers() []admin.SocketRow {
	holders := make(map[*pool.Conn]uint64)
	users := make(map[*pool.Conn]string)
	for _, in := range b.s.sessionInfos() {
		if in.server != nil {
			holders[in.server], users[in.server] = in.id, in.database
		}
	}
	var rows []admin.SocketRow
	b.s.pools.Each(func(p *pool.Pool) {
		st := p.Stat()
		for _, c := range p.Conns() {
			addr, port := splitAddr(tcpAddr(c.Addr))
			laddr, lport := splitAddr(tcpAddr(c.LocalAddr))
			row := admin.SocketRow{ID: uint64(c.PID), User: st.User, Database: st.Database, State: "idle",
				Addr: addr, Port: port, LocalAddr: laddr, LocalPort: lport,
				ConnectTime: c.Created, RequestTime: c.LastUsed, RemotePID: int(c.PID), LinkID: holders[c.Conn()]}
			switch {
			case c.InUse:
				row.State = "active"
			case c.Used:
				row.State = "used"
			}
			if c.TLS {
				row.TLS = "TLS"
			}
			rows = append(rows, row)
		}
	})
	sort.Slice(rows, func(i, j int) bool { return rows[i].ID < rows[j].ID })
	return rows
}

// tcpAddr wraps an "ip:port" string as a net.Addr for splitAddr.
type tcpAddr string

func (a tcpAddr) Network() string { return "tcp" }
func (a tcpAddr) String() string  { return string(a) }

func (b adminBackend) Stats() []admin.StatsRow {
	return b.s.stats.rows(b.s.pools.Stats())
}

func (b adminBackend) Databases() []admin.DatabaseRow {
	cfg := b.s.config()
	current := make(map[string]int)
	clients := make(map[string]int)
	for _, in := range b.s.sessionInfos() {
		clients[in.database]++
	}
	var rows []admin.DatabaseRow
	seen := make(map[string]bool)
	for _, st := range b.s.pools.Stats() {
		current[st.Database] += st.Open
	}
	add := func(name, user string) {
		if seen[name] || isAdminDatabase(name, cfg.AdminPgBouncer) {
			return
		}
		seen[name] = true
		up, err := cfg.Resolve(name, user)
		if err != nil {
			return
		}
		row := admin.DatabaseRow{Name: name, Database: up.Database, PoolSize: up.PoolSize, MinPoolSize: up.MinPoolSize,
			ServerLifetime: cfg.ServerLifetime, MaxClientConnections: cfg.MaxClientConn,
			CurrentConnections: current[up.Database], CurrentClientConnections: clients[name],
			Paused: b.paused(name), Disabled: b.s.pauses.isDisabled(name)}
		if r, routed := cfg.Route(name, user); routed {
			row.ForceUser = r.UpstreamUser
			row.PoolMode = r.PoolMode
		}
		if pc, err := pgconn.ParseConfig(up.ConnString); err == nil {
			row.Host, row.Port = pc.Host, int(pc.Port)
		}
		rows = append(rows, row)
	}
	if ups, err := cfg.ConfiguredUpstreams(); err == nil {
		for _, up := range ups {
			add(up.ClientDatabase, up.ClientUser)
		}
	}
	for _, in := range b.s.sessionInfos() {
		if !in.admin {
			add(in.database, in.user)
		}
	}
	return rows
}

func (b adminBackend) paused(db string) bool {
	p := &b.s.pauses
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pausedLocked(db)
}

func (b adminBackend) Config() []admin.ConfigRow {
	var rows []admin.ConfigRow
	for _, it := range b.s.config().Items() {
		rows = append(rows, admin.ConfigRow{Key: it.Key, Value: it.Value, Default: it.Default, Changeable: it.Changeable})
	}
	return rows
}

func (b adminBackend) Lists() admin.Lists {
	cfg := b.s.config()
	var l admin.Lists
	dbs := make(map[string]bool)
	for _, st := range b.s.pools.Stats() {
		l.Pools++
		l.UsedServers += st.Open - st.Dialing
		dbs[st.Database] = true
	}
	l.Databases = len(dbs)
	l.Users = len(cfg.Users)
	l.UsedClients = len(b.s.sessionInfos())
	b.s.mu.Lock()
	l.LoginClients = len(b.s.logins)
	b.s.mu.Unlock()
	return l
}

func (b adminBackend) Version() string { return "pgsidecar " + b.s.version }

func (b adminBackend) State() admin.State {
	return admin.State{Paused: b.paused("")}
}

func (b adminBackend) Upstreams() []admin.UpstreamRow {
	if b.s.upstreams == nil {
		return nil
	}
	return b.s.upstreams()
}

// PinnedClients counts the clients pinned to their server connection, by reason.
func (s *Server) PinnedClients() (pinned map[string]int, clients int) {
	pinned = make(map[string]int)
	for _, in := range s.sessionInfos() {
		if in.admin {
			continue
		}
		clients++
		if in.pinned != "" {
			pinned[in.pinned]++
		}
	}
	return pinned, clients
}

func (b adminBackend) Pins() []admin.PinRow {
	var rows []admin.PinRow
	for _, in := range b.s.sessionInfos() {
		if in.pinned != "" {
			rows = append(rows, admin.PinRow{ClientID: in.id, Database: in.database, User: in.user, Reason: in.pinned, Since: in.pinnedAt})
		}
	}
	return rows
}

// Pause stops handing servers to clients of db and waits until none holds one.
func (b adminBackend) Pause(ctx context.Context, db string) error {
	if err := b.s.pauses.pause(db); err != nil {
		return err
	}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		busy := false
		for _, in := range b.s.sessionInfos() {
			if in.server != nil && (db == "" || in.database == db) {
				busy = true
				break
			}
		}
		if !busy {
			return nil
		}
		select {
		case <-ctx.Done():
			_ = b.s.pauses.resume(db)
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (b adminBackend) Resume(db string) error { return b.s.pauses.resume(db) }

// Reconnect closes db's server connections as they are released.
func (b adminBackend) Reconnect(db string) error {
	for _, p := range b.poolsOf(db) {
		p.Retire(func(*pool.Conn) bool { return true })
	}
	return nil
}

// poolsOf returns the pools db's clients use, and those whose upstream database is db.
func (b adminBackend) poolsOf(db string) []*pool.Pool {
	set := make(map[*pool.Pool]bool)
	for _, in := range b.s.sessionInfos() {
		if p := in.sess.pool(); p != nil && (db == "" || in.database == db) {
			set[p] = true
		}
	}
	b.s.pools.Each(func(p *pool.Pool) {
		if db == "" || p.Stat().Database == db {
			set[p] = true
		}
	})
	pools := make([]*pool.Pool, 0, len(set))
	for p := range set {
		pools = append(pools, p)
	}
	return pools
}

func (b adminBackend) Disable(db string) error {
	b.s.pauses.setDisabled(db, true)
	return nil
}

func (b adminBackend) Enable(db string) error {
	b.s.pauses.setDisabled(db, false)
	return nil
}

// Kill drops db's clients and servers at once and pauses db, as PgBouncer's KILL does.
func (b adminBackend) Kill(db string) error {
	if err := b.s.pauses.pause(db); err != nil && !errors.Is(err, admin.ErrAlreadyPaused) {
		return err
	}
	for _, in := range b.s.sessionInfos() {
		if !in.admin && (db == "" || in.database == db) {
			in.sess.abort(fatal(retry.CodeAdminShutdown, "terminating connection due to administrator command (admin console KILL)"))
		}
	}
	return b.Reconnect(db)
}

func (b adminBackend) KillClient(id uint64) error {
	for _, in := range b.s.sessionInfos() {
		if in.id == id {
			in.sess.abort(fatal(retry.CodeAdminShutdown, "terminating connection due to administrator command (admin console KILL_CLIENT)"))
			return nil
		}
	}
	return admin.ErrNoSuchClient
}

func (b adminBackend) Reload() error {
	if b.s.reload == nil {
		return errors.New("reload is not available")
	}
	return b.s.reload()
}

func (b adminBackend) Shutdown() error {
	if b.s.shutdown == nil {
		return errors.New("shutdown is not available")
	}
	b.s.shutdown()
	return nil
}
