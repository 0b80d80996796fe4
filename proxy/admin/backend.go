package admin

import (
	"context"
	"time"
)

// Backend is what the console reads and acts on. The proxy implements it over its sessions,
// pools, prober and configuration; the console owns none of that state. Every method may be
// called from the admin client's goroutine while the proxy runs, so implementations must be
// safe for concurrent use with the rest of the proxy. Readers return snapshots the console
// may keep; it never modifies them.
type Backend interface {
	Reader
	Controller
}

// Reader is the read side of [Backend]: the rows behind each SHOW command, already in the
// units PgBouncer displays (microseconds for stats times, bytes for traffic).
type Reader interface {
	// Pools returns one row per (database, user) pool, for SHOW POOLS.
	Pools() []PoolRow
	// Clients returns one row per logged-in client, for SHOW CLIENTS.
	Clients() []SocketRow
	// Servers returns one row per server connection, for SHOW SERVERS.
	Servers() []SocketRow
	// Stats returns one row per database, for SHOW STATS, STATS_TOTALS, STATS_AVERAGES and
	// TOTALS, which are all computed from it.
	Stats() []StatsRow
	// Databases returns one row per configured or client-chosen database, for SHOW DATABASES.
	Databases() []DatabaseRow
	// Config returns one row per setting, secrets already redacted, for SHOW CONFIG.
	Config() []ConfigRow
	// Lists returns the object counts of SHOW LISTS.
	Lists() Lists
	// Version returns the version string of SHOW VERSION, e.g. "pgsidecar 1.4.0".
	Version() string
	// State returns the pooler's state, for SHOW STATE.
	State() State
	// Upstreams returns the prober's view of each upstream, for SHOW UPSTREAMS.
	Upstreams() []UpstreamRow
	// Pins returns the clients pinned to their server connection, for SHOW PINS.
	Pins() []PinRow
}

// Controller is the action side of [Backend]. In every method db "" means all databases;
// the console never passes an admin database name (see [IsAdminDatabase]). A method returns
// nil once the action is done, or an error the console turns into an ErrorResponse: an
// [*Error] chooses the SQLSTATE and message, the sentinels ([ErrNoSuchDatabase] and others)
// map to PgBouncer's messages, and anything else is reported as a failure of the command
// (its text is logged, not sent, since it may name internals).
type Controller interface {
	// Pause stops handing server connections to clients of db and returns once the
	// transactions running on them have finished and their servers are released. If ctx
	// ends first it returns ctx.Err() and undoes the pause, as PgBouncer resumes when the
	// admin cancels a waiting PAUSE. It returns [ErrAlreadyPaused] when a pause is in force.
	Pause(ctx context.Context, db string) error
	// Resume ends a PAUSE or KILL of db; [ErrNotPaused] when db (or the pooler) is not paused.
	Resume(db string) error
	// Reconnect closes db's server connections as they are released, so new ones are dialled.
	Reconnect(db string) error
	// Disable refuses new client logins to db (db is never "").
	Disable(db string) error
	// Enable undoes Disable (db is never "").
	Enable(db string) error
	// Kill drops db's clients and server connections at once and pauses db.
	Kill(db string) error
	// KillClient disconnects the client with the SHOW CLIENTS id and any server it holds;
	// [ErrNoSuchClient] when there is none.
	KillClient(id uint64) error
	// Reload re-reads the configuration as SIGHUP does.
	Reload() error
	// Shutdown starts the shutdown sequence SIGTERM starts and returns without waiting for it.
	Shutdown() error
}

// PoolRow is one (database, user) pool: a row of SHOW POOLS.
type PoolRow struct {
	Database, User string
	// Client connections by state, as PgBouncer counts them: active (linked to a server, or
	// idle), waiting for a server, and cancel requests forwarded or not yet forwarded.
	ClActive, ClWaiting, ClActiveCancelReq, ClWaitingCancelReq int
	// Server connections by state: linked to a client, forwarding a cancel, waiting for
	// cancels in flight, idle, idle past server_check_delay, being reset or checked, logging in.
	SvActive, SvActiveCancel, SvBeingCanceled, SvIdle, SvUsed, SvTested, SvLogin int
	// MaxWait is how long the oldest waiting client has waited (shown as maxwait seconds and
	// maxwait_us microseconds).
	MaxWait time.Duration
	// PoolMode is "session", "transaction" or "statement".
	PoolMode string
	// LoadBalanceHosts is the database's load_balance_hosts when it has several hosts; ""
	// (shown as NULL) otherwise.
	LoadBalanceHosts string
}

// SocketRow is one client or server connection: a row of SHOW CLIENTS or SHOW SERVERS, which
// share PgBouncer's socket columns.
type SocketRow struct {
	// ID identifies the connection; for clients it is what KILL_CLIENT takes.
	ID             uint64
	User, Database string
	// Replication is "none", "logical" or "physical"; "" is shown as "none".
	Replication string
	// State is, for a client: active, idle, waiting, active_cancel_req, waiting_cancel_req;
	// for a server: active, idle, used, tested, new, active_cancel, being_canceled.
	State string
	// Addr and Port are the peer's address; LocalAddr and LocalPort this end's.
	Addr      string
	Port      int
	LocalAddr string
	LocalPort int
	// ConnectTime is when the connection was made; RequestTime when the client last sent a
	// request (or the server was last used). Zero is shown as NULL.
	ConnectTime, RequestTime time.Time
	// Wait is how long a waiting client has waited for a server (shown as wait seconds and
	// wait_us microseconds); zero for servers.
	Wait time.Duration
	// CloseNeeded reports a server that is closed when released (RECONNECT, reload).
	CloseNeeded bool
	// LinkID is the ID of the paired server (for a client) or client (for a server), 0 when
	// unpaired.
	LinkID uint64
	// RemotePID is the server's backend process ID (0 for clients).
	RemotePID int
	// TLS describes the connection's TLS ("TLSv1.3/TLS_AES_256_GCM_SHA384"), "" without TLS.
	TLS string
	// ApplicationName is the client's application_name ("" when unset).
	ApplicationName string
	// PreparedStatements counts the statements prepared by the client, or on the server.
	PreparedStatements int
}

// StatsRow is one database's traffic: totals since start and averages over the last stats
// period, as PgBouncer keeps them per database.
type StatsRow struct {
	Database string
	// Total holds counters since the process started.
	Total StatsValues
	// Average holds the last stats period: per-second rates for the counts and bytes, and the
	// mean per event (microseconds) for XactTime, QueryTime (per query) and WaitTime (per
	// server assignment), as PgBouncer's calc_average computes them.
	Average StatsValues
}

// StatsValues is one set of PgBouncer's statistics.
type StatsValues struct {
	ServerAssignmentCount uint64 // times a server was assigned to a client
	XactCount             uint64 // transactions
	QueryCount            uint64 // queries
	Received              uint64 // bytes received from clients
	Sent                  uint64 // bytes sent to clients
	XactTime              uint64 // microseconds in transactions
	QueryTime             uint64 // microseconds running queries
	WaitTime              uint64 // microseconds clients waited for a server
	ClientParseCount      uint64 // named statements prepared by clients
	ServerParseCount      uint64 // statements prepared on servers
	BindCount             uint64 // binds of prepared statements
}

// DatabaseRow is one database entry: a row of SHOW DATABASES.
type DatabaseRow struct {
	// Name is the name clients use; Database the name used upstream.
	Name string
	// Host and Port are where the database lives; Host "" is shown as NULL.
	Host     string
	Port     int
	Database string
	// ForceUser is the upstream user fixed by the route, "" (NULL) when the client's is used.
	ForceUser                              string
	PoolSize, MinPoolSize, ReservePoolSize int
	// ServerLifetime is shown in whole seconds.
	ServerLifetime time.Duration
	// PoolMode is the database's own pool mode, "" (NULL) when it uses the default.
	PoolMode string
	// LoadBalanceHosts is as in [PoolRow].
	LoadBalanceHosts string
	// MaxConnections and MaxClientConnections are the limits (0: none); the Current ones
	// count open server and client connections.
	MaxConnections, CurrentConnections             int
	MaxClientConnections, CurrentClientConnections int
	Paused, Disabled                               bool
}

// ConfigRow is one setting: a row of SHOW CONFIG. Values are shown as given, so the Backend
// redacts secrets.
type ConfigRow struct {
	Key, Value, Default string
	// Changeable reports whether RELOAD applies a change without a restart.
	Changeable bool
}

// Lists holds the counts of SHOW LISTS. A count the proxy does not keep stays 0; PgBouncer's
// peers and peer_pools rows are always 0, pgsidecar having no peers.
type Lists struct {
	Databases, Users, Pools int
	// FreeClients and FreeServers count connection objects kept for reuse; UsedClients and
	// UsedServers those in use; LoginClients clients still logging in.
	FreeClients, UsedClients, LoginClients int
	FreeServers, UsedServers               int
	// DNS cache: names, zones, lookups in flight, and pending (unused by PgBouncer).
	DNSNames, DNSZones, DNSQueries, DNSPending int
}

// State is the pooler's state for SHOW STATE.
type State struct {
	// Paused reports a PAUSE of all databases in force.
	Paused bool
}

// UpstreamRow is the prober's view of one upstream: a row of SHOW UPSTREAMS.
type UpstreamRow struct {
	Name string
	// Upstream is the DSN with secrets redacted.
	Upstream string
	// Checked reports whether a check has completed; Healthy the prober's state.
	Checked, Healthy                          bool
	ConsecutiveFailures, ConsecutiveSuccesses int
	// LastError is the latest check's error, secrets removed; "" (NULL) when it succeeded.
	LastError string
	// Latency is how long the latest check took; LastCheck when it completed.
	Latency   time.Duration
	LastCheck time.Time
}

// PinRow is a client pinned to its server connection: a row of SHOW PINS.
type PinRow struct {
	ClientID       uint64
	Database, User string
	// Reason is what pinned the client (the pin metric's reason label).
	Reason string
	Since  time.Time
}
