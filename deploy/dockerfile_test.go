package deploy_test

import (
	"bufio"
	"context"
	"debug/elf"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"mvdan.cc/sh/v3/expand"
	"mvdan.cc/sh/v3/syntax"

	"github.com/pgsidecar/pgsidecar/config"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd  string // upper case: FROM, RUN, USER, ...
	args string
	line int
}

// stage is one FROM and the instructions up to the next.
type stage struct {
	image, name string
	body        []instruction
}

// parseDockerfile reads the subset of the Dockerfile syntax that deploy/Dockerfile uses:
// instructions, comment lines and backslash continuations (the default escape character).
// Heredocs and a changed escape character are not handled and make the checks below fail.
func parseDockerfile(t *testing.T, path string) []stage {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var stages []stage
	var cur strings.Builder
	start := 0
	flush := func() {
		text := strings.TrimSpace(cur.String())
		cur.Reset()
		if text == "" {
			return
		}
		cmd, args, _ := strings.Cut(text, " ")
		in := instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args), line: start}
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			st := stage{image: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.name = f[2]
			}
			stages = append(stages, st)
			return
		}
		if len(stages) == 0 {
			t.Fatalf("%s:%d: %s before the first FROM", path, in.line, in.cmd)
		}
		stages[len(stages)-1].body = append(stages[len(stages)-1].body, in)
	}
	for i, line := range strings.Split(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		// Docker drops comment lines, also in the middle of a continued instruction.
		if strings.HasPrefix(trimmed, "#") {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if cont, ok := strings.CutSuffix(trimmed, `\`); ok {
			cur.WriteString(cont + " ")
			continue
		}
		cur.WriteString(trimmed)
		flush()
	}
	flush()
	return stages
}

// goBuild is the `go build` command of a RUN instruction.
type goBuild struct {
	env  map[string]string // assignments before the command: CGO_ENABLED=0 ...
	args []string          // after "go build"
}

// findGoBuild returns the go build command of the stage, expanded as a shell would with env
// (the build arguments), and the line of its RUN instruction.
func findGoBuild(t *testing.T, st stage, env []string) (goBuild, int) {
	t.Helper()
	cfg := &expand.Config{Env: expand.ListEnviron(env...)}
	for _, in := range st.body {
		if in.cmd != "RUN" {
			continue
		}
		// RUN's own flags (--mount=..., --network=...) come before the shell command.
		script := in.args
		for strings.HasPrefix(script, "--") {
			_, rest, _ := strings.Cut(script, " ")
			script = strings.TrimSpace(rest)
		}
		file, err := syntax.NewParser().Parse(strings.NewReader(script), "RUN")
		if err != nil {
			t.Fatalf("Dockerfile:%d: RUN is not shell syntax: %v", in.line, err)
		}
		var found *syntax.CallExpr
		syntax.Walk(file, func(n syntax.Node) bool {
			call, ok := n.(*syntax.CallExpr)
			if ok && len(call.Args) >= 2 && call.Args[0].Lit() == "go" && call.Args[1].Lit() == "build" {
				found = call
			}
			return found == nil
		})
		if found == nil {
			continue
		}
		b := goBuild{env: map[string]string{}}
		for _, a := range found.Assigns {
			v := ""
			if a.Value != nil {
				if v, err = expand.Literal(cfg, a.Value); err != nil {
					t.Fatalf("Dockerfile:%d: %s: %v", in.line, a.Name.Value, err)
				}
			}
			b.env[a.Name.Value] = v
		}
		args, err := expand.Fields(cfg, found.Args[2:]...)
		if err != nil {
			t.Fatalf("Dockerfile:%d: %v", in.line, err)
		}
		b.args = args
		return b, in.line
	}
	t.Fatalf("no RUN with go build in the stage FROM %s", st.image)
	return goBuild{}, 0
}

// The image is what README promises: a static binary, run as a user that is not root, on the
// ports the binary listens on by default. No container runtime is needed: the build stage's
// go build runs here with the same flags.
func TestDockerfile(t *testing.T) {
	stages := parseDockerfile(t, "Dockerfile")
	if len(stages) < 2 {
		t.Fatalf("want a build stage and a final stage, got %d stages", len(stages))
	}
	final := stages[len(stages)-1]

	// The build stage: the one the final stage copies the binary from.
	var from, src, dst string
	for _, in := range final.body {
		if in.cmd == "COPY" && strings.HasPrefix(in.args, "--from=") {
			f := strings.Fields(in.args)
			if len(f) != 3 {
				t.Fatalf("Dockerfile:%d: COPY %s: want --from=STAGE SRC DST", in.line, in.args)
			}
			from, src, dst = strings.TrimPrefix(f[0], "--from="), f[1], f[2]
		}
	}
	i := slices.IndexFunc(stages, func(s stage) bool { return s.name == from })
	if from == "" || i < 0 || i == len(stages)-1 {
		t.Fatalf("the final stage copies nothing from a build stage (COPY --from=%q)", from)
	}
	// BuildKit sets TARGETOS and TARGETARCH to the target platform; here the target is this
	// machine.
	build, line := findGoBuild(t, stages[i], []string{"TARGETOS=" + runtime.GOOS, "TARGETARCH=" + runtime.GOARCH})
	if build.env["CGO_ENABLED"] != "0" {
		t.Errorf("Dockerfile:%d: go build without CGO_ENABLED=0 (got %q): the binary would need libc", line, build.env["CGO_ENABLED"])
	}
	if !slices.Contains(build.args, "-trimpath") {
		t.Errorf("Dockerfile:%d: go build without -trimpath: %q", line, build.args)
	}
	o := slices.Index(build.args, "-o")
	if o < 0 || o+1 >= len(build.args) {
		t.Fatalf("Dockerfile:%d: go build without -o: %q", line, build.args)
	}
	if build.args[o+1] != src {
		t.Errorf("go build writes %s but the final stage copies %s", build.args[o+1], src)
	}
	checkFinalStage(t, final, dst)
	checkRuntimeGODEBUG(t, build.args, line)

	if testing.Short() {
		t.Skip("builds the binary; skipped with -short")
	}
	if runtime.GOOS != "linux" {
		t.Skip("the ELF check needs a linux build")
	}
	bin := filepath.Join(t.TempDir(), "pgsidecar")
	args := slices.Clone(build.args)
	args[o+1] = bin
	cmd := exec.Command("go", append([]string{"build"}, args...)...)
	cmd.Dir = ".." // the Dockerfile builds from the repository root (COPY . .)
	cmd.Env = os.Environ()
	for k, v := range build.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	// A checkout without git, or a worktree, cannot be stamped; stamping does not change
	// how the binary is linked.
	cmd.Env = append(cmd.Env, "GOFLAGS="+strings.TrimSpace(os.Getenv("GOFLAGS")+" -buildvcs=false"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
	}
	checkStatic(t, bin)
	checkMonitorAwake(t, bin)
}

// godebugLinkFlag is how the Makefile and the Dockerfile set the binary's default GODEBUG.
const godebugLinkFlag = "-X=runtime.godebugDefault="

// checkRuntimeGODEBUG checks that `make build` links the binary with a default GODEBUG (see
// RUNTIME_GODEBUG in the Makefile), that the image's build links the same, and that the go
// command sets no default GODEBUG of its own for the binary, which the link flag would replace.
func checkRuntimeGODEBUG(t *testing.T, args []string, line int) {
	t.Helper()
	mk := exec.Command("make", "-s", "-n", "build")
	mk.Dir = ".."
	script, err := mk.CombinedOutput()
	if err != nil {
		t.Fatalf("make -n build: %v\n%s", err, script)
	}
	var want string
	for _, f := range strings.Fields(string(script)) {
		// -ldflags='... -X=...' as a shell command line: one flag per field once unquoted.
		if f = strings.Trim(strings.TrimPrefix(f, "-ldflags="), `'"`); strings.HasPrefix(f, godebugLinkFlag) {
			want = f
		}
	}
	if want == "" {
		t.Fatalf("make build links no default GODEBUG (%s...):\n%s", godebugLinkFlag, script)
	}
	var ldflags string
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "-ldflags="); ok {
			ldflags = v
		} else if a == "-ldflags" && i+1 < len(args) {
			ldflags = args[i+1]
		}
	}
	if !slices.Contains(strings.Fields(ldflags), want) {
		t.Errorf("Dockerfile:%d: go build -ldflags %q lacks make build's %s", line, ldflags, want)
	}
	cmd := exec.Command("go", "list", "-f", "{{.DefaultGODEBUG}}", "./cmd/pgsidecar")
	cmd.Dir = ".."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	if d := strings.TrimSpace(string(out)); d != "" {
		t.Errorf("the go command sets the binary's default GODEBUG to %q, which %s would replace: merge the two", d, want)
	}
}

// checkMonitorAwake checks that the runtime setting is in effect in the built binary: with a
// schedtrace period, the runtime's crash report (here for SIGQUIT) includes its scheduler's
// state, which it leaves out otherwise.
func checkMonitorAwake(t *testing.T, bin string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// No upstream is needed: the pool connects when a client comes.
	cmd := exec.CommandContext(ctx, bin, "--listen", "127.0.0.1:0", "--http-listen=",
		"--database-url", "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") && !strings.HasPrefix(kv, "PGSIDECAR_") && !strings.HasPrefix(kv, "DATABASE_URL=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	var out strings.Builder
	cmd.Stderr = &out
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	cmd.Stdout = pw
	err = cmd.Start()
	pw.Close()
	if err != nil {
		t.Fatal(err)
	}
	// It serves once it prints the line to connect with, on standard output.
	if _, err := bufio.NewReader(pr).ReadString('\n'); err != nil {
		_ = cmd.Wait()
		t.Fatalf("the binary did not start: %v\n%s", err, out.String())
	}
	if err := cmd.Process.Signal(syscall.SIGQUIT); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if !strings.Contains(out.String(), "SCHED ") {
		t.Errorf("the binary's crash report has no scheduler state: its default GODEBUG lacks a schedtrace period\n%s", out.String())
	}
}

// checkFinalStage checks the user, entrypoint and ports of the image.
func checkFinalStage(t *testing.T, final stage, binary string) {
	t.Helper()
	var user, entrypoint string
	var exposed []string
	for _, in := range final.body {
		switch in.cmd {
		case "USER":
			user = in.args
		case "ENTRYPOINT":
			entrypoint = in.args
		case "EXPOSE":
			exposed = append(exposed, strings.Fields(in.args)...)
		}
	}
	uid, gid := imageUser(t, user)
	if uid == 0 || gid == 0 {
		t.Errorf("USER %s: the image must not run as root (uid and gid 0)", user)
	}
	var ep []string
	if err := json.Unmarshal([]byte(entrypoint), &ep); err != nil || len(ep) == 0 || ep[0] != binary {
		t.Errorf("ENTRYPOINT %s: want the exec form starting with %q (no shell in the image)", entrypoint, binary)
	}
	def := config.Defaults(config.ProfileProduction)
	for _, addr := range append(slices.Clone(def.Listen), def.HTTPListen) {
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(exposed, port) && !slices.Contains(exposed, port+"/tcp") {
			t.Errorf("EXPOSE %v lacks %s, a default port (%s)", exposed, port, addr)
		}
	}
}

// imageUser returns the numeric uid and gid of a USER instruction's argument ("65532:65532";
// a missing group is the uid's). A name fails the test: Kubernetes cannot check it is not root.
func imageUser(t *testing.T, user string) (uid, gid int) {
	t.Helper()
	u, g, ok := strings.Cut(user, ":")
	if !ok {
		g = u
	}
	uid, err1 := strconv.Atoi(u)
	gid, err2 := strconv.Atoi(g)
	if user == "" || err1 != nil || err2 != nil {
		t.Fatalf("final stage USER %q: want numeric uid[:gid]", user)
	}
	return uid, gid
}

// dockerfileUID returns the uid the image runs as.
func dockerfileUID(t *testing.T) int {
	t.Helper()
	stages := parseDockerfile(t, "Dockerfile")
	user := ""
	for _, in := range stages[len(stages)-1].body {
		if in.cmd == "USER" {
			user = in.args
		}
	}
	uid, _ := imageUser(t, user)
	return uid
}

// checkStatic fails unless the ELF file at path needs no dynamic loader and no shared library.
func checkStatic(t *testing.T, path string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		switch p.Type {
		case elf.PT_INTERP:
			t.Errorf("%s has a program interpreter (PT_INTERP): not static", path)
		case elf.PT_DYNAMIC:
			t.Errorf("%s has a dynamic section (PT_DYNAMIC): not static", path)
		}
	}
	if libs, err := f.ImportedLibraries(); err == nil && len(libs) > 0 {
		t.Errorf("%s needs shared libraries %v", path, libs)
	}
	if t.Failed() {
		out, _ := exec.Command("file", path).CombinedOutput()
		t.Log(strings.TrimSpace(string(out)))
	}
}
