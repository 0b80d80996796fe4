# The Makefile mirrors CI: .ci/run calls `make test`. run and test install what they need
# first (deps), so on a fresh Debian machine with Go each works on its own.
GO       ?= go
BIN      := bin/pgsidecar
PKGS     := ./...
FUZZTIME ?= 10s
# The pgbench comparison harness shipped beside the repository; override to use another copy.
PGBENCH_COMPARE ?= ../shared/bench/pgbench-compare.sh

.PHONY: all build deps run test test-short lint fuzz bench bench-go bench-pgbench clean

all: build

# The runtime's monitor thread (sysmon) falls into a deep sleep whenever every processor is
# idle, and the next ordinary system call wakes it to poll every 20 us until the processors go
# idle again. A proxy between bursts of network work is idle that way thousands of times a
# second, and every new connection makes such calls (accept4, setsockopt, close): under pgbench
# -C the monitor took 14 to 16 % of pgsidecar's CPU. A schedtrace period keeps the monitor
# from that deep sleep, so it backs off to one wake-up every 10 ms instead; the period, the
# largest the runtime takes (24.8 days), also sets how often it prints one scheduler line on
# stderr, and it prints one at start on a host up longer than that. Set in the binary's
# default GODEBUG, which the go command leaves empty for this module, so GODEBUG=schedtrace=0
# in the environment restores the runtime's own behaviour (deploy's TestDockerfile checks that
# the default is empty otherwise, that this build and the image's set the same, and that the
# setting is in effect in the binary). BENCHMARKS.md section 3 has the measurements.
RUNTIME_GODEBUG := schedtrace=2147483647
LDFLAGS  := -X=runtime.godebugDefault=$(RUNTIME_GODEBUG)

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='$(LDFLAGS)' -o $(BIN) ./cmd/pgsidecar

# PostgreSQL's server binaries, psql and pgbench: Debian's packages are installed when missing
# (as root), or the command to install them is printed and make stops.
deps:
	@.ci/setup

# With DATABASE_URL set, proxies to it; without, starts a disposable local PostgreSQL, which
# needs deps.
run: build $(if $(DATABASE_URL)$(PGSIDECAR_DATABASE_URL),,deps)
	./$(BIN) $(ARGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "not gofmt-formatted:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

# The whole suite: lint, unit and integration tests against real PostgreSQL with the race
# detector, then a short run of every fuzz target. PGSIDECAR_REQUIRE_PG makes a test that cannot
# find PostgreSQL fail instead of skip (test-short is the one that skips).
test: deps lint
	PGSIDECAR_REQUIRE_PG=1 $(GO) test -race -count=1 -timeout 30m $(PKGS)
	$(MAKE) fuzz

test-short: lint
	$(GO) test -race -short $(PKGS)

# Each fuzz target for FUZZTIME (go test allows one -fuzz target per run). Go before 1.27 can
# fail a target with a bare "context deadline exceeded" when -fuzztime ends while a worker is
# busy (go.dev/issue/75804): such a run, with no failing input written, is run once more; any
# real finding (a failing input, a panic) fails at once.
fuzz:
	@set -e; for pkg in $$($(GO) list $(PKGS)); do \
		dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
		for f in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/^func //'); do \
			for try in 1 2; do \
				echo "fuzz $$pkg $$f ($(FUZZTIME))"; \
				if out=$$($(GO) test -run='^$$' -fuzz="^$$f$$" -fuzztime=$(FUZZTIME) $$pkg 2>&1); then echo "$$out" | tail -n 2; break; fi; \
				echo "$$out"; \
				if [ $$try = 1 ] && echo "$$out" | grep -q 'context deadline exceeded' && ! echo "$$out" | grep -q 'Failing input written\|panic:'; then \
					echo "fuzz: $$f hit the fuzztime deadline race, not a finding; running it again"; continue; fi; \
				exit 1; \
			done; \
		done; \
	done

bench: bench-go bench-pgbench

# Go benchmarks of the relay and pool (allocations included).
bench-go:
	$(GO) test -run='^$$' -bench=. -benchmem $(PKGS)

# pgbench through pgsidecar, directly and through PgBouncer, side by side from one run, medians
# of BENCH_ROUNDS rounds; the last scenarios hold 2,000 and 10,000 idle clients (max_client_conn
# raised for them) and report the memory each costs. BENCHMARKS.md reads the results.
BENCH_SCENARIOS ?= select:16 select:64 select:256 tpcb:64 select_prepared:64 connect_storm:16 idle_memory:2000 idle_memory:10000
BENCH_ROUNDS ?= 2
# PgBouncer 1.25 built from source by ../shared/bench/build-pgbouncer.sh, when it has been;
# Debian's package otherwise.
PGBOUNCER_125 ?= $(or $(TMPDIR),/tmp)/pgbouncer-1.25.2/bin/pgbouncer
bench-pgbench: build
	@if [ -x '$(PGBOUNCER_125)' ]; then echo "bench: PgBouncer 1.25 built from source ($(PGBOUNCER_125))"; \
	else echo "bench: PgBouncer from Debian's package (build 1.25 with ../shared/bench/build-pgbouncer.sh to compare with it)"; fi
	PGBOUNCER_BIN="$$( [ -x '$(PGBOUNCER_125)' ] && echo '$(PGBOUNCER_125)' || echo /usr/sbin/pgbouncer )" \
	SCENARIOS='$(BENCH_SCENARIOS)' ROUNDS='$(BENCH_ROUNDS)' MAX_CLIENT_CONN=12000 \
	PROXY_NAME=pgsidecar \
	PROXY_CMD='$(CURDIR)/$(BIN) --listen {listen_host}:{listen_port} --http-listen= --database-url postgres://{user}@{upstream_host}:{upstream_port}/{dbname}?sslmode=disable --pool-size {pool_size} --max-client-conn {max_client_conn} --log-level warn' \
	bash $(PGBENCH_COMPARE)

clean:
	rm -rf bin
