package txmode

import (
	"maps"
	"slices"
)

// trackedParams are the parameters the proxy replays when a client moves between servers;
// a session-level SET of any other parameter pins the client.
var trackedParams = map[string]bool{
	"application_name": true, "client_encoding": true, "datestyle": true, "intervalstyle": true,
	"timezone": true, "search_path": true, "extra_float_digits": true, "statement_timeout": true,
	"lock_timeout": true, "idle_in_transaction_session_timeout": true, "bytea_output": true,
	"default_transaction_isolation": true,
	"default_transaction_read_only": true, "default_transaction_deferrable": true,
	"xmloption": true, "work_mem": true, "jit": true, "enable_seqscan": true,
}

func isTracked(name string) bool { return trackedParams[name] }

// TrackedParams returns the names of the parameters the proxy replays (lower case).
func TrackedParams() []string { return slices.Collect(maps.Keys(trackedParams)) }

// Tracked reports whether the proxy replays parameter name (lower case).
func Tracked(name string) bool { return trackedParams[name] }
