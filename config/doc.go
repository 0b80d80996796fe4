// Package config defines pgsidecar's configuration: the Config type, its
// loading from profile defaults, a YAML file, the environment and flags, its
// validation, connection-string parsing and redaction, and the resolution of
// a client's database and user to an upstream.
//
// # Usage
//
//	fs := config.NewFlagSet("pgsidecar")
//	cfg, err := config.Load(fs, os.Args[1:], os.Environ())
//	if err != nil {
//		// err lists every problem, one per line; it holds no secret.
//	}
//	up, err := cfg.Resolve("app", "app_user")
//	// up.Key names the pool; up.ConnString goes to pgconn.ParseConfig.
//
// # Sources and precedence
//
// Highest first:
//
//  1. flags given on the command line (--pool-mode, --tls-cert-file, ...;
//     a flag that is not given does not override anything);
//  2. environment variables PGSIDECAR_<KEY>, the key upper-cased with
//     nesting joined by "_" (PGSIDECAR_POOL_MODE, PGSIDECAR_TLS_CERT_FILE);
//     for database_url also DATABASE_URL, which PGSIDECAR_DATABASE_URL
//     overrides when both are set;
//  3. the YAML file named by --config or PGSIDECAR_CONFIG (the flag wins);
//  4. the defaults of the profile (see Defaults).
//
// In the environment, list keys are comma-separated
// (PGSIDECAR_LISTEN="127.0.0.1:6432,[::1]:6432") and users are
// PGSIDECAR_USERS="alice:secret,bob:SCRAM-SHA-256$4096:..." (entries split on
// ",", each on its first ":", so a password may contain ":" but not ",");
// users from the environment replace the file's users. A string key set to
// the empty string counts as set (PGSIDECAR_HTTP_LISTEN= disables the HTTP
// server); an empty variable for any other key is ignored. Routes can be set
// only in the file. Flags and environment variables are the same for every
// key except users (environment and file only, to keep secrets off the
// command line) and routes (file only). Unknown keys in the file are errors.
//
// Durations use Go syntax: "500ms", "30s", "10m", "1h30m". A bare number is
// refused (except 0), so that "30" is never read as 30 nanoseconds.
//
// # Keys
//
// Each key is listed as: file key, environment variable, flag; default; meaning.
//
//	profile                   PGSIDECAR_PROFILE                   --profile
//	    default: production when KUBERNETES_SERVICE_HOST is set, else local.
//	    Selects the profile defaults: "local", "production" or "edge".
//	    Empty means detect.
//	listen                    PGSIDECAR_LISTEN                    --listen
//	    default: ["127.0.0.1:6432"]. Addresses (host:port) accepting clients;
//	    IPv6 as "[::1]:6432". At least one is required. Port 0 picks a free
//	    port. An empty host (":6432") means every interface.
//	http_listen               PGSIDECAR_HTTP_LISTEN               --http-listen
//	    default: "127.0.0.1:9930". Address of the HTTP server (probes,
//	    metrics). "" disables it.
//	database_url              PGSIDECAR_DATABASE_URL, DATABASE_URL --database-url
//	    default: "". The default upstream, as a postgres:// URL or a
//	    keyword/value string; its user logs in with its password. "" means
//	    no default upstream (cmd then starts a local cluster). Prefer the
//	    environment to the flag: a flag is visible in the process list.
//	pool_mode                 PGSIDECAR_POOL_MODE                 --pool-mode
//	    default: "transaction". "transaction" returns a server connection to
//	    the pool after each transaction; "session" after the client leaves.
//	pool_size                 PGSIDECAR_POOL_SIZE                 --pool-size
//	    default: 10 local, 50 production, 100 edge. Maximum server
//	    connections per route (database and user). At least 1.
//	min_pool_size             PGSIDECAR_MIN_POOL_SIZE             --min-pool-size
//	    default: 0. Server connections kept open per route; 0 opens them on
//	    demand only. At most pool_size.
//	max_client_conn           PGSIDECAR_MAX_CLIENT_CONN           --max-client-conn
//	    default: 1000. Maximum client connections in total; more are refused.
//	    At least 1.
//	query_wait_timeout        PGSIDECAR_QUERY_WAIT_TIMEOUT        --query-wait-timeout
//	    default: 30s. How long a client waits for a server connection
//	    (including while the upstream is down). 0 waits forever.
//	query_wait_notice         PGSIDECAR_QUERY_WAIT_NOTICE         --query-wait-notice
//	    default: 0 (off). A client that has waited this long for a server
//	    connection gets a NOTICE saying so (once per wait), then keeps waiting.
//	server_idle_timeout       PGSIDECAR_SERVER_IDLE_TIMEOUT       --server-idle-timeout
//	    default: 10m. Idle server connections beyond min_pool_size are closed
//	    after this. 0 never closes them.
//	server_lifetime           PGSIDECAR_SERVER_LIFETIME           --server-lifetime
//	    default: 1h. A server connection older than this is closed when
//	    released. 0 means unlimited.
//	server_check_delay        PGSIDECAR_SERVER_CHECK_DELAY        --server-check-delay
//	    default: 30s. A server connection idle longer than this is checked
//	    before reuse. 0 checks before every reuse.
//	server_reset_query        PGSIDECAR_SERVER_RESET_QUERY        --server-reset-query
//	    default: "DISCARD ALL". Run on a server connection released in
//	    session mode. "" runs nothing.
//	connect_timeout           PGSIDECAR_CONNECT_TIMEOUT           --connect-timeout
//	    default: 5s local, 10s production, 5s edge. Limit for one upstream
//	    dial and login. Must be greater than 0.
//	query_timeout             PGSIDECAR_QUERY_TIMEOUT             --query-timeout
//	    default: 60s local, 30s production, 15s edge. A request running longer
//	    has its server query cancelled (57014 to the client); a server that
//	    then stays silent is disconnected (08006). 0 means no limit.
//	retries                   PGSIDECAR_RETRIES                   --retries
//	    default: 2 local, 3 production, 5 edge. How often, in transaction
//	    mode, a request that a terminating server refused before running it
//	    is sent to another server. 0 means never. (Upstream dials are retried
//	    for as long as query_wait_timeout allows, whatever this says.)
//	retry_delay               PGSIDECAR_RETRY_DELAY               --retry-delay
//	    default: 500ms local, 1s production, 200ms edge. First delay between
//	    upstream dial attempts (exponential backoff with full jitter from it,
//	    capped at retry_max_delay). 0 means 100ms.
//	retry_max_delay           PGSIDECAR_RETRY_MAX_DELAY           --retry-max-delay
//	    default: 2s. Cap of the backoff between dial attempts and between
//	    re-sends of a refused request. 0 means 2s.
//	idle_transaction_timeout  PGSIDECAR_IDLE_TRANSACTION_TIMEOUT  --idle-transaction-timeout
//	    default: 0. A client idle inside a transaction this long is
//	    disconnected. 0 turns it off.
//	client_idle_timeout       PGSIDECAR_CLIENT_IDLE_TIMEOUT       --client-idle-timeout
//	    default: 0. A client idle (outside a transaction) this long is
//	    disconnected. 0 turns it off.
//	client_login_timeout      PGSIDECAR_CLIENT_LOGIN_TIMEOUT      --client-login-timeout
//	    default: 60s. Time a client has to finish startup and
//	    authentication. 0 means no limit.
//	tcp_keepalive             PGSIDECAR_TCP_KEEPALIVE             --tcp-keepalive
//	    default: true. TCP keepalive probes on client and server sockets,
//	    which find a peer that vanished while the connection was idle and
//	    keep idle connections known to NATs and load balancers. false turns
//	    them off (also Go's own 15s probes).
//	tcp_keepidle              PGSIDECAR_TCP_KEEPIDLE              --tcp-keepidle
//	    default: 30s. Idle time before the first probe, rounded up to whole
//	    seconds. 0 = Go's default, 15s. At most 32767s.
//	tcp_keepintvl             PGSIDECAR_TCP_KEEPINTVL             --tcp-keepintvl
//	    default: 10s. Time between unanswered probes, rounded up to whole
//	    seconds. 0 = Go's default, 15s. At most 32767s.
//	tcp_keepcnt               PGSIDECAR_TCP_KEEPCNT               --tcp-keepcnt
//	    default: 3. Unanswered probes before the connection is dropped.
//	    0 = Go's default, 9. At most 127. With the defaults a silent peer
//	    is dropped after 30s + 3 x 10s = 1 minute.
//	tcp_user_timeout          PGSIDECAR_TCP_USER_TIMEOUT          --tcp-user-timeout
//	    default: 60s. TCP_USER_TIMEOUT (Linux; ignored elsewhere): a
//	    connection whose sent data stays unacknowledged this long is
//	    dropped, instead of after the kernel's ~15 minutes of
//	    retransmissions; with keepalive on it also bounds unanswered
//	    probes. The default matches tcp_keepidle + tcp_keepintvl x
//	    tcp_keepcnt, so a dead peer is found within a minute whether or not
//	    data was in flight. It never cuts a slow query: the server's kernel
//	    acknowledges what it receives. 0 = the kernel's default (off), as in
//	    libpq and PgBouncer.
//	dns_max_ttl               PGSIDECAR_DNS_MAX_TTL               --dns-max-ttl
//	    default: 15s (PgBouncer's). How long the addresses of an upstream
//	    host name are used before they are looked up again, whatever the
//	    DNS TTL. Lookups happen when a server connection is dialled and,
//	    while a pool has connections, in its background maintenance; a
//	    failed dial forces a fresh lookup. When an address leaves the
//	    answer, the pool's idle connections to it are closed at once and
//	    those in use when they are released, so a DNS-based failover (RDS,
//	    Aurora, a Kubernetes Service) is followed without a restart. A
//	    failed lookup keeps the last answer. 0 = look up on every dial.
//	max_message_size          PGSIDECAR_MAX_MESSAGE_SIZE          --max-message-size
//	    default: 1073741824 (1 GiB). Largest protocol message accepted, in
//	    bytes. At least 1024.
//	max_prepared_statements   PGSIDECAR_MAX_PREPARED_STATEMENTS   --max-prepared-statements
//	    default: 200. Prepared statements kept per server connection in
//	    transaction mode; the least recently used is closed to make room.
//	    0 = no limit.
//	session_state             PGSIDECAR_SESSION_STATE             --session-state
//	    default: "pin". Transaction mode, for SQL that leaves state on the
//	    server that cannot move with the client (LISTEN, session advisory
//	    locks, temporary tables, WITH HOLD cursors, SQL PREPARE, SET ROLE,
//	    LOAD, SET of an untracked parameter): "pin" keeps the client on its
//	    server for the rest of its session; "refuse" fails the statement
//	    with SQLSTATE 0A000 instead, so servers stay shared.
//	max_procs                 PGSIDECAR_MAX_PROCS                 --max-procs
//	    default: 1. Threads executing Go code at once (GOMAXPROCS). Like
//	    PgBouncer's single thread, one is the cheapest in CPU per
//	    transaction: relaying is system-call bound, and more threads add
//	    cross-thread wake-ups. Raise it when one core saturates (many TLS
//	    clients). 0 = Go's default: the CPU count or the container's limit.
//	max_procs_queued          PGSIDECAR_MAX_PROCS_QUEUED          --max-procs-queued
//	    default: 2. Threads executing Go code while clients queue deep for
//	    servers (more than four waiting per server in use, sampled four
//	    times a second); back to max_procs once the queue stays short. Then
//	    a second thread hands freed servers on faster. At most the CPU
//	    count or the container's CPU limit; 0 (or not above max_procs) =
//	    always max_procs.
//	auth_type                 PGSIDECAR_AUTH_TYPE                 --auth-type
//	    default: "trust". Client authentication: "trust", "md5" or
//	    "scram-sha-256". With md5 or scram-sha-256 and no users, nobody can
//	    log in (not an error).
//	auth_trust_remote         PGSIDECAR_AUTH_TRUST_REMOTE         --auth-trust-remote
//	    default: false. Allows auth_type "trust" on listen addresses that are
//	    not loopback (0.0.0.0, ::, "", other IPs, host names other than
//	    localhost); without it, such a configuration is refused.
//	users                     PGSIDECAR_USERS                     (no flag)
//	    default: none. List of {name, password}. Names are unique and not
//	    empty. password is plain text, a SCRAM verifier
//	    "SCRAM-SHA-256$<iter>:<salt>$<storedkey>:<serverkey>" or "md5"
//	    followed by 32 hex digits. It authenticates clients and, when plain
//	    text, is the upstream password of that user.
//	routes                    (file only)
//	    default: none. List of routes, first match wins:
//	      database           client database, "*" for any (required)
//	      user               client user; "" or "*" for any
//	      dsn                upstream URL or keyword/value; "" = database_url
//	      upstream_database  database used upstream; "" = the client's
//	      upstream_user      user used upstream; "" = the client's
//	      password           upstream password; "" = look up (see Resolve)
//	      pool_size          0 = pool_size
//	      pool_mode          "" = pool_mode
//	    A client matching no route uses database_url with its own database
//	    and user.
//	tls.cert_file             PGSIDECAR_TLS_CERT_FILE             --tls-cert-file
//	tls.key_file              PGSIDECAR_TLS_KEY_FILE              --tls-key-file
//	    default: "". PEM certificate and key for client TLS. Both or
//	    neither; the files must exist. Neither disables client TLS.
//	log_level                 PGSIDECAR_LOG_LEVEL                 --log-level
//	    default: "info". "debug", "info", "warn" or "error".
//	log_format                PGSIDECAR_LOG_FORMAT                --log-format
//	    default: "text" local, "json" production and edge. "text" or "json".
//
// Besides these, --config (PGSIDECAR_CONFIG) names the file.
//
// # Example file
//
//	profile: production
//	listen: ["127.0.0.1:6432", "[::1]:6432"]
//	database_url: postgres://app:secret@db.internal:5432/app?sslmode=verify-full
//	pool_size: 20
//	query_wait_timeout: 10s
//	auth_type: scram-sha-256
//	users:
//	  - name: app
//	    password: SCRAM-SHA-256$4096:c2FsdA==$...:...
//	routes:
//	  - database: reporting
//	    dsn: host=replica.internal port=5432 sslmode=require
//	    upstream_user: reader
//	    password: reader-secret
//	    pool_mode: session
//
// # Upstream connection strings
//
// Upstream connection strings (database_url, a route's dsn) take every
// option of pgconn.ParseConfig, including libpq's multi-host syntax and
// target_session_attrs, plus libpq 16's load_balance_hosts: "random"
// tries the hosts, and each host's addresses, in a random order for every
// server connection, so that connections spread over equivalent hosts;
// "disable" (the default) tries them in the order listed. pgconn does not
// know this option, so Resolve removes it from Upstream.ConnString and
// returns it as Upstream.LoadBalanceHosts; any other value is a validation
// error.
//
// # Upstream credentials
//
// See Config.Resolve for how a client's database and user become an
// upstream connection string and which password is used.
//
// # Secrets
//
// DSNs and passwords never appear in output of this package: Print, String,
// GoString and error messages redact them (RedactDSN). Only
// Upstream.ConnString and the Config fields themselves hold them.
package config
