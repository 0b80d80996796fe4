package txmode

import (
	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/pgsidecar/pgsidecar/proxy/classify"
	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

// AnswerIdle answers, for a client with no server attached, the run of Parse of known
// statements, Close and Sync at the head of f, if there is one, and consumes it.
func (t *Tracker) AnswerIdle(f *wire.Frames) []byte {
	if t.Skipping || f.Remaining > 0 {
		return nil
	}
	// Find a run of such messages ending in Sync, all buffered whole.
	end := -1
	for r := f.R; ; {
		typ, length, ok := wire.HeaderOf(f.Buf[r:f.W])
		if !ok || length < 4 || length-4 > t.lim.MaxMessage || f.W-r < 1+length {
			break
		}
		body := f.Buf[r+5 : r+1+length]
		ok = false
		switch typ {
		case 'P':
			ok = t.knownParse(body)
		case 'C':
			ok = len(body) >= 2 && body[0] == 'S' && body[1] != 0
		case 'S':
			end = r + 1 + length
		}
		if typ == 'S' || !ok {
			break
		}
		r += 1 + length
	}
	if end < 0 {
		return nil
	}
	var out []byte
	failed := false // after an error, like PostgreSQL, skip to the Sync
	for f.R < end {
		typ, length, _ := f.Header()
		body := f.Buf[f.R+5 : f.R+1+length]
		if failed && typ != 'S' {
			f.R += 1 + length
			continue
		}
		switch typ {
		case 'P':
			name, rest, _ := wire.CString(body)
			query, paramTypes, _ := wire.CString(rest)
			var ps *Stmt
			if limit := t.lim.ClientStatements; limit <= 0 || len(t.stmts) < limit {
				// nil if the statement was forgotten since knownParse and the registry
				// is full.
				ps = t.reg.get(query, paramTypes, Effect{}) // knownParse: no effect
			}
			if ps == nil {
				out = append(out, t.errorReply(retry.CodeConfigurationLimitExceeded, "pgsidecar: too many prepared statements (max_client_prepared_statements or max_prepared_statement_bytes)")...)
				failed = true
				break
			}
			if res := classify.Classify(bytesString(query), t.classifier()); res.Pin != classify.None {
				t.pin(res.Pin)
			}
			t.addStmt(string(name), &ClientStmt{ps: ps})
			out = wire.AppendParseComplete(out)
		case 'C':
			name, _, _ := wire.CString(body[1:])
			t.dropStmt(string(name))
			out = wire.AppendCloseComplete(out)
		case 'S':
			out = wire.AppendReadyForQuery(out, 'I')
		}
		f.R += 1 + length
	}
	return out
}

// knownParse reports whether a Parse names a new statement whose text and parameter types
// a server has already accepted.
func (t *Tracker) knownParse(body []byte) bool {
	name, rest, ok := wire.CString(body)
	if !ok || len(name) == 0 {
		return false
	}
	if _, dup := t.stmts[string(name)]; dup {
		return false
	}
	if limit := t.lim.ClientStatements; len(name) > maxStmtName || limit > 0 && len(t.stmts) >= limit {
		return false // the normal path refuses it
	}
	query, paramTypes, ok := wire.CString(rest)
	if !ok {
		return false
	}
	res := classify.Classify(bytesString(query), t.classifier())
	if res.Pin != classify.None && t.refusesState() {
		return false // the normal path refuses it
	}
	if res.DiscardAll || len(res.Deallocate) > 0 {
		return false // the normal path works out what it does to prepared statements
	}
	return t.reg.valid(query, paramTypes)
}
