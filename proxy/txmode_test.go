package proxy

// Transaction-mode coverage of what a client can leave on a server beyond one transaction:
// named prepared statements (tracked per client, prepared on whichever server the client
// gets, evicted per server), DISCARD/DEALLOCATE, Describe after a move, pinning of state that
// cannot move (and that it does not leak to the next client), cancel after moves; and the
// full pgx feature set in session mode.

import (
	"bufio"
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/config"
	"github.com/pgsidecar/pgsidecar/proxy/txmode"
)

// txConnect opens a pgx connection through the proxy without touching t, for goroutines.
func txConnect(ctx context.Context, p *testProxy, mode pgx.QueryExecMode) (*pgx.Conn, error) {
	cc, err := pgx.ParseConfig(p.dsn("postgres", "postgres"))
	if err != nil {
		return nil, err
	}
	cc.DefaultQueryExecMode = mode
	return pgx.ConnectConfig(ctx, cc)
}

// txPgconn opens a pgconn connection through the proxy, closed at the end of the test.
func txPgconn(t testing.TB, p *testProxy) *pgconn.PgConn {
	t.Helper()
	pc, err := pgconn.Connect(testCtx(t), p.dsn("postgres", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close(context.Background()) })
	return pc
}

// txExecPrepared runs a prepared statement with text parameters and returns its rows as text.
func txExecPrepared(ctx context.Context, pc *pgconn.PgConn, name string, args ...string) ([][]string, error) {
	params := make([][]byte, len(args))
	for i, a := range args {
		params[i] = []byte(a)
	}
	res := pc.ExecPrepared(ctx, name, params, nil, nil).Read()
	if res.Err != nil {
		return nil, res.Err
	}
	return txRows(res.Rows), nil
}

func txRows(rows [][][]byte) [][]string {
	out := make([][]string, len(rows))
	for i, r := range rows {
		out[i] = make([]string, len(r))
		for j, v := range r {
			out[i][j] = string(v)
		}
	}
	return out
}

// txOne returns the single value of a single-row, single-column result.
func txOne(rows [][]string) string {
	if len(rows) != 1 || len(rows[0]) != 1 {
		return fmt.Sprintf("<%d rows: %q>", len(rows), rows)
	}
	return rows[0][0]
}

// txSimple runs sql with the simple protocol through pc and returns the last result's rows.
func txSimple(ctx context.Context, pc *pgconn.PgConn, sql string) ([][]string, error) {
	results, err := pc.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, err
	}
	if len(results) == 0 {
		return nil, nil
	}
	last := results[len(results)-1]
	return txRows(last.Rows), last.Err
}

// txBusy keeps n clients running short autocommit statements through p, so that a client
// under test moves between servers. The returned stop ends them and fails the test if any of
// them saw an error or a wrong result.
func txBusy(t testing.TB, p *testProxy, n int) (stop func()) {
	t.Helper()
	// Stopping lets each client finish its statement: no connection is cut mid-query.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	var stopped atomic.Bool
	conns := make([]*pgx.Conn, n)
	for i := range n {
		conns[i] = connectWith(t, p, pgx.QueryExecModeExec, nil)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i, conn := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; !stopped.Load(); k++ {
				var got int64
				err := conn.QueryRow(ctx, "select $1::int8 + 1", int64(i*1_000_000+k)).Scan(&got)
				if err != nil {
					errs <- fmt.Errorf("busy client %d: %w", i, err)
					return
				}
				if got != int64(i*1_000_000+k+1) {
					errs <- fmt.Errorf("busy client %d: got %d, want %d", i, got, i*1_000_000+k+1)
					return
				}
			}
		}()
	}
	var once sync.Once
	stop = func() {
		t.Helper()
		once.Do(func() {
			stopped.Store(true)
			wg.Wait()
			cancel()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			for _, conn := range conns {
				_ = conn.Close(context.Background())
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// txPins reads pgsidecar_client_pins_total{reason} from the proxy's registry.
func txPins(t testing.TB, p *testProxy, reason string) float64 {
	t.Helper()
	return reasonCounter(t, p, "pgsidecar_client_pins_total", reason)
}

// reasonCounter reads the counter name{reason} from the proxy's registry (0 when absent).
func reasonCounter(t testing.TB, p *testProxy, name, reason string) float64 {
	t.Helper()
	mfs, err := p.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// txWatchBackends records the highest number of upstream backends with application_name app
// until the returned function is called, which returns that maximum.
func txWatchBackends(t testing.TB, ctx context.Context, app string) (stop func() int64) {
	t.Helper()
	watcher := direct(t, cluster(t))
	var maxSeen atomic.Int64
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for wctx.Err() == nil {
			var n int64
			if err := watcher.QueryRow(wctx, `select count(*) from pg_stat_activity where application_name = $1`, app).Scan(&n); err == nil {
				if n > maxSeen.Load() {
					maxSeen.Store(n)
				}
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return func() int64 {
		cancel()
		<-done
		return maxSeen.Load()
	}
}

func modeName(m pgx.QueryExecMode) string { return strings.ReplaceAll(m.String(), " ", "_") }

// --- 1. pgx in every QueryExecMode, many clients over few servers -------------------------

func TestTxModePgxAllExecModesConcurrent(t *testing.T) {
	c := cluster(t)
	const clients, ops, poolSize = 60, 30, 3
	admin := direct(t, c)
	table := "txmode_drv"
	mustExec(t, admin, fmt.Sprintf("drop table if exists %s; create table %s (mode text, client int, n int)", table, table))
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "drop table if exists "+table) })

	for _, m := range allExecModes {
		name := modeName(m)
		t.Run(name, func(t *testing.T) {
			app := "txmode_drv_" + strings.ToLower(name)
			p := startProxy(t, c, func(cfg *config.Config) {
				cfg.PoolSize = poolSize
				cfg.DatabaseURL = c.DSN("postgres") + "&application_name=" + app
			})
			ctx := testCtx(t)
			stopWatch := txWatchBackends(t, ctx, app)
			var wg sync.WaitGroup
			errs := make(chan error, clients)
			for id := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := txDriverClient(ctx, p, m, table, name, id, ops); err != nil {
						errs <- fmt.Errorf("client %d: %w", id, err)
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			waitServersReleased(t, p)
			if peak := stopWatch(); peak > poolSize || peak == 0 {
				t.Errorf("upstream backends with application_name %s peaked at %d, want 1..%d", app, peak, poolSize)
			}
			var rows, sum int64
			if err := admin.QueryRow(ctx, fmt.Sprintf("select count(*), coalesce(sum(n), 0) from %s where mode = $1", table), name).Scan(&rows, &sum); err != nil {
				t.Fatal(err)
			}
			perClient := int64(0)
			for i := range ops {
				if i%3 == 2 {
					perClient += int64(i)
				}
			}
			if rows != clients*ops/3 || sum != clients*perClient {
				t.Errorf("committed rows: %d (sum %d), want %d (sum %d)", rows, sum, clients*ops/3, clients*perClient)
			}
		})
	}
}

// txDriverClient runs ops operations: parameterised queries, and every third one a
// transaction that inserts a row tagged with the client and counts the client's rows.
func txDriverClient(ctx context.Context, p *testProxy, m pgx.QueryExecMode, table, mode string, id, ops int) error {
	conn, err := txConnect(ctx, p, m)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	inserted, sum := int64(0), int64(0)
	for i := range ops {
		if i%3 != 2 {
			n := int64(id*1000 + i)
			s := fmt.Sprintf("c%d-%d", id, i)
			var gotN int64
			var gotS string
			if err := conn.QueryRow(ctx, "select $1::int8 * 2, $2::text || 'x'", n, s).Scan(&gotN, &gotS); err != nil {
				return fmt.Errorf("op %d: %w", i, err)
			}
			if gotN != 2*n || gotS != s+"x" {
				return fmt.Errorf("op %d: got (%d, %q), want (%d, %q)", i, gotN, gotS, 2*n, s+"x")
			}
			continue
		}
		tx, err := conn.Begin(ctx)
		if err != nil {
			return fmt.Errorf("op %d: begin: %w", i, err)
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf("insert into %s (mode, client, n) values ($1, $2, $3)", table), mode, id, i); err != nil {
			return fmt.Errorf("op %d: insert: %w", i, err)
		}
		inserted++
		sum += int64(i)
		var gotCount, gotSum int64
		if err := tx.QueryRow(ctx, fmt.Sprintf("select count(*), coalesce(sum(n), 0)::int8 from %s where mode = $1 and client = $2", table), mode, id).Scan(&gotCount, &gotSum); err != nil {
			return fmt.Errorf("op %d: count: %w", i, err)
		}
		if gotCount != inserted || gotSum != sum {
			return fmt.Errorf("op %d: own rows %d (sum %d), want %d (sum %d)", i, gotCount, gotSum, inserted, sum)
		}
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("op %d: commit: %w", i, err)
		}
	}
	return nil
}

// --- 2. pgx batches mixing prepared and cached statements ---------------------------------

func TestTxModePgxBatches(t *testing.T) {
	c := cluster(t)
	const clients, batches = 20, 8
	p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 2 })
	admin := direct(t, c)
	table := "txmode_batch"
	mustExec(t, admin, fmt.Sprintf("drop table if exists %s; create table %s (client int, n int)", table, table))
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "drop table if exists "+table) })
	ctx := testCtx(t)

	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for id := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := txBatchClient(ctx, p, table, id, batches); err != nil {
				errs <- fmt.Errorf("client %d: %w", id, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	waitServersReleased(t, p)
	if n := queryInt(t, admin, "select count(*) from "+table); n != clients*batches {
		t.Errorf("rows after the batches: %d, want %d", n, clients*batches)
	}
}

func txBatchClient(ctx context.Context, p *testProxy, table string, id, batches int) error {
	conn, err := txConnect(ctx, p, pgx.QueryExecModeCacheStatement)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	// Explicitly prepared, under names every client uses for different texts.
	if _, err := conn.Prepare(ctx, "add", fmt.Sprintf("select $1::int4 + $2::int4 + %d", id)); err != nil {
		return fmt.Errorf("prepare add: %w", err)
	}
	if _, err := conn.Prepare(ctx, "ins", fmt.Sprintf("insert into %s (client, n) values ($1, $2)", table)); err != nil {
		return fmt.Errorf("prepare ins: %w", err)
	}
	for b := range batches {
		batch := &pgx.Batch{}
		var gotAdd, gotCount, gotLit int64
		var gotText string
		batch.Queue("add", b, 1000).QueryRow(func(r pgx.Row) error { return r.Scan(&gotAdd) })
		batch.Queue("select $1::text || '/' || $2::int4", fmt.Sprintf("c%d", id), b).QueryRow(func(r pgx.Row) error { return r.Scan(&gotText) })
		batch.Queue("ins", id, b)
		batch.Queue(fmt.Sprintf("select count(*) from %s where client = $1", table), id).QueryRow(func(r pgx.Row) error { return r.Scan(&gotCount) })
		batch.Queue("select 7 * 6").QueryRow(func(r pgx.Row) error { return r.Scan(&gotLit) })
		if err := conn.SendBatch(ctx, batch).Close(); err != nil {
			return fmt.Errorf("batch %d: %w", b, err)
		}
		if gotAdd != int64(b+1000+id) || gotText != fmt.Sprintf("c%d/%d", id, b) || gotCount != int64(b+1) || gotLit != 42 {
			return fmt.Errorf("batch %d: got add=%d text=%q count=%d lit=%d, want %d %q %d 42",
				b, gotAdd, gotText, gotCount, gotLit, b+1000+id, fmt.Sprintf("c%d/%d", id, b), b+1)
		}
	}
	return nil
}

// --- 3. lib/pq prepared statements --------------------------------------------------------

func TestTxModeLibpqPrepared(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 2 })
	ctx := testCtx(t)
	db := openLibpq(t, p)
	db.SetMaxOpenConns(4)
	// Two statements, so that lib/pq's per-connection names ("1", "2", ...) mean different
	// texts on different connections.
	mul, err := db.PrepareContext(ctx, "select $1::int8 * 3, $2::text || '!'")
	if err != nil {
		t.Fatal(err)
	}
	neg, err := db.PrepareContext(ctx, "select -$1::int8")
	if err != nil {
		t.Fatal(err)
	}
	const goroutines, total = 20, 200
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range total / goroutines {
				n := int64(g*100 + k)
				var got int64
				var s string
				if err := mul.QueryRowContext(ctx, n, fmt.Sprint(n)).Scan(&got, &s); err != nil {
					errs <- err
					return
				}
				if got != 3*n || s != fmt.Sprint(n)+"!" {
					errs <- fmt.Errorf("mul(%d): got %d %q", n, got, s)
					return
				}
				if err := neg.QueryRowContext(ctx, n).Scan(&got); err != nil {
					errs <- err
					return
				}
				if got != -n {
					errs <- fmt.Errorf("neg(%d): got %d", n, got)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := mul.Close(); err != nil {
		t.Fatalf("stmt.Close: %v", err)
	}
	if err := neg.Close(); err != nil {
		t.Fatalf("stmt.Close: %v", err)
	}
	// The connections are still good after the closes.
	var n int
	if err := db.QueryRowContext(ctx, "select 5").Scan(&n); err != nil || n != 5 {
		t.Fatalf("after stmt.Close: %d, %v", n, err)
	}
	waitServersReleased(t, p)
}

// --- 4. a named statement moving across servers; protocol errors --------------------------

func TestTxModeNamedStatementMoves(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 2 })
	ctx := testCtx(t)
	pc := txPgconn(t, p)
	if _, err := pc.Prepare(ctx, "s1", "select $1::int4 + 1", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.Prepare(ctx, "pid", "select pg_backend_pid()", nil); err != nil {
		t.Fatal(err)
	}
	stop := txBusy(t, p, 10)
	pids := map[string]int{}
	for i := range 1000 {
		// One transaction (one Sync): the pid is that of the server that ran s1.
		b := &pgconn.Batch{}
		b.ExecPrepared("s1", [][]byte{[]byte(strconv.Itoa(i))}, nil, nil)
		b.ExecPrepared("pid", nil, nil, nil)
		results, err := pc.ExecBatch(ctx, b).ReadAll()
		if err != nil {
			t.Fatalf("iteration %d: %v", i, err)
		}
		if len(results) != 2 {
			t.Fatalf("iteration %d: %d results", i, len(results))
		}
		if got := txOne(txRows(results[0].Rows)); got != strconv.Itoa(i+1) {
			t.Fatalf("iteration %d: s1(%d) = %s, want %d", i, i, got, i+1)
		}
		pids[txOne(txRows(results[1].Rows))]++
	}
	stop()
	if len(pids) < 2 {
		t.Errorf("1000 transactions ran on servers %v: want at least 2 servers", pids)
	}

	// Close, then prepare the same name with another text: the new text must be what runs,
	// on every server.
	if err := pc.Deallocate(ctx, "s1"); err != nil {
		t.Fatalf("Deallocate s1: %v", err)
	}
	if _, err := pc.Prepare(ctx, "s1", "select $1::int4 * 10", nil); err != nil {
		t.Fatalf("re-prepare s1 with a new text: %v", err)
	}
	stop = txBusy(t, p, 4)
	for i := range 50 {
		rows, err := txExecPrepared(ctx, pc, "s1", strconv.Itoa(i))
		if err != nil {
			t.Fatalf("new s1(%d): %v", i, err)
		}
		if got := txOne(rows); got != strconv.Itoa(i*10) {
			t.Fatalf("new s1(%d) = %s, want %d (old text ran?)", i, got, i*10)
		}
	}
	stop()

	rc := rawConnect(t, p)
	t.Run("close_unknown", func(t *testing.T) {
		rc.t = t
		rc.send(&pgproto3.Close{ObjectType: 'S', Name: "never_prepared"}, &pgproto3.Sync{})
		rc.expect("3Z")
	})
	t.Run("bind_unknown", func(t *testing.T) {
		rc.t = t
		rc.send(&pgproto3.Bind{PreparedStatement: "nope"}, &pgproto3.Execute{}, &pgproto3.Sync{})
		txExpectError(t, rc, "26000")
	})
	t.Run("describe_unknown", func(t *testing.T) {
		rc.t = t
		rc.send(&pgproto3.Describe{ObjectType: 'S', Name: "nope"}, &pgproto3.Sync{})
		txExpectError(t, rc, "26000")
	})
	t.Run("parse_duplicate", func(t *testing.T) {
		rc.t = t
		rc.send(&pgproto3.Parse{Name: "s1", Query: "select $1::int4 + 1"}, &pgproto3.Sync{})
		rc.expect("1Z")
		// A second Parse of s1 fails, and so does what follows it up to Sync.
		rc.send(&pgproto3.Parse{Name: "s1", Query: "select 2"},
			&pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("1")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
		txExpectError(t, rc, "42P05")
		// The connection recovers, and s1 keeps its first text.
		rc.send(&pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("41")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
		bodies := rc.expect("2DCZ")
		if got := txDataRow(t, bodies[1]); got != "42" {
			t.Fatalf("s1(41) after the duplicate Parse = %s, want 42", got)
		}
		if got := txSimpleRaw(t, rc, "select 'alive'"); got != "alive" {
			t.Fatalf("after recovery: %q", got)
		}
	})
}

// --- 4b. the unnamed statement across servers ---------------------------------------------

// TestTxModeUnnamedStatementMoves prepares the unnamed statement in one transaction and binds
// it in later ones, which land on other servers: the proxy replays it there.
func TestTxModeUnnamedStatementMoves(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 2 })
	rc := rawConnect(t, p)
	rc.send(&pgproto3.Parse{Name: "pid", Query: "select pg_backend_pid()"}, &pgproto3.Sync{})
	rc.expect("1Z")
	rc.send(&pgproto3.Parse{Query: "select $1::int4 * 2, $2::text"}, &pgproto3.Describe{ObjectType: 'S'}, &pgproto3.Sync{})
	rc.expect("1tTZ")
	stop := txBusy(t, p, 6)
	pids := map[string]bool{}
	for i := range 300 {
		rc.send(&pgproto3.Bind{Parameters: [][]byte{[]byte(strconv.Itoa(i)), []byte("u")}}, &pgproto3.Execute{},
			&pgproto3.Bind{PreparedStatement: "pid"}, &pgproto3.Execute{}, &pgproto3.Sync{})
		bodies := rc.expect("2DC2DCZ")
		var row pgproto3.DataRow
		if err := row.Decode(bodies[1]); err != nil {
			t.Fatal(err)
		}
		if len(row.Values) != 2 || string(row.Values[0]) != strconv.Itoa(2*i) || string(row.Values[1]) != "u" {
			t.Fatalf("unnamed(%d) = %q, want [%d u]", i, row.Values, 2*i)
		}
		pids[txDataRow(t, bodies[4])] = true
	}
	stop()
	if len(pids) < 2 {
		t.Errorf("300 transactions ran on %d server(s), want at least 2", len(pids))
	}
	// A simple Query destroys the unnamed statement, as PostgreSQL documents: a Bind of it
	// afterwards fails rather than running the old text.
	if got := txSimpleRaw(t, rc, "select 'q'"); got != "q" {
		t.Fatalf("simple query: %q", got)
	}
	rc.send(&pgproto3.Bind{Parameters: [][]byte{[]byte("1"), []byte("u")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
	typ, body := rc.recv()
	if typ != 'E' {
		got := []string{fmt.Sprintf("%c %s", typ, describeMsg(typ, body))}
		for typ != 'Z' {
			typ, body = rc.recv()
			got = append(got, fmt.Sprintf("%c %s", typ, describeMsg(typ, body)))
		}
		t.Fatalf("Bind of the unnamed statement after a simple Query: got %q, want ErrorResponse 26000 as PostgreSQL sends", got)
	}
	var e pgproto3.ErrorResponse
	if err := e.Decode(body); err != nil || e.Code != "26000" {
		t.Fatalf("got error %s %s, want 26000", e.Code, e.Message)
	}
	rc.expect("Z")
}

// TestTxModeForeignServerName checks that the proxy's server-side statement names are its own:
// a client that never prepared pgsidecar_N must not reach the statement another client
// prepared under it on the shared server.
func TestTxModeForeignServerName(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 1 })
	ctx := testCtx(t)
	a := txPgconn(t, p)
	if _, err := a.Prepare(ctx, "secret", "select 'secret of client a', $1::int4", nil); err != nil {
		t.Fatal(err)
	}
	rows, err := txSimple(ctx, a, "select name from pg_prepared_statements")
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || !strings.HasPrefix(rows[0][0], txmode.ServerStmtPrefix) {
		t.Fatalf("server-side statements %q, want one named %s...", rows, txmode.ServerStmtPrefix)
	}
	name := rows[0][0]
	// Pool size 1: client b gets the same server.
	b := rawConnect(t, p)
	for _, msgs := range [][]interface{ Encode([]byte) ([]byte, error) }{
		{&pgproto3.Bind{PreparedStatement: name, Parameters: [][]byte{[]byte("1")}}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		{&pgproto3.Describe{ObjectType: 'S', Name: name}, &pgproto3.Sync{}},
	} {
		b.send(msgs...)
		typ, body := b.recv()
		if typ != 'E' {
			got := []string{fmt.Sprintf("%c %s", typ, describeMsg(typ, body))}
			for typ != 'Z' {
				typ, body = b.recv()
				got = append(got, fmt.Sprintf("%c %s", typ, describeMsg(typ, body)))
			}
			t.Errorf("%T of %s, which this client never prepared: got %q, want ErrorResponse 26000", msgs[0], name, got)
			continue
		}
		var e pgproto3.ErrorResponse
		if err := e.Decode(body); err != nil || e.Code != "26000" {
			t.Errorf("%T of %s: got error %s %s, want 26000", msgs[0], name, e.Code, e.Message)
		}
		b.expect("Z")
	}
}

// txExpectError reads an ErrorResponse with SQLSTATE code and the ReadyForQuery after it.
func txExpectError(t testing.TB, rc *rawClient, code string) {
	t.Helper()
	bodies := rc.expect("EZ")
	var e pgproto3.ErrorResponse
	if err := e.Decode(bodies[0]); err != nil {
		t.Fatal(err)
	}
	if e.Code != code {
		t.Fatalf("got error %s (%s), want %s", e.Code, e.Message, code)
	}
	if st := bodies[1]; len(st) != 1 || st[0] != 'I' {
		t.Fatalf("ReadyForQuery status %q after the error, want I", st)
	}
}

// txDataRow returns the first column of a DataRow as text.
func txDataRow(t testing.TB, body []byte) string {
	t.Helper()
	var d pgproto3.DataRow
	if err := d.Decode(body); err != nil {
		t.Fatal(err)
	}
	if len(d.Values) == 0 {
		t.Fatal("empty DataRow")
	}
	return string(d.Values[0])
}

// txSimpleRaw runs a one-row, one-column simple query on a raw client.
func txSimpleRaw(t testing.TB, rc *rawClient, sql string) string {
	t.Helper()
	rc.send(&pgproto3.Query{String: sql})
	bodies := rc.expect("TDCZ")
	return txDataRow(t, bodies[1])
}

// --- 5. eviction of server-side statements ------------------------------------------------

func TestTxModeEviction(t *testing.T) {
	c := cluster(t)
	const maxStmts = 3
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.PoolSize = 1
		cfg.MaxPreparedStatements = maxStmts
	})
	ctx := testCtx(t)

	countOnServer := func(pc *pgconn.PgConn) (int, string) {
		t.Helper()
		rows, err := txSimple(ctx, pc, "select count(*), coalesce(string_agg(name, ',' order by name), '') from pg_prepared_statements")
		if err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.Atoi(rows[0][0])
		return n, rows[0][1]
	}

	t.Run("pgconn", func(t *testing.T) {
		pc := txPgconn(t, p)
		for k := range 10 {
			if _, err := pc.Prepare(ctx, fmt.Sprintf("e%d", k), fmt.Sprintf("select $1::int4 + %d", 100*k), nil); err != nil {
				t.Fatalf("prepare e%d: %v", k, err)
			}
		}
		if n, names := countOnServer(pc); n > maxStmts {
			t.Errorf("after 10 prepares: %d statements on the server (%s), want <= %d", n, names, maxStmts)
		}
		for i := range 50 {
			k := i % 10
			rows, err := txExecPrepared(ctx, pc, fmt.Sprintf("e%d", k), strconv.Itoa(i))
			if err != nil {
				t.Fatalf("e%d(%d): %v", k, i, err)
			}
			if got := txOne(rows); got != strconv.Itoa(i+100*k) {
				t.Fatalf("e%d(%d) = %s, want %d", k, i, got, i+100*k)
			}
		}
		n, names := countOnServer(pc)
		if n > maxStmts || n == 0 {
			t.Errorf("after round-robin: %d statements on the server (%s), want 1..%d", n, names, maxStmts)
		}
		for _, name := range strings.Split(names, ",") {
			if name != "" && !strings.HasPrefix(name, txmode.ServerStmtPrefix) {
				t.Errorf("server-side statement %q is not one of the proxy's", name)
			}
		}
	})

	t.Run("pgx_cache_statement", func(t *testing.T) {
		conn := p.connect(t, pgx.QueryExecModeCacheStatement)
		for i := range 50 {
			k := i % 10
			var got int64
			if err := conn.QueryRow(ctx, fmt.Sprintf("select $1::int8 * %d", k+2), int64(i)).Scan(&got); err != nil {
				t.Fatalf("query %d: %v", i, err)
			}
			if got != int64(i*(k+2)) {
				t.Fatalf("query %d: got %d, want %d", i, got, i*(k+2))
			}
		}
		var n int64
		if err := conn.QueryRow(ctx, "select count(*) from pg_prepared_statements", pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > maxStmts {
			t.Errorf("%d statements on the server, want <= %d", n, maxStmts)
		}
	})
}

// --- 6. pinning ---------------------------------------------------------------------------

type txPinCase struct {
	reason string
	setup  []string
	// check returns a query and its expected text result for later transaction i.
	check func(i int) (sql, want string)
	// leaked is a query returning true when the pinned client's state is visible; "" when
	// the state cannot be observed.
	leaked string
	// quitInTx makes the pinned client disconnect inside an open transaction.
	quitInTx bool
}

func TestTxModePinning(t *testing.T) {
	c := cluster(t)
	admin := direct(t, c)
	const role = "txmode_pin_role"
	mustExec(t, admin, fmt.Sprintf("do $$ begin create role %s; exception when duplicate_object then null; end $$", role))
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "drop role if exists "+role) })

	cases := []txPinCase{
		{
			reason: "listen",
			setup:  []string{"listen txmode_pin_chan"},
			check: func(int) (string, string) {
				return "select string_agg(c, ',') from pg_listening_channels() c", "txmode_pin_chan"
			},
			leaked: "select exists(select 1 from pg_listening_channels() c where c = 'txmode_pin_chan')",
		},
		{
			reason: "advisory_lock",
			setup:  []string{"select pg_advisory_lock(727001)"},
			check: func(int) (string, string) {
				return "select count(*)::text from pg_locks where locktype = 'advisory' and objid = 727001 and granted and pid = pg_backend_pid()", "1"
			},
			leaked: "select exists(select 1 from pg_locks where locktype = 'advisory' and objid = 727001 and pid = pg_backend_pid())",
		},
		{
			reason: "temp_table",
			setup:  []string{"create temp table txmode_pin_tmp (i int)", "insert into txmode_pin_tmp values (5)"},
			check: func(i int) (string, string) {
				return fmt.Sprintf("select (sum(i) + %d)::text from txmode_pin_tmp", i), strconv.Itoa(5 + i)
			},
			leaked:   "select to_regclass('pg_temp.txmode_pin_tmp') is not null",
			quitInTx: true,
		},
		{
			reason: "with_hold_cursor",
			setup:  []string{"begin", "declare txmode_pin_cur cursor with hold for select g::text from generate_series(1, 100) g", "commit"},
			check: func(i int) (string, string) {
				return "fetch next from txmode_pin_cur", strconv.Itoa(i + 1)
			},
			leaked: "select exists(select 1 from pg_cursors where name = 'txmode_pin_cur')",
		},
		{
			reason: "sql_prepare",
			setup:  []string{"prepare txmode_pin_q (int) as select ($1 * 3)::text"},
			check: func(i int) (string, string) {
				return fmt.Sprintf("execute txmode_pin_q(%d)", i), strconv.Itoa(3 * i)
			},
			leaked: "select exists(select 1 from pg_prepared_statements where name = 'txmode_pin_q')",
		},
		{
			reason:   "set_role",
			setup:    []string{"set role " + role},
			check:    func(int) (string, string) { return "select current_user::text", role },
			leaked:   "select current_user <> session_user",
			quitInTx: true,
		},
		{
			reason: "load",
			setup:  []string{"load 'plpgsql'"},
			check:  func(i int) (string, string) { return fmt.Sprintf("select '%d'", i), strconv.Itoa(i) },
		},
		{
			// A parameter whose name the classifier cannot read cannot be replayed.
			reason: "set_untracked",
			setup:  []string{"select set_config('enable_' || 'hashjoin', 'off', false)"},
			check: func(int) (string, string) {
				return "select current_setting('enable_hashjoin')", "off"
			},
			leaked: "select current_setting('enable_hashjoin') = 'off'",
		},
	}
	for _, pcase := range cases {
		t.Run(pcase.reason, func(t *testing.T) { txPinOne(t, pcase) })
	}
}

func txPinOne(t *testing.T, pcase txPinCase) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 2 })
	ctx := testCtx(t)

	// A busy client that records the servers it gets once the pin is in place.
	busy := connectWith(t, p, pgx.QueryExecModeSimpleProtocol, nil)
	var pinnedPID atomic.Int64
	busyCtx, stopBusy := context.WithCancel(ctx)
	busyErr := make(chan error, 1)
	go func() {
		var err error
		defer func() { busyErr <- err }()
		for busyCtx.Err() == nil {
			armed := pinnedPID.Load()
			var pid int64
			if qerr := busy.QueryRow(busyCtx, "select pg_backend_pid()::int8").Scan(&pid); qerr != nil {
				if busyCtx.Err() == nil {
					err = qerr
				}
				return
			}
			if armed != 0 && pid == armed {
				err = fmt.Errorf("another client ran on the pinned server (pid %d)", pid)
				return
			}
		}
	}()

	pinned := connectWith(t, p, pgx.QueryExecModeSimpleProtocol, nil)
	// A transaction or two before the pin: the client is still free to move.
	_ = queryInt(t, pinned, "select 1")
	for _, sql := range pcase.setup {
		if _, err := pinned.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	pid := queryInt(t, pinned, "select pg_backend_pid()")
	pinnedPID.Store(pid)
	if got := txPins(t, p, pcase.reason); got != 1 {
		t.Errorf(`pgsidecar_client_pins_total{reason=%q} = %v, want 1`, pcase.reason, got)
	}
	if pcase.reason == "listen" {
		mustExec(t, direct(t, c), "notify txmode_pin_chan, 'ping'")
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		n, err := pinned.WaitForNotification(wctx)
		cancel()
		if err != nil {
			t.Fatalf("pinned LISTEN client: no notification: %v", err)
		}
		if n.Channel != "txmode_pin_chan" || n.Payload != "ping" {
			t.Fatalf("notification %q %q, want txmode_pin_chan ping", n.Channel, n.Payload)
		}
	}
	for i := range 20 {
		if i%2 == 1 {
			mustExec(t, pinned, "begin")
		}
		if got := queryInt(t, pinned, "select pg_backend_pid()"); got != pid {
			t.Fatalf("transaction %d after the pin ran on pid %d, want %d", i, got, pid)
		}
		sql, want := pcase.check(i)
		var got string
		if err := pinned.QueryRow(ctx, sql).Scan(&got); err != nil {
			t.Fatalf("transaction %d: %s: %v", i, sql, err)
		}
		if got != want {
			t.Fatalf("transaction %d: %s = %q, want %q", i, sql, got, want)
		}
		if i%2 == 1 {
			mustExec(t, pinned, "commit")
		}
	}
	if got := txPins(t, p, pcase.reason); got != 1 {
		t.Errorf(`after 20 transactions: pgsidecar_client_pins_total{reason=%q} = %v, want 1`, pcase.reason, got)
	}
	stopBusy()
	if err := <-busyErr; err != nil {
		t.Error(err)
	}
	_ = busy.Close(ctx)
	if pcase.quitInTx {
		mustExec(t, pinned, "begin")
		mustExec(t, pinned, "select 1")
	}
	if err := pinned.Close(ctx); err != nil {
		t.Fatal(err)
	}
	waitServersReleased(t, p)
	if pcase.leaked == "" {
		return
	}

	// Two new clients, each in a transaction, hold every server of the pool between them:
	// the pinned client's state must be on neither.
	var fresh [2]*pgx.Conn
	var pids [2]int64
	for k := range fresh {
		fresh[k] = connectWith(t, p, pgx.QueryExecModeSimpleProtocol, nil)
		mustExec(t, fresh[k], "begin")
		pids[k] = queryInt(t, fresh[k], "select pg_backend_pid()")
	}
	if pids[0] == pids[1] {
		t.Fatalf("two open transactions share pid %d", pids[0])
	}
	for k, conn := range fresh {
		var leaked bool
		if err := conn.QueryRow(ctx, pcase.leaked).Scan(&leaked); err != nil {
			t.Fatalf("%s: %v", pcase.leaked, err)
		}
		if leaked {
			reused := ""
			if pids[k] == pid {
				reused = " (the pinned client's own server, handed on after it disconnected)"
			}
			t.Errorf("%s state of a disconnected pinned client is visible to a new client on pid %d%s: %s is true",
				pcase.reason, pids[k], reused, pcase.leaked)
		}
		mustExec(t, conn, "commit")
	}
}

// --- 7. DISCARD ALL / DEALLOCATE --------------------------------------------------------

func TestTxModeDiscard(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 1 })
	ctx := testCtx(t)
	for _, cmd := range []string{"discard all", "deallocate all", "DEALLOCATE PREPARE ALL"} {
		t.Run(strings.ReplaceAll(cmd, " ", "_"), func(t *testing.T) {
			a, b := txPgconn(t, p), txPgconn(t, p)
			if _, err := a.Prepare(ctx, "d1", "select $1::int4 + 5", nil); err != nil {
				t.Fatal(err)
			}
			// Another client's statement with the same text shares the server-side one.
			if _, err := b.Prepare(ctx, "other", "select $1::int4 + 5", nil); err != nil {
				t.Fatal(err)
			}
			if rows, err := txExecPrepared(ctx, a, "d1", "1"); err != nil || txOne(rows) != "6" {
				t.Fatalf("d1(1) = %v, %v; want 6", rows, err)
			}
			if _, err := txSimple(ctx, a, cmd); err != nil {
				t.Fatalf("%s: %v", cmd, err)
			}
			_, err := txExecPrepared(ctx, a, "d1", "1")
			wantPgError(t, err, "26000")
			// The name is free again.
			if _, err := a.Prepare(ctx, "d1", "select $1::int4 * 7", nil); err != nil {
				t.Fatalf("re-prepare d1 after %s: %v", cmd, err)
			}
			if rows, err := txExecPrepared(ctx, a, "d1", "3"); err != nil || txOne(rows) != "21" {
				t.Fatalf("new d1(3) = %v, %v; want 21", rows, err)
			}
			// The other client's statement survives (pool size 1: the same server).
			if rows, err := txExecPrepared(ctx, b, "other", "2"); err != nil || txOne(rows) != "7" {
				t.Fatalf("other client's statement after %s: %v, %v; want 7", cmd, rows, err)
			}
		})
	}
	t.Run("deallocate_name", func(t *testing.T) {
		a := txPgconn(t, p)
		if _, err := a.Prepare(ctx, "d2", "select $1::int4 - 1", nil); err != nil {
			t.Fatal(err)
		}
		if rows, err := txExecPrepared(ctx, a, "d2", "1"); err != nil || txOne(rows) != "0" {
			t.Fatalf("d2(1) = %v, %v; want 0", rows, err)
		}
		// PostgreSQL deallocates a protocol-level statement by SQL too.
		if _, err := txSimple(ctx, a, "deallocate d2"); err != nil {
			t.Errorf("deallocate d2 (a statement the client prepared with Parse): %v", err)
		}
		_, err := txExecPrepared(ctx, a, "d2", "1")
		wantPgError(t, err, "26000")
	})
}

// --- 8. Describe after a move -------------------------------------------------------------

func TestTxModeDescribeAfterMove(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 2 })
	ctx := testCtx(t)
	pc := txPgconn(t, p)
	const sql = "select $1::int4 as a, $2::text as b, now() as c, $1::int8 * 2 as d"
	sd, err := pc.Prepare(ctx, "dsc", sql, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkDesc := func(where string, params []uint32, fields []pgconn.FieldDescription) {
		t.Helper()
		wantParams := []uint32{23, 25}
		wantFields := []struct {
			name string
			oid  uint32
		}{{"a", 23}, {"b", 25}, {"c", 1184}, {"d", 20}}
		if fmt.Sprint(params) != fmt.Sprint(wantParams) {
			t.Fatalf("%s: parameter OIDs %v, want %v", where, params, wantParams)
		}
		if len(fields) != len(wantFields) {
			t.Fatalf("%s: %d fields, want %d", where, len(fields), len(wantFields))
		}
		for i, f := range fields {
			if f.Name != wantFields[i].name || f.DataTypeOID != wantFields[i].oid {
				t.Fatalf("%s: field %d is %s (oid %d), want %s (oid %d)", where, i, f.Name, f.DataTypeOID, wantFields[i].name, wantFields[i].oid)
			}
		}
	}
	checkDesc("Prepare", sd.ParamOIDs, sd.Fields)
	if _, err := pc.Prepare(ctx, "pid", "select pg_backend_pid()", nil); err != nil {
		t.Fatal(err)
	}
	// The raw protocol from here on: Describe alone, as a driver does to learn a statement's
	// shape, followed by the statement's execution, in one transaction.
	hj := txHijack(t, pc)
	stop := txBusy(t, p, 6)
	pids := map[string]bool{}
	for i := range 200 {
		hj.send(&pgproto3.Describe{ObjectType: 'S', Name: "dsc"},
			&pgproto3.Bind{PreparedStatement: "dsc", Parameters: [][]byte{[]byte(strconv.Itoa(i)), []byte("x")}}, &pgproto3.Execute{},
			&pgproto3.Bind{PreparedStatement: "pid"}, &pgproto3.Execute{}, &pgproto3.Sync{})
		bodies := hj.expect("tT2DC2DCZ")
		var pd pgproto3.ParameterDescription
		var rd pgproto3.RowDescription
		if err := pd.Decode(bodies[0]); err != nil {
			t.Fatal(err)
		}
		if err := rd.Decode(bodies[1]); err != nil {
			t.Fatal(err)
		}
		fields := make([]pgconn.FieldDescription, len(rd.Fields))
		for k, f := range rd.Fields {
			fields[k] = pgconn.FieldDescription{Name: string(f.Name), DataTypeOID: f.DataTypeOID}
		}
		checkDesc(fmt.Sprintf("Describe %d", i), pd.ParameterOIDs, fields)
		var row pgproto3.DataRow
		if err := row.Decode(bodies[3]); err != nil {
			t.Fatal(err)
		}
		if len(row.Values) != 4 || string(row.Values[0]) != strconv.Itoa(i) || string(row.Values[1]) != "x" || string(row.Values[3]) != strconv.Itoa(2*i) {
			t.Fatalf("execution %d: row %q", i, row.Values)
		}
		pids[txDataRow(t, bodies[6])] = true
	}
	stop()
	if len(pids) < 2 {
		t.Errorf("200 transactions ran on %d server(s), want at least 2", len(pids))
	}
}

// txHijack turns an idle pgconn connection into a raw client.
func txHijack(t testing.TB, pc *pgconn.PgConn) *rawClient {
	t.Helper()
	hc, err := pc.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hc.Conn.Close() })
	rc := &rawClient{t: t, conn: hc.Conn, pid: hc.PID, key: hc.SecretKey}
	rc.r = bufio.NewReaderSize(hc.Conn, 64<<10)
	return rc
}

// --- 9. cancel after moves ----------------------------------------------------------------

func TestTxModeCancelAfterMoves(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) { cfg.PoolSize = 2 })
	ctx := testCtx(t)
	admin := direct(t, c)
	conn := p.connect(t, pgx.QueryExecModeExec)
	stop := txBusy(t, p, 4)
	for round := range 3 {
		pids := map[int64]bool{}
		for range 10 {
			pids[queryInt(t, conn, "select pg_backend_pid()")] = true
		}
		marker := fmt.Sprintf("txmode_cancel_%d", round)
		done := make(chan error, 1)
		go func() {
			_, err := conn.Exec(ctx, fmt.Sprintf("select pg_sleep(10) /* %s */", marker))
			done <- err
		}()
		waitRunning(t, admin, marker)
		if err := conn.PgConn().CancelRequest(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			wantPgError(t, err, "57014")
		case <-time.After(3 * time.Second):
			t.Fatalf("round %d (after transactions on pids %v): query still running 3s after the cancel", round, pids)
		}
		if n := queryInt(t, conn, "select 11"); n != 11 {
			t.Fatalf("after cancel: %d", n)
		}
	}
	// The busy clients' queries were never cancelled (stop fails the test if one was).
	stop()
	waitServersReleased(t, p)
}

// --- 10. session mode ---------------------------------------------------------------------

func TestTxModeSessionModeFeatures(t *testing.T) {
	c := cluster(t)
	p := startProxy(t, c, func(cfg *config.Config) {
		cfg.PoolMode = config.PoolModeSession
		cfg.PoolSize = 3
	})
	ctx := testCtx(t)
	admin := direct(t, c)
	table := "txmode_session"
	mustExec(t, admin, fmt.Sprintf("drop table if exists %s; create table %s (id int, s text)", table, table))
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "drop table if exists "+table) })

	t.Run("listen_notify", func(t *testing.T) {
		l := p.connect(t, pgx.QueryExecModeCacheStatement)
		n := p.connect(t, pgx.QueryExecModeCacheStatement)
		mustExec(t, l, "listen txmode_sess_chan")
		for i := range 3 {
			mustExec(t, n, "select pg_notify('txmode_sess_chan', $1)", fmt.Sprintf("msg%d", i))
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			got, err := l.WaitForNotification(wctx)
			cancel()
			if err != nil {
				t.Fatalf("notification %d: %v", i, err)
			}
			if got.Channel != "txmode_sess_chan" || got.Payload != fmt.Sprintf("msg%d", i) || got.PID == 0 {
				t.Fatalf("notification %d: %+v", i, got)
			}
		}
	})
	t.Run("copy_from", func(t *testing.T) {
		conn := p.connect(t, pgx.QueryExecModeCacheStatement)
		rows := make([][]any, 500)
		for i := range rows {
			rows[i] = []any{int32(i), fmt.Sprintf("row %d", i)}
		}
		n, err := conn.CopyFrom(ctx, pgx.Identifier{table}, []string{"id", "s"}, pgx.CopyFromRows(rows))
		if err != nil {
			t.Fatal(err)
		}
		if n != 500 {
			t.Fatalf("CopyFrom copied %d rows, want 500", n)
		}
		var count, sum int64
		var s string
		if err := conn.QueryRow(ctx, fmt.Sprintf("select count(*), sum(id), max(s) filter (where id = 499) from %s", table)).Scan(&count, &sum, &s); err != nil {
			t.Fatal(err)
		}
		if count != 500 || sum != 499*500/2 || s != "row 499" {
			t.Fatalf("after CopyFrom: %d rows, sum %d, row 499 %q", count, sum, s)
		}
	})
	t.Run("batch", func(t *testing.T) {
		conn := p.connect(t, pgx.QueryExecModeCacheStatement)
		if _, err := conn.Prepare(ctx, "sq", "select $1::int4 * $1::int4"); err != nil {
			t.Fatal(err)
		}
		batch := &pgx.Batch{}
		var sq, cnt int64
		var txt string
		batch.Queue("sq", 12).QueryRow(func(r pgx.Row) error { return r.Scan(&sq) })
		batch.Queue("select upper($1::text)", "abc").QueryRow(func(r pgx.Row) error { return r.Scan(&txt) })
		batch.Queue(fmt.Sprintf("select count(*) from %s where id < $1", table), 10).QueryRow(func(r pgx.Row) error { return r.Scan(&cnt) })
		if err := conn.SendBatch(ctx, batch).Close(); err != nil {
			t.Fatal(err)
		}
		if sq != 144 || txt != "ABC" || cnt != 10 {
			t.Fatalf("batch: %d %q %d, want 144 ABC 10", sq, txt, cnt)
		}
	})
	t.Run("exec_modes", func(t *testing.T) {
		for _, m := range allExecModes {
			conn := p.connect(t, m)
			var pid1, pid2 int64
			for i := range 3 {
				var got int64
				var s string
				if err := conn.QueryRow(ctx, "select $1::int8 + 1, $2::text, pg_backend_pid()", int64(i), modeName(m)).Scan(&got, &s, &pid2); err != nil {
					t.Fatalf("%s: %v", m, err)
				}
				if got != int64(i+1) || s != modeName(m) {
					t.Fatalf("%s: got %d %q", m, got, s)
				}
				if i == 0 {
					pid1 = pid2
				} else if pid2 != pid1 {
					t.Fatalf("%s: session mode moved the client from pid %d to %d", m, pid1, pid2)
				}
			}
			_ = conn.Close(ctx)
		}
	})
}
