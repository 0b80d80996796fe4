package pgcluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ownerName is the system user that owns clusters when running as root.
const ownerName = "postgres"

// owner is the OS identity that runs initdb, pg_ctl and postgres.
type owner struct {
	cred *syscall.Credential // nil: run as the current user
	uid  int
	gids []int
	home string
}

// useraddMu serialises user creation within this process; concurrent
// processes are handled by retrying the lookup.
var useraddMu sync.Mutex

// lookupOwner returns the identity to run PostgreSQL as: the current user,
// or the postgres system user (created if missing) when running as root.
func lookupOwner() (*owner, error) {
	if os.Geteuid() != 0 {
		return &owner{uid: os.Geteuid(), gids: currentGroups()}, nil
	}
	u, err := ensureSystemUser()
	if err != nil {
		return nil, err
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return nil, fmt.Errorf("pgcluster: user %s: uid %q: %w", ownerName, u.Uid, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, fmt.Errorf("pgcluster: user %s: gid %q: %w", ownerName, u.Gid, err)
	}
	gids := []int{gid}
	groups := []uint32{uint32(gid)}
	if ids, err := u.GroupIds(); err == nil {
		for _, s := range ids {
			if g, err := strconv.Atoi(s); err == nil && g != gid {
				gids = append(gids, g)
				groups = append(groups, uint32(g))
			}
		}
	}
	return &owner{
		cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups},
		uid:  uid,
		gids: gids,
		home: u.HomeDir,
	}, nil
}

// ensureSystemUser looks up the postgres user and creates it if missing.
func ensureSystemUser() (*user.User, error) {
	if u, err := user.Lookup(ownerName); err == nil {
		return u, nil
	}
	useraddMu.Lock()
	defer useraddMu.Unlock()
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		if u, err := user.Lookup(ownerName); err == nil {
			return u, nil
		}
		// Another process may be adding the user at the same time: useradd
		// then fails with "already exists" or "cannot lock", and the next
		// lookup succeeds.
		out, err := exec.Command("useradd", "--system", "--user-group",
			"--home-dir", "/var/lib/postgresql", "--shell", "/bin/bash", ownerName).CombinedOutput()
		if err == nil {
			continue
		}
		lastErr = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
		time.Sleep(time.Duration(attempt+1) * 100 * time.Millisecond)
	}
	if u, err := user.Lookup(ownerName); err == nil {
		return u, nil
	}
	return nil, fmt.Errorf("pgcluster: running as root and cannot create system user %q: %w", ownerName, lastErr)
}

func currentGroups() []int {
	gids, _ := os.Getgroups()
	return append(gids, os.Getegid())
}

// command builds a command that runs as the owner in dir, with an
// environment free of libpq variables (PGHOST, PGPORT, ...) that would
// redirect the tools.
func (o *owner) command(name, dir string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	env := make([]string, 0, len(os.Environ()))
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || (o.cred != nil && (strings.HasPrefix(kv, "HOME=") || strings.HasPrefix(kv, "USER=") || strings.HasPrefix(kv, "LOGNAME="))) {
			continue
		}
		env = append(env, kv)
	}
	if o.cred != nil {
		env = append(env, "HOME="+o.home, "USER="+ownerName, "LOGNAME="+ownerName)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: o.cred}
	}
	cmd.Env = env
	return cmd
}

// chown gives path to the owner; a no-op when not running as root.
func (o *owner) chown(path string) error {
	if o.cred == nil {
		return nil
	}
	return os.Chown(path, int(o.cred.Uid), int(o.cred.Gid))
}

// makeClusterDir creates the cluster's private directory, owned by o and
// reachable by o: every parent must be searchable by o, or the server could
// not open its data directory or socket.
func (o *owner) makeClusterDir() (string, error) {
	var errs []error
	for _, base := range candidateBases() {
		if err := o.checkTraversable(base); err != nil {
			errs = append(errs, err)
			continue
		}
		dir, err := os.MkdirTemp(base, "pgcluster-")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("pgcluster: %w", err)
		}
		if err := o.chown(dir); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("pgcluster: %w", err)
		}
		return dir, nil
	}
	return "", fmt.Errorf("pgcluster: no usable temporary directory: %w", errors.Join(errs...))
}

// maxSocketDir keeps "<dir>/.s.PGSQL.<port>" within sun_path (108 bytes).
const maxSocketDir = 80

// candidateBases lists where cluster directories may go: os.TempDir(), then
// /tmp when the former is unusable (too long for a socket path, or private).
func candidateBases() []string {
	bases := []string{os.TempDir()}
	if bases[0] != "/tmp" {
		bases = append(bases, "/tmp")
	}
	return bases
}

// checkTraversable reports an error unless o can search dir and all of its
// parents, and dir leaves room for a Unix socket path.
func (o *owner) checkTraversable(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if len(abs)+len("/pgcluster-0123456789") > maxSocketDir {
		return fmt.Errorf("%s: path too long for a Unix socket", abs)
	}
	for p := abs; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if !o.canSearch(fi) {
			return fmt.Errorf("%s: not searchable by uid %d (mode %v)", p, o.uid, fi.Mode().Perm())
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

func (o *owner) canSearch(fi os.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return true
	}
	mode := fi.Mode().Perm()
	if int(st.Uid) == o.uid {
		return mode&0o100 != 0
	}
	for _, g := range o.gids {
		if int(st.Gid) == g {
			return mode&0o010 != 0
		}
	}
	return mode&0o001 != 0
}
