package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Options configures a cluster started by [Start]. The zero value is a
// trust-authenticated cluster without replication.
type Options struct {
	// Auth is the pg_hba method for host (TCP) connections: "trust"
	// (default when empty), "scram-sha-256", "md5" or "password". Local
	// (Unix socket) connections always use trust. With "md5" the
	// superuser's password is stored as an MD5 hash and
	// password_encryption defaults to md5, so the md5 exchange is really
	// used.
	Auth string
	// Password is the password of the superuser "postgres". Required when
	// Auth is not trust; empty means no password.
	Password string
	// Settings are extra postgresql.conf settings, e.g.
	// {"max_connections": "200"}; they override pgcluster's defaults (fsync,
	// synchronous_commit and full_page_writes off, max_connections 200).
	// port, listen_addresses and unix_socket_directories are managed by
	// pgcluster and rejected here. Nil means none.
	Settings map[string]string
	// Logger receives debug logs of the commands run and an info log when
	// the cluster is up. Nil discards them.
	Logger *slog.Logger
	// Replication adds pg_hba entries that allow replication connections
	// (local: trust; host: Auth), for pg_basebackup and standbys.
	Replication bool
}

// Cluster is a running (or stopped) throwaway PostgreSQL cluster. Its
// methods are safe for concurrent use. A Cluster must be closed with
// [Cluster.Close].
type Cluster struct {
	binDir   string
	dir      string // private temp dir: socket dir, log file, data/ below
	dataDir  string
	logFile  string
	port     int
	password string
	owner    *owner
	logger   *slog.Logger

	mu     sync.Mutex // serialises start/stop/close
	closed bool
}

// Timeouts for pg_ctl (seconds, passed as -t) and for Close.
const (
	pgctlTimeout = 60
	closeTimeout = 60 * time.Second
	startTries   = 3
)

// reservedSettings are managed by pgcluster and may not appear in Options.Settings.
var reservedSettings = []string{"port", "listen_addresses", "unix_socket_directories"}

// Start creates and starts a new cluster: initdb in a fresh temporary
// directory, a free port on 127.0.0.1, and pg_ctl start -w. It returns once
// the server accepts connections. On error nothing is left behind.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	auth := opts.Auth
	if auth == "" {
		auth = "trust"
	}
	switch auth {
	case "trust":
	case "scram-sha-256", "md5", "password":
		if opts.Password == "" {
			return nil, fmt.Errorf("pgcluster: auth %q needs a password", auth)
		}
	default:
		return nil, fmt.Errorf("pgcluster: unsupported auth method %q", auth)
	}
	for _, k := range reservedSettings {
		if _, ok := opts.Settings[k]; ok {
			return nil, fmt.Errorf("pgcluster: setting %q is managed by pgcluster", k)
		}
	}
	binDir, err := findBinDir()
	if err != nil {
		return nil, err
	}
	own, err := lookupOwner()
	if err != nil {
		return nil, err
	}
	dir, err := own.makeClusterDir()
	if err != nil {
		return nil, err
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c := &Cluster{
		binDir:   binDir,
		dir:      dir,
		dataDir:  filepath.Join(dir, "data"),
		logFile:  filepath.Join(dir, "server.log"),
		password: opts.Password,
		owner:    own,
		logger:   logger.With("pgcluster_dir", dir),
	}
	defer func() {
		if err != nil {
			if cerr := c.Close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}
	}()

	if err := c.initdb(ctx, auth); err != nil {
		return nil, err
	}
	if err := c.writeHBA(auth, opts.Replication); err != nil {
		return nil, err
	}
	settings := c.settings(auth, opts)
	for attempt := 1; ; attempt++ {
		c.port, err = freePort()
		if err != nil {
			return nil, err
		}
		settings["port"] = strconv.Itoa(c.port)
		if err := c.writeConf(settings); err != nil {
			return nil, err
		}
		offset := c.logSize()
		err = c.pgctl(ctx, "start", "-w", "-t", strconv.Itoa(pgctlTimeout), "-l", c.logFile)
		if err == nil {
			break
		}
		if attempt >= startTries || !portClash(c.logSince(offset)) {
			return nil, err
		}
		c.logger.Debug("pgcluster: port taken, retrying", "port", c.port, "attempt", attempt)
	}
	if err := c.waitReady(ctx); err != nil {
		return nil, err
	}
	if auth == "md5" {
		// initdb stored a SCRAM verifier; md5 auth would silently use SCRAM.
		if err := c.Exec(ctx, "SET password_encryption = 'md5'; ALTER ROLE postgres PASSWORD "+quoteLiteral(c.password)); err != nil {
			return nil, err
		}
	}
	c.logger.Info("pgcluster: cluster started", "port", c.port, "bin", binDir)
	return c, nil
}

// Host returns the TCP host the server listens on, "127.0.0.1".
func (c *Cluster) Host() string { return "127.0.0.1" }

// Port returns the TCP port; it stays the same across restarts.
func (c *Cluster) Port() int { return c.port }

// BinDir returns the directory of the PostgreSQL binaries in use.
func (c *Cluster) BinDir() string { return c.binDir }

// DataDir returns the cluster's data directory. When running as root it is
// owned by the postgres user.
func (c *Cluster) DataDir() string { return c.dataDir }

// SocketDir returns the directory holding the server's Unix socket.
func (c *Cluster) SocketDir() string { return c.dir }

// DSN returns a URL for the superuser "postgres" over TCP, e.g.
// "postgres://postgres:pw@127.0.0.1:5433/db?sslmode=disable". The password
// is included only if set. An empty database means "postgres".
func (c *Cluster) DSN(database string) string {
	if database == "" {
		database = "postgres"
	}
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     net.JoinHostPort(c.Host(), strconv.Itoa(c.port)),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	if c.password != "" {
		u.User = url.UserPassword("postgres", c.password)
	}
	return u.String()
}

// adminDSN connects as superuser over the Unix socket, where auth is trust.
func (c *Cluster) adminDSN() string {
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable connect_timeout=10",
		quoteKV(c.dir), c.port)
}

// Exec runs sql (one or more statements, simple protocol) as superuser on
// database postgres, over the Unix socket.
func (c *Cluster) Exec(ctx context.Context, sql string) error {
	conn, err := pgconn.Connect(ctx, c.adminDSN())
	if err != nil {
		return fmt.Errorf("pgcluster: exec: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
		return fmt.Errorf("pgcluster: exec: %w", err)
	}
	return nil
}

// CreateDatabase creates a database owned by postgres.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) error {
	return c.Exec(ctx, "CREATE DATABASE "+quoteIdent(name))
}

// Restart runs pg_ctl restart with shutdown mode "fast", "immediate" or
// "smart" (empty means fast) and waits until the server is up again on the
// same port. Note: synchronous_commit is off by default, so transactions
// committed in the last few hundred milliseconds before an immediate
// restart can be lost; set Settings["synchronous_commit"] = "on" when a test
// depends on them.
func (c *Cluster) Restart(ctx context.Context, mode string) error {
	if mode == "" {
		mode = "fast"
	}
	switch mode {
	case "fast", "immediate", "smart":
	default:
		return fmt.Errorf("pgcluster: restart: unknown mode %q", mode)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("pgcluster: restart: cluster closed")
	}
	if err := c.pgctl(ctx, "restart", "-w", "-m", mode, "-t", strconv.Itoa(pgctlTimeout), "-l", c.logFile); err != nil {
		return err
	}
	return c.waitReady(ctx)
}

// Stop shuts the server down (pg_ctl stop -m fast) and keeps the data. It is
// a no-op when the server is not running.
func (c *Cluster) Stop(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || !c.running() {
		return nil
	}
	return c.pgctl(ctx, "stop", "-w", "-m", "fast", "-t", strconv.Itoa(pgctlTimeout))
}

// StartAgain starts the server after [Cluster.Stop], on the same port, and
// waits until it accepts connections. It is a no-op when already running.
func (c *Cluster) StartAgain(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("pgcluster: start: cluster closed")
	}
	if c.running() {
		return nil
	}
	if err := c.pgctl(ctx, "start", "-w", "-t", strconv.Itoa(pgctlTimeout), "-l", c.logFile); err != nil {
		return err
	}
	return c.waitReady(ctx)
}

// Close stops the server (fast, then immediate, then SIGKILL) and removes
// the cluster directory. It is idempotent and does not depend on any
// caller's context, so it also works from a cleanup after a panic.
func (c *Cluster) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()

	var errs []error
	if c.running() {
		if err := c.pgctl(ctx, "stop", "-w", "-m", "fast", "-t", "20"); err != nil && c.running() {
			c.logger.Debug("pgcluster: fast stop failed, trying immediate", "err", err)
			_ = c.pgctl(ctx, "stop", "-w", "-m", "immediate", "-t", "10")
		}
		if pid := c.postmasterPID(); pid > 0 && processAlive(pid) {
			// The postmaster leads its own process group (pg_ctl calls
			// setsid), so this also kills its backends.
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			_ = syscall.Kill(pid, syscall.SIGKILL)
			deadline := time.Now().Add(5 * time.Second)
			for processAlive(pid) && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if processAlive(pid) {
				errs = append(errs, fmt.Errorf("pgcluster: close: postmaster %d still running", pid))
			}
		}
	}
	if err := os.RemoveAll(c.dir); err != nil {
		errs = append(errs, fmt.Errorf("pgcluster: close: %w", err))
	}
	return errors.Join(errs...)
}

// RunAsOwner runs a binary from BinDir (e.g. "pg_basebackup", "psql") as the
// cluster owner, in the cluster directory, and returns its combined output.
// libpq environment variables (PGHOST, ...) are removed; pass connection
// parameters as arguments. An absolute name is run as is.
func (c *Cluster) RunAsOwner(ctx context.Context, name string, args ...string) ([]byte, error) {
	path := name
	if !filepath.IsAbs(path) {
		path = filepath.Join(c.binDir, name)
	}
	return c.run(ctx, path, args...)
}

// run executes a command as the owner and returns its combined output; the
// error includes the output.
func (c *Cluster) run(ctx context.Context, path string, args ...string) ([]byte, error) {
	cmd := c.owner.command(path, c.dir, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.WaitDelay = 5 * time.Second
	c.logger.Debug("pgcluster: run", "cmd", filepath.Base(path), "args", args)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("pgcluster: %s: %w", filepath.Base(path), err)
	}
	stop := context.AfterFunc(ctx, func() { _ = cmd.Process.Kill() })
	err := cmd.Wait()
	stop()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return out.Bytes(), fmt.Errorf("pgcluster: %s %s: %w: %s", filepath.Base(path), strings.Join(args, " "), err,
			strings.TrimSpace(out.String()))
	}
	return out.Bytes(), nil
}

// pgctl runs pg_ctl on the data directory; errors carry the server log tail.
func (c *Cluster) pgctl(ctx context.Context, args ...string) error {
	args = append([]string{"-D", c.dataDir}, args...)
	if _, err := c.run(ctx, filepath.Join(c.binDir, "pg_ctl"), args...); err != nil {
		return fmt.Errorf("%w\n--- server log tail ---\n%s", err, c.logTail())
	}
	return nil
}

func (c *Cluster) initdb(ctx context.Context, auth string) error {
	args := []string{"-D", c.dataDir, "-U", "postgres", "--encoding=UTF8", "--locale=C",
		"--auth-local=trust", "--auth-host=" + auth, "--no-sync"}
	if c.password != "" {
		pwfile := filepath.Join(c.dir, "pwfile")
		if err := c.writeOwned(pwfile, c.password+"\n", 0o600); err != nil {
			return err
		}
		defer os.Remove(pwfile)
		args = append(args, "--pwfile="+pwfile)
	}
	_, err := c.run(ctx, filepath.Join(c.binDir, "initdb"), args...)
	return err
}

// writeHBA replaces initdb's pg_hba.conf with exactly what the options ask for.
func (c *Cluster) writeHBA(auth string, replication bool) error {
	var b strings.Builder
	b.WriteString("# Written by pgcluster.\n")
	b.WriteString("local all all trust\n")
	fmt.Fprintf(&b, "host all all 127.0.0.1/32 %s\n", auth)
	fmt.Fprintf(&b, "host all all ::1/128 %s\n", auth)
	if replication {
		b.WriteString("local replication all trust\n")
		fmt.Fprintf(&b, "host replication all 127.0.0.1/32 %s\n", auth)
		fmt.Fprintf(&b, "host replication all ::1/128 %s\n", auth)
	}
	return c.writeOwned(filepath.Join(c.dataDir, "pg_hba.conf"), b.String(), 0o600)
}

// settings merges pgcluster's defaults with opts.Settings (port is set later).
func (c *Cluster) settings(auth string, opts Options) map[string]string {
	s := map[string]string{
		"listen_addresses":        c.Host(),
		"unix_socket_directories": c.dir,
		"fsync":                   "off",
		"synchronous_commit":      "off",
		"full_page_writes":        "off",
		"max_connections":         "200",
	}
	if auth == "md5" {
		s["password_encryption"] = "md5"
	}
	if opts.Replication {
		s["wal_level"] = "replica"
		s["max_wal_senders"] = "10"
		s["max_replication_slots"] = "10"
		s["hot_standby"] = "on"
	}
	maps.Copy(s, opts.Settings)
	return s
}

// writeConf writes the settings to pgcluster.conf and includes it from
// postgresql.conf (once).
func (c *Cluster) writeConf(settings map[string]string) error {
	var b strings.Builder
	b.WriteString("# Written by pgcluster; rewritten on every start attempt.\n")
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		fmt.Fprintf(&b, "%s = %s\n", k, quoteLiteral(settings[k]))
	}
	if err := c.writeOwned(filepath.Join(c.dataDir, "pgcluster.conf"), b.String(), 0o600); err != nil {
		return err
	}
	main := filepath.Join(c.dataDir, "postgresql.conf")
	data, err := os.ReadFile(main)
	if err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	const include = "include 'pgcluster.conf'\n"
	if bytes.Contains(data, []byte(include)) {
		return nil
	}
	f, err := os.OpenFile(main, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	_, err = f.WriteString("\n" + include)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return nil
}

// writeOwned writes a file and gives it to the cluster owner.
func (c *Cluster) writeOwned(path, content string, perm os.FileMode) error {
	if err := os.WriteFile(path, []byte(content), perm); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	if err := c.owner.chown(path); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return nil
}

// waitReady pings the server until it answers or ctx ends. pg_ctl -w has
// already waited; this guards against a server that is "ready" but not yet
// accepting on the socket.
func (c *Cluster) waitReady(ctx context.Context) error {
	var err error
	for {
		var conn *pgconn.PgConn
		conn, err = pgconn.Connect(ctx, c.adminDSN())
		if err == nil {
			err = conn.Ping(ctx)
			conn.Close(context.WithoutCancel(ctx))
			if err == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgcluster: server not ready: %w (last error: %w)\n--- server log tail ---\n%s",
				ctx.Err(), err, c.logTail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// running reports whether a live postmaster owns the data directory.
func (c *Cluster) running() bool {
	pid := c.postmasterPID()
	return pid > 0 && processAlive(pid)
}

// postmasterPID reads the first line of postmaster.pid; 0 if absent.
func (c *Cluster) postmasterPID() int {
	data, err := os.ReadFile(filepath.Join(c.dataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}

// processAlive reports whether pid exists and is not a zombie. The
// postmaster is reparented to init, which may be slow to reap it (or never
// do so in a container without an init), so a zombie counts as dead.
func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		// Gone since the kill, or no procfs (then trust kill).
		_, noProc := os.Stat("/proc/self/stat")
		return noProc != nil
	}
	// Format: "pid (comm) state ..."; comm may contain spaces and parens.
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
		switch stat[i+2] {
		case 'Z', 'X':
			return false
		}
	}
	return true
}

func (c *Cluster) logSize() int64 {
	fi, err := os.Stat(c.logFile)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logSince returns the server log from offset on.
func (c *Cluster) logSince(offset int64) string {
	f, err := os.Open(c.logFile)
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return ""
	}
	data, _ := io.ReadAll(io.LimitReader(f, 1<<20))
	return string(data)
}

// logTail returns the last 30 lines of the server log.
func (c *Cluster) logTail() string {
	data, err := os.ReadFile(c.logFile)
	if err != nil {
		return "(no server log)"
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return strings.Join(lines, "\n")
}

func portClash(log string) bool {
	return strings.Contains(log, "could not bind") ||
		strings.Contains(log, "Address already in use") ||
		strings.Contains(log, "could not create any TCP/IP sockets")
}

// freePort asks the kernel for a free loopback port. Another process may
// take it before the server binds; Start retries in that case.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgcluster: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// quoteLiteral quotes s as an SQL / postgresql.conf string literal.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// quoteIdent quotes s as an SQL identifier.
func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// quoteKV quotes a libpq keyword/value connection-string value.
func quoteKV(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `'`, `\'`)
	return "'" + s + "'"
}
