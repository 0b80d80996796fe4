// Package admin is pgsidecar's admin console: the virtual database "pgsidecar" (or
// "pgbouncer") that answers PgBouncer's SHOW commands and acts on the pooler with PAUSE,
// RESUME, RELOAD and the rest, so that the exporters, dashboards and runbooks written for
// PgBouncer 1.25 work unchanged. It does no I/O and owns no pooler state: a Console turns the
// text of a Query message into the bytes of the reply, reading rows from and acting through
// a Backend the proxy implements over its sessions, pools, prober and configuration.
//
// The proxy routes a client whose startup names an admin database ([IsAdminDatabase]) here
// after authenticating it, instead of attaching it to a pool:
//
//	con := admin.New(backend, admin.Caller{User: user, Addr: addr, Admin: isAdmin}, log)
//	for {
//		msg := receive()                 // one client message
//		switch msg := msg.(type) {
//		case *pgproto3.Query:
//			write(con.Exec(ctx, msg.String)) // RowDescription ... ReadyForQuery
//		case *pgproto3.Terminate:
//			return
//		default:
//			write(con.Refuse(typeOf(msg)))  // FATAL 08P01, then close
//			return
//		}
//	}
//
// What the console answers:
//   - SHOW POOLS, CLIENTS, SERVERS, DATABASES, STATS, STATS_TOTALS, STATS_AVERAGES, TOTALS,
//     CONFIG, LISTS, VERSION, STATE, PEERS, PEER_POOLS and HELP with PgBouncer 1.25's columns
//     (names, order, type OIDs); SHOW of client_encoding and a few other parameters with
//     PgBouncer's fixed values; and pgsidecar's own SHOW UPSTREAMS and SHOW PINS.
//   - PAUSE, RESUME, RECONNECT, KILL [db], DISABLE, ENABLE db, KILL_CLIENT id, RELOAD and
//     SHUTDOWN, through the Backend, with PgBouncer's CommandComplete tags.
//   - PgBouncer commands pgsidecar does not have (SUSPEND, WAIT_CLOSE, SET, SHOW FDS, SHOW
//     USERS...) fail with 0A000; unknown commands with 42601 and PgBouncer's "invalid command"
//     message; anything but SHOW from a stats-only caller with 42501.
//
// Unlike PgBouncer, errors carry a real SQLSTATE rather than 08P01 throughout, and a Query may
// hold several commands.
package admin
