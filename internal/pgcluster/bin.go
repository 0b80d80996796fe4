package pgcluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// binEnv names the environment variable that overrides the binary directory.
const binEnv = "PGSIDECAR_PG_BIN"

// debianGlob matches the server binaries of Debian's postgresql packages.
const debianGlob = "/usr/lib/postgresql/*/bin/initdb"

// serverBinaries must all be present in the binary directory.
var serverBinaries = []string{"initdb", "pg_ctl", "postgres"}

// Available reports whether PostgreSQL server binaries are found. It returns
// nil when they are and otherwise an error saying what is missing and where
// it looked.
func Available() error {
	_, err := findBinDir()
	return err
}

// findBinDir returns the directory holding initdb, pg_ctl and postgres.
func findBinDir() (string, error) {
	if dir := os.Getenv(binEnv); dir != "" {
		if err := checkBinDir(dir); err != nil {
			return "", fmt.Errorf("pgcluster: %s=%s: %w", binEnv, dir, err)
		}
		return dir, nil
	}
	if dir := highestDebianBinDir(); dir != "" {
		if err := checkBinDir(dir); err != nil {
			return "", fmt.Errorf("pgcluster: %s: %w", dir, err)
		}
		return dir, nil
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		dir := filepath.Dir(p)
		if err := checkBinDir(dir); err == nil {
			return dir, nil
		}
	}
	return "", fmt.Errorf("pgcluster: PostgreSQL server binaries (%s) not found in %s, %s or $PATH; "+
		"install Debian's postgresql package (in this repository, as root: make deps) or set %s",
		strings.Join(serverBinaries, ", "), binEnv, filepath.Dir(debianGlob), binEnv)
}

// checkBinDir checks that dir holds every server binary as an executable.
func checkBinDir(dir string) error {
	var missing []string
	for _, name := range serverBinaries {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s", strings.Join(missing, ", "))
	}
	return nil
}

// highestDebianBinDir returns the bin directory of the highest installed
// Debian PostgreSQL version, or "" if there is none.
func highestDebianBinDir() string {
	matches, _ := filepath.Glob(debianGlob)
	best, bestVer := "", []int(nil)
	for _, m := range matches {
		bin := filepath.Dir(m)
		ver, err := parseVersion(filepath.Base(filepath.Dir(bin)))
		if err != nil {
			continue
		}
		if best == "" || compareVersions(ver, bestVer) > 0 {
			best, bestVer = bin, ver
		}
	}
	return best
}

// parseVersion parses "15" or "9.6" into its numeric parts.
func parseVersion(s string) ([]int, error) {
	var v []int
	for _, part := range strings.Split(s, ".") {
		n, err := strconv.Atoi(part)
		if err != nil {
			return nil, errors.New("not a version")
		}
		v = append(v, n)
	}
	return v, nil
}

// compareVersions returns -1, 0 or +1 like strings.Compare.
func compareVersions(a, b []int) int {
	for i := 0; i < len(a) || i < len(b); i++ {
		var x, y int
		if i < len(a) {
			x = a[i]
		}
		if i < len(b) {
			y = b[i]
		}
		switch {
		case x < y:
			return -1
		case x > y:
			return 1
		}
	}
	return 0
}
