package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"slices"

	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/pgsidecar/pgsidecar/proxy/admin"
	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

// The admin console's side of a session: a client that logs in to database "pgsidecar" (or
// "pgbouncer") is answered by package admin instead of being given a pool.

// maxAdminQuery bounds an admin console Query message.
const maxAdminQuery = 64 << 10

// isAdminDatabase reports whether database names the admin console under cfg.
func isAdminDatabase(database string, adminAlias bool) bool {
	return admin.IsAdminDatabase(database) && (database == "pgsidecar" || adminAlias)
}

// adminLogin finishes the login of an admin console client: admin_users may run everything,
// stats_users SHOW only, anyone else is refused with 42501.
func (s *session) adminLogin() error {
	cfg := s.srv.config()
	caller := admin.Caller{User: s.user, Addr: s.conn.RemoteAddr().String()}
	switch {
	case slices.Contains(cfg.AdminUsers, s.user):
		caller.Admin = true
	case slices.Contains(cfg.StatsUsers, s.user):
	default:
		return &startupError{code: retry.CodeInsufficientPrivilege, msg: fmt.Sprintf("pgsidecar: user %q may not use the admin console (admin_users, stats_users)", s.user)}
	}
	s.console = admin.New(s.srv.adminBackend(), caller, s.srv.log.With("conn_id", s.id))
	return nil
}

// adminParams are the parameters an admin console client is told at login, PgBouncer's.
func adminParams() map[string]string {
	return map[string]string{
		"server_version":              "1.25.2/pgsidecar",
		"client_encoding":             "UTF8",
		"server_encoding":             "UTF8",
		"DateStyle":                   "ISO",
		"TimeZone":                    "GMT",
		"standard_conforming_strings": "on",
		"is_superuser":                "on",
	}
}

// adminLoop serves an admin console client: simple-protocol queries until it leaves. Any other
// message ends it, as PgBouncer does.
func (s *session) adminLoop() error {
	f := wire.Frames{Buf: make([]byte, smallBufSize)}
	for {
		typ, length, ok, err := f.Next(maxAdminQuery)
		if err != nil {
			return err
		}
		if !ok || f.W-f.R < 1+length {
			if need := 1 + length; ok && need > len(f.Buf) {
				nb := make([]byte, need)
				f.W = copy(nb, f.Buf[f.R:f.W])
				f.Buf, f.R = nb, 0
			} else {
				f.Compact()
			}
			n, err := s.cio.Read(f.Buf[f.W:])
			f.W += n
			if err != nil {
				return err
			}
			continue
		}
		body := f.Buf[f.R+5 : f.R+1+length]
		f.R += 1 + length
		switch typ {
		case 'Q':
			ctx, cancel := context.WithCancel(s.context())
			s.mu.Lock()
			s.adminCancel = cancel
			s.mu.Unlock()
			out := s.console.Exec(ctx, string(body))
			s.mu.Lock()
			s.adminCancel = nil
			s.mu.Unlock()
			cancel()
			if err := s.writeClient(out); err != nil {
				return err
			}
		case 'X':
			return errTerminate
		default:
			_ = s.writeClient(s.console.Refuse(typ))
			return fmt.Errorf("admin console: message %q refused", typ)
		}
	}
}

// tlsDescription describes conn's TLS as SHOW CLIENTS does ("" without TLS).
func tlsDescription(conn any) string {
	tc, ok := conn.(*tls.Conn)
	if !ok {
		return ""
	}
	st := tc.ConnectionState()
	return tls.VersionName(st.Version) + "/" + tls.CipherSuiteName(st.CipherSuite)
}
