package proxy

// Real client traffic, recorded between drivers and PostgreSQL, as seeds for fuzzing what the
// proxy does with a transaction-mode session. Each file in testdata/txmode-seeds is one client
// connection after its startup, as records of a direction byte ('C' client to server, 'S' server
// to client), a big-endian uint32 length and that many bytes, in the order a relay saw them.
// TestCaptureTxModeSeeds regenerates them when PGSIDECAR_CAPTURE_SEEDS=1.

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	_ "github.com/lib/pq"
)

// seedDir holds the recorded seeds, relative to the package directory.
const seedDir = "testdata/txmode-seeds"

// seedMaxBytes bounds a seed file: the recording stops at the last record that fits under it.
const seedMaxBytes = 64 << 10

// seedChunk is one record of a seed: bytes the relay read from one side in one go.
type seedChunk struct {
	Client bool
	Data   []byte
}

// readSeed parses a seed file.
func readSeed(path string) ([]seedChunk, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var chunks []seedChunk
	for off := 0; off < len(b); {
		if len(b)-off < 5 {
			return nil, fmt.Errorf("%s: truncated record header at offset %d", path, off)
		}
		dir, n := b[off], int(binary.BigEndian.Uint32(b[off+1:]))
		if dir != 'C' && dir != 'S' {
			return nil, fmt.Errorf("%s: record at offset %d has direction %q, want 'C' or 'S'", path, off, dir)
		}
		off += 5
		if n > len(b)-off {
			return nil, fmt.Errorf("%s: record at offset %d claims %d bytes, %d left", path, off-5, n, len(b)-off)
		}
		chunks = append(chunks, seedChunk{Client: dir == 'C', Data: b[off : off+n]})
		off += n
	}
	return chunks, nil
}

func TestSeedFilesParse(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join(seedDir, "*.seed"))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Fatalf("no seeds in %s (PGSIDECAR_CAPTURE_SEEDS=1 go test -run TestCaptureTxModeSeeds records them)", seedDir)
	}
	for _, path := range paths {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() >= seedMaxBytes {
			t.Errorf("%s: %d bytes, want under %d", path, st.Size(), seedMaxBytes)
		}
		chunks, err := readSeed(path)
		if err != nil {
			t.Error(err)
			continue
		}
		var client, server int
		for _, c := range chunks {
			if len(c.Data) == 0 {
				t.Errorf("%s: empty record", path)
			}
			if c.Client {
				client++
			} else {
				server++
			}
		}
		if client == 0 || server == 0 {
			t.Errorf("%s: %d client and %d server records, want at least one of each", path, client, server)
		}
	}
}

// seedRecorder encodes one connection's traffic once its startup is over.
type seedRecorder struct {
	mu      sync.Mutex
	started bool
	full    bool
	out     bytes.Buffer
	client  int
	server  int
}

func (r *seedRecorder) record(client bool, b []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recordLocked(client, b)
}

func (r *seedRecorder) recordLocked(client bool, b []byte) {
	if !r.started || r.full || len(b) == 0 {
		return
	}
	if r.out.Len()+5+len(b) >= seedMaxBytes {
		// Truncated at a record boundary: later records would not fit, and a seed with a gap
		// in the stream would be worse than a shorter one.
		r.full = true
		return
	}
	dir := byte('S')
	if client {
		dir = 'C'
		r.client++
	} else {
		r.server++
	}
	var hdr [5]byte
	hdr[0] = dir
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(b)))
	r.out.Write(hdr[:])
	r.out.Write(b)
}

// seedRelay is a TCP relay in front of PostgreSQL that records each connection it carries.
type seedRelay struct {
	t      testing.TB
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu       sync.Mutex
	scenario string
	names    []string
	conns    map[string]int
	live     map[net.Conn]bool
	written  []string
	contents map[string]string // seed bytes -> name, to keep identical connections once
}

func startSeedRelay(t testing.TB, target string) *seedRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &seedRelay{t: t, ln: ln, target: target, conns: map[string]int{}, live: map[net.Conn]bool{}, contents: map[string]string{}}
	r.wg.Add(1)
	go r.accept()
	t.Cleanup(func() {
		// A test that failed half-way may leave its clients connected.
		_ = ln.Close()
		r.mu.Lock()
		for c := range r.live {
			_ = c.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

func (r *seedRelay) addr() string { return r.ln.Addr().String() }

// name starts a scenario: the connections accepted from now on are recorded under names, in
// order, and then under scenario, scenario-2, ...
func (r *seedRelay) name(scenario string, names ...string) {
	r.mu.Lock()
	r.scenario, r.names = scenario, names
	r.mu.Unlock()
}

func (r *seedRelay) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		r.live[c] = true
		r.conns[r.scenario]++
		name := r.scenario
		if len(r.names) > 0 {
			name, r.names = r.names[0], r.names[1:]
		} else if n := r.conns[r.scenario]; n > 1 {
			name = fmt.Sprintf("%s-%d", r.scenario, n)
		}
		r.mu.Unlock()
		r.wg.Add(1)
		go r.carry(c, name)
	}
}

// carry relays one client connection and writes its seed when both sides are done.
func (r *seedRelay) carry(client net.Conn, name string) {
	defer r.wg.Done()
	defer func() {
		_ = client.Close()
		r.mu.Lock()
		delete(r.live, client)
		r.mu.Unlock()
	}()
	server, err := net.DialTimeout("tcp", r.target, 10*time.Second)
	if err != nil {
		r.t.Errorf("relay %s: %v", name, err)
		return
	}
	defer server.Close()
	rec := &seedRecorder{}
	var both sync.WaitGroup
	both.Add(2)
	go func() {
		defer both.Done()
		defer server.Close()
		buf := make([]byte, 32<<10)
		for {
			n, err := client.Read(buf)
			if n > 0 {
				// Recorded before it is passed on: the reply cannot be recorded ahead of it.
				rec.record(true, buf[:n])
				if _, werr := server.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	go func() {
		defer both.Done()
		defer client.Close()
		buf := make([]byte, 32<<10)
		var startup []byte // the server's bytes until its first ReadyForQuery
		for {
			n, err := server.Read(buf)
			if n > 0 {
				rec.mu.Lock()
				if rec.started {
					rec.recordLocked(false, buf[:n])
				} else {
					startup = append(startup, buf[:n]...)
					if end := readyEnd(startup); end >= 0 {
						// The client can answer only after this write, so its first byte
						// after startup is recorded.
						rec.started = true
						rec.recordLocked(false, startup[end:])
					}
				}
				rec.mu.Unlock()
				if _, werr := client.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	both.Wait()
	if rec.client == 0 || rec.server == 0 {
		return // nothing after startup but the Terminate: no seed
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if same, ok := r.contents[rec.out.String()]; ok {
		r.t.Logf("connection %s recorded the same bytes as %s: not kept", name, same)
		return
	}
	r.contents[rec.out.String()] = name
	path := filepath.Join(seedDir, name+".seed")
	if err := os.WriteFile(path, rec.out.Bytes(), 0o644); err != nil {
		r.t.Errorf("write seed: %v", err)
		return
	}
	r.written = append(r.written, fmt.Sprintf("%s (%d bytes, %d client and %d server records%s)",
		name, rec.out.Len(), rec.client, rec.server, map[bool]string{true: ", truncated"}[rec.full]))
}

// readyEnd returns the offset just past the first complete ReadyForQuery in the backend
// messages of b, or -1.
func readyEnd(b []byte) int {
	for off := 0; len(b)-off >= 5; {
		n := 1 + int(binary.BigEndian.Uint32(b[off+1:]))
		if n < 5 || len(b)-off < n {
			return -1
		}
		if b[off] == 'Z' {
			return off + n
		}
		off += n
	}
	return -1
}

// pgbenchPath finds pgbench next to the cluster's binaries, else on PATH.
func pgbenchPath(t testing.TB) string {
	t.Helper()
	return clientBinPath(t, "pgbench")
}

// runPgbench runs pgbench with a libpq environment of its own.
func runPgbench(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, pgbenchPath(t), args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("pgbench %q: %v\n%s", args, err, out.String())
	}
	return out.String()
}

func TestCaptureTxModeSeeds(t *testing.T) {
	if os.Getenv("PGSIDECAR_CAPTURE_SEEDS") != "1" {
		t.Skip("records " + seedDir + " when PGSIDECAR_CAPTURE_SEEDS=1")
	}
	c := cluster(t)
	ctx := testCtx(t)
	admin := direct(t, c)
	mustExec(t, admin, "drop table if exists seed_t; create table seed_t (id int primary key, s text)")
	t.Cleanup(func() {
		_, _ = admin.Exec(context.Background(), "drop table if exists seed_t, pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers")
	})

	if err := os.MkdirAll(seedDir, 0o755); err != nil {
		t.Fatal(err)
	}
	old, _ := filepath.Glob(filepath.Join(seedDir, "*.seed"))
	for _, path := range old {
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
	}
	relay := startSeedRelay(t, fmt.Sprintf("%s:%d", c.Host(), c.Port()))
	relayDSN := "postgres://postgres@" + relay.addr() + "/postgres?sslmode=disable"

	for mi, m := range allExecModes {
		relay.name("pgx-" + modeName(m))
		cc, err := pgx.ParseConfig(relayDSN)
		if err != nil {
			t.Fatal(err)
		}
		cc.DefaultQueryExecMode = m
		conn, err := pgx.ConnectConfig(ctx, cc)
		if err != nil {
			t.Fatal(err)
		}
		seedPgx(t, ctx, conn, 100*(mi+1))
		if err := conn.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}

	relay.name("libpq")
	db, err := sql.Open("postgres", relayDSN)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	seedLibpq(t, ctx, db)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	runPgbench(t, "-i", "-s", "1", "-q", c.DSN("postgres"))
	for _, mode := range []string{"prepared", "extended", "simple"} {
		// pgbench reads the scale on a connection of its own first, the same in every mode.
		relay.name("pgbench-"+mode, "pgbench-scale-probe", "pgbench-"+mode)
		runPgbench(t, "-n", "-M", mode, "-t", "20", "-c", "1", relayDSN+"&gssencmode=disable")
	}

	_ = relay.ln.Close()
	relay.wg.Wait()
	relay.mu.Lock()
	defer relay.mu.Unlock()
	t.Logf("recorded %d seeds:\n  %s", len(relay.written), strings.Join(relay.written, "\n  "))
	if len(relay.written) < 10 {
		t.Errorf("%d seeds recorded, want one per pgx mode, lib/pq, pgbench mode and the pgbench probe", len(relay.written))
	}
}

// seedPgx runs, through conn, parameterised queries, a reused prepared statement, a transaction,
// an error inside one and a batch, checking their results; ids start at base.
func seedPgx(t *testing.T, ctx context.Context, conn *pgx.Conn, base int) {
	t.Helper()
	for i := range 3 {
		var n int64
		var s string
		if err := conn.QueryRow(ctx, "select $1::int8 * 2, $2::text || 'x'", int64(i), fmt.Sprint(i)).Scan(&n, &s); err != nil {
			t.Fatal(err)
		}
		if n != int64(2*i) || s != fmt.Sprint(i)+"x" {
			t.Fatalf("query %d: %d %q", i, n, s)
		}
	}
	if _, err := conn.Prepare(ctx, "seed_ins", "insert into seed_t values ($1, $2)"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := conn.Exec(ctx, "seed_ins", base+i, fmt.Sprint("p", i)); err != nil {
			t.Fatal(err)
		}
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "insert into seed_t values ($1, 'tx')", base+10); err != nil {
		t.Fatal(err)
	}
	var count int
	if err := tx.QueryRow(ctx, "select count(*) from seed_t where id between $1 and $2", base, base+99).Scan(&count); err != nil {
		t.Fatal(err)
	}
	if count != 4 {
		t.Fatalf("rows in the transaction: %d, want 4", count)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	tx, err = conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tx.Exec(ctx, "insert into seed_t values ($1, 'dup')", base)
	if pgErr := pgErrorOf(err); pgErr == nil || pgErr.Code != "23505" {
		t.Fatalf("duplicate insert in a transaction: %v, want 23505", err)
	}
	if _, err := tx.Exec(ctx, "select 1"); pgErrorOf(err) == nil || pgErrorOf(err).Code != "25P02" {
		t.Fatalf("statement after an error in a transaction: %v, want 25P02", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	b := &pgx.Batch{}
	var sum int64
	var got []string
	ins := "seed_ins"
	if conn.Config().DefaultQueryExecMode == pgx.QueryExecModeSimpleProtocol {
		// A batch in this mode interpolates every query: a statement name is not one.
		ins = "insert into seed_t values ($1, $2)"
	}
	b.Queue(ins, base+20, "batch")
	b.Queue("select sum(id)::int8 from seed_t where id between $1 and $2", base, base+99).QueryRow(func(r pgx.Row) error { return r.Scan(&sum) })
	b.Queue("select s from seed_t where id >= $1 and id < $2 order by id", base, base+3).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				return err
			}
			got = append(got, s)
		}
		return rows.Err()
	})
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		t.Fatalf("batch: %v", err)
	}
	if want := int64(5*base + 3 + 10 + 20); sum != want || strings.Join(got, ",") != "p0,p1,p2" {
		t.Fatalf("batch: sum %d (want %d), rows %q", sum, want, got)
	}
}

// seedLibpq runs a query, a reused prepared statement, a transaction and an error in one
// through database/sql on lib/pq.
func seedLibpq(t *testing.T, ctx context.Context, db *sql.DB) {
	t.Helper()
	var n int
	var s string
	if err := db.QueryRowContext(ctx, "select $1::int * 3, $2::text", 7, "pq").Scan(&n, &s); err != nil {
		t.Fatal(err)
	}
	if n != 21 || s != "pq" {
		t.Fatalf("query: %d %q", n, s)
	}
	stmt, err := db.PrepareContext(ctx, "insert into seed_t values ($1, $2)")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := stmt.ExecContext(ctx, 900+i, "pq"); err != nil {
			t.Fatal(err)
		}
	}
	if err := stmt.Close(); err != nil {
		t.Fatal(err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "update seed_t set s = s || '!' where id >= $1", 900); err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRowContext(ctx, "select count(*) from seed_t where s = 'pq!'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Fatalf("updated rows in the transaction: %d, want 3", n)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tx.ExecContext(ctx, "select 1/0")
	if pgErr := (interface{ SQLState() string })(nil); !errors.As(err, &pgErr) || pgErr.SQLState() != "22012" {
		t.Fatalf("division by zero in a transaction: %v, want 22012", err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
}
