package admin

import (
	"bytes"
	"context"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// fakeBackend is a Backend with fixed rows that records the actions it is asked to do.
type fakeBackend struct {
	pools     []PoolRow
	clients   []SocketRow
	servers   []SocketRow
	stats     []StatsRow
	databases []DatabaseRow
	config    []ConfigRow
	lists     Lists
	version   string
	state     State
	upstreams []UpstreamRow
	pins      []PinRow

	calls []string // "pause:db1", "reload", ... in order
	err   error    // returned by every action

	// pauseEntered, when set, is closed once Pause is waiting; Pause then waits for
	// pauseRelease or ctx.
	pauseEntered chan struct{}
	pauseRelease chan struct{}
}

var _ Backend = (*fakeBackend)(nil)

func (f *fakeBackend) Pools() []PoolRow         { return f.pools }
func (f *fakeBackend) Clients() []SocketRow     { return f.clients }
func (f *fakeBackend) Servers() []SocketRow     { return f.servers }
func (f *fakeBackend) Stats() []StatsRow        { return f.stats }
func (f *fakeBackend) Databases() []DatabaseRow { return f.databases }
func (f *fakeBackend) Config() []ConfigRow      { return f.config }
func (f *fakeBackend) Lists() Lists             { return f.lists }
func (f *fakeBackend) Version() string          { return f.version }
func (f *fakeBackend) State() State             { return f.state }
func (f *fakeBackend) Upstreams() []UpstreamRow { return f.upstreams }
func (f *fakeBackend) Pins() []PinRow           { return f.pins }

func (f *fakeBackend) Pause(ctx context.Context, db string) error {
	f.calls = append(f.calls, "pause:"+db)
	if err := ctx.Err(); err != nil {
		return err
	}
	if f.pauseEntered != nil {
		close(f.pauseEntered)
		select {
		case <-f.pauseRelease:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return f.err
}

func (f *fakeBackend) act(call string) error { f.calls = append(f.calls, call); return f.err }

func (f *fakeBackend) Resume(db string) error    { return f.act("resume:" + db) }
func (f *fakeBackend) Reconnect(db string) error { return f.act("reconnect:" + db) }
func (f *fakeBackend) Disable(db string) error   { return f.act("disable:" + db) }
func (f *fakeBackend) Enable(db string) error    { return f.act("enable:" + db) }
func (f *fakeBackend) Kill(db string) error      { return f.act("kill:" + db) }
func (f *fakeBackend) KillClient(id uint64) error {
	return f.act("kill_client:" + strconv.FormatUint(id, 10))
}
func (f *fakeBackend) Reload() error   { return f.act("reload") }
func (f *fakeBackend) Shutdown() error { return f.act("shutdown") }

// t0 is a fixed instant for timestamps.
var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// newFake returns a backend with at least one row for every SHOW, so that every result's
// rows can be checked against its columns.
func newFake() *fakeBackend {
	return &fakeBackend{
		pools: []PoolRow{{
			Database: "app", User: "alice", ClActive: 3, ClWaiting: 1, SvActive: 2, SvIdle: 4,
			SvLogin: 1, MaxWait: 2*time.Second + 500*time.Microsecond, PoolMode: "transaction",
		}},
		clients: []SocketRow{{
			ID: 7, User: "alice", Database: "app", State: "active", Addr: "10.0.0.5", Port: 41000,
			LocalAddr: "127.0.0.1", LocalPort: 6432, ConnectTime: t0, RequestTime: t0.Add(time.Minute),
			Wait: 3*time.Second + 250*time.Microsecond, LinkID: 0x2a, ApplicationName: "psql",
			PreparedStatements: 2,
		}, {ID: 8, State: "idle"}},
		servers: []SocketRow{{
			ID: 42, User: "alice", Database: "app", Replication: "none", State: "active",
			Addr: "10.0.1.1", Port: 5432, ConnectTime: t0, CloseNeeded: true, LinkID: 7,
			RemotePID: 12345, TLS: "TLSv1.3/TLS_AES_256_GCM_SHA384",
		}},
		stats: []StatsRow{{
			Database: "app",
			Total:    StatsValues{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11},
			Average:  StatsValues{10, 10, 20, 100, 200, 100, 50, 30, 1, 2, 3},
		}, {
			Database: "other",
			Total:    StatsValues{100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1100},
			Average:  StatsValues{30, 30, 60, 1, 2, 200, 10, 70, 0, 0, 0},
		}},
		databases: []DatabaseRow{{
			Name: "app", Host: "db.internal", Port: 5432, Database: "app_prod", PoolSize: 20,
			MinPoolSize: 2, ServerLifetime: time.Hour, MaxConnections: 50, CurrentConnections: 6,
			CurrentClientConnections: 4, Paused: true,
		}, {Name: "pgsidecar", Port: 6432, Database: "pgsidecar", ForceUser: "pgsidecar", PoolMode: "statement"}},
		config: []ConfigRow{
			{Key: "pool_mode", Value: "transaction", Default: "transaction", Changeable: true},
			{Key: "listen_addr", Value: "127.0.0.1:6432", Default: "127.0.0.1:6432"},
		},
		lists:   Lists{Databases: 2, Users: 3, Pools: 4, UsedClients: 5, LoginClients: 1, UsedServers: 6, DNSNames: 1},
		version: "pgsidecar 1.2.3",
		upstreams: []UpstreamRow{{
			Name: "default", Upstream: "postgres://app:xxxxx@db.internal/app", Checked: true,
			Healthy: true, ConsecutiveSuccesses: 5, Latency: 1500 * time.Microsecond, LastCheck: t0,
		}, {Name: "replica", Upstream: "postgres://replica/app", LastError: "connection refused"}},
		pins: []PinRow{{ClientID: 7, Database: "app", User: "alice", Reason: "advisory_lock", Since: t0}},
	}
}

var (
	adminCaller = Caller{User: "admin", Addr: "127.0.0.1:50000", Admin: true}
	statsCaller = Caller{User: "monitor", Addr: "127.0.0.1:50001"}
)

// null stands for a NULL value in decoded rows.
const null = "<NULL>"

// result is one command's answer, decoded.
type result struct {
	fields  []pgproto3.FieldDescription // nil when there was no RowDescription
	rows    [][]string
	tag     string
	err     *pgproto3.ErrorResponse
	notices []pgproto3.NoticeResponse
	empty   bool // EmptyQueryResponse
}

// decode splits an Exec reply into its results, checking that it ends with exactly one
// ReadyForQuery('I') and nothing after.
func decode(t testing.TB, b []byte) []result {
	t.Helper()
	fe := pgproto3.NewFrontend(bytes.NewReader(b), nil)
	var (
		out []result
		cur result
	)
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("reply ended before ReadyForQuery: %v (decoded %+v)", err, out)
		}
		switch m := msg.(type) {
		case *pgproto3.RowDescription:
			if cur.fields != nil {
				t.Fatalf("two RowDescriptions in one result")
			}
			cur.fields = []pgproto3.FieldDescription{}
			for _, f := range m.Fields {
				f.Name = bytes.Clone(f.Name)
				cur.fields = append(cur.fields, f)
			}
		case *pgproto3.DataRow:
			if cur.fields == nil {
				t.Fatalf("DataRow before RowDescription")
			}
			row := make([]string, len(m.Values))
			for i, v := range m.Values {
				row[i] = null
				if v != nil {
					row[i] = string(v)
				}
			}
			cur.rows = append(cur.rows, row)
		case *pgproto3.NoticeResponse:
			cur.notices = append(cur.notices, *m)
		case *pgproto3.CommandComplete:
			cur.tag = string(m.CommandTag)
			out, cur = append(out, cur), result{}
		case *pgproto3.ErrorResponse:
			e := *m
			cur.err = &e
			out, cur = append(out, cur), result{}
		case *pgproto3.EmptyQueryResponse:
			cur.empty = true
			out, cur = append(out, cur), result{}
		case *pgproto3.ReadyForQuery:
			if m.TxStatus != 'I' {
				t.Errorf("ReadyForQuery status %q, want 'I'", m.TxStatus)
			}
			if cur.fields != nil || cur.notices != nil {
				t.Errorf("ReadyForQuery in the middle of a result: %+v", cur)
			}
			if extra, err := fe.Receive(); err == nil {
				t.Errorf("message after ReadyForQuery: %T", extra)
			}
			return out
		default:
			t.Fatalf("unexpected message %T", msg)
		}
	}
}

// execute runs query on a console for who over b and decodes the reply.
func execute(t testing.TB, b Backend, who Caller, query string) []result {
	t.Helper()
	return decode(t, New(b, who, nil).Exec(context.Background(), query))
}

// one runs query and returns its single result.
func one(t testing.TB, b Backend, who Caller, query string) result {
	t.Helper()
	res := execute(t, b, who, query)
	if len(res) != 1 {
		t.Fatalf("%q: %d results, want 1: %+v", query, len(res), res)
	}
	return res[0]
}

// ok returns the rows of query's single successful result with tag SHOW.
func ok(t testing.TB, b Backend, query string) result {
	t.Helper()
	r := one(t, b, adminCaller, query)
	if r.err != nil {
		t.Fatalf("%q: error %s: %s", query, r.err.Code, r.err.Message)
	}
	if r.tag != "SHOW" {
		t.Fatalf("%q: tag %q, want SHOW", query, r.tag)
	}
	return r
}

// failed returns the error of query's single result, failing when there is none.
func failed(t testing.TB, b Backend, who Caller, query string) *pgproto3.ErrorResponse {
	t.Helper()
	r := one(t, b, who, query)
	if r.err == nil {
		t.Fatalf("%q: no error, got tag %q", query, r.tag)
	}
	return r.err
}

// names returns the column names of r.
func names(r result) []string {
	var out []string
	for _, f := range r.fields {
		out = append(out, string(f.Name))
	}
	return out
}

// col returns the value of column name in row i of r.
func col(t testing.TB, r result, i int, name string) string {
	t.Helper()
	for j, f := range r.fields {
		if string(f.Name) == name {
			return r.rows[i][j]
		}
	}
	t.Fatalf("no column %q in %v", name, names(r))
	return ""
}

// captureLog returns a JSON logger at Debug and the buffer it writes to.
func captureLog() (*slog.Logger, *bytes.Buffer) {
	var buf bytes.Buffer
	return slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), &buf
}
