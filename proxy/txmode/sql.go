package txmode

import (
	"fmt"
	"strings"

	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/pgsidecar/pgsidecar/proxy/classify"
	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

// Messages and SQL the tracker makes itself.

// appendDescribe appends a Describe of a statement ('S') or portal ('P').
func appendDescribe(b []byte, kind byte, name string) []byte {
	n := 4 + 1 + len(name) + 1
	b = append(b, 'D', byte(n>>24), byte(n>>16), byte(n>>8), byte(n), kind)
	b = append(b, name...)
	return append(b, 0)
}

// appendParse appends a Parse message.
func appendParse(b []byte, name string, query, paramTypes []byte) []byte {
	n := 4 + len(name) + 1 + len(query) + 1 + len(paramTypes)
	b = append(b, 'P', byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	b = append(b, name...)
	b = append(b, 0)
	b = append(b, query...)
	b = append(b, 0)
	return append(b, paramTypes...)
}

// refusesState reports whether SQL that would pin is refused instead (session_state).
func (t *Tracker) refusesState() bool {
	return t.lim.RefuseState
}

func refusalMessage(reason classify.Reason) string {
	return fmt.Sprintf("pgsidecar: this statement leaves session state on the server (%s), which transaction pooling cannot carry; it is refused because session_state is \"refuse\"", reason)
}

// refusalQuery is a simple Query that fails on the server with the refusal's error.
func refusalQuery(reason classify.Reason) []byte {
	return wire.AppendQuery(nil, raiseSQL(retry.CodeFeatureNotSupported, refusalMessage(reason)))
}

// raiseSQL is a statement that fails on the server with an ERROR of code and msg: the proxy
// sends it instead of a statement it refuses inside what may be a transaction block, which the
// server then aborts as PostgreSQL would. The message is dollar-quoted, so no setting of
// standard_conforming_strings changes it.
func raiseSQL(code, msg string) string {
	tag := "$pgsidecar$"
	for strings.Contains(msg, tag) {
		tag = "$pgsidecar" + tag[1:]
	}
	return "DO $pgsidecar_do$ BEGIN RAISE EXCEPTION USING ERRCODE = '" + code + "', MESSAGE = " + tag + msg + tag + "; END $pgsidecar_do$"
}
