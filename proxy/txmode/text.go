package txmode

import "github.com/pgsidecar/pgsidecar/proxy/wire"

// RequestText returns the SQL text of the first request among msgs, whole client messages as
// the client sent them: a Query's text, a Parse's statement, or, for a Bind, the text that named
// returns for the prepared statement it names (named may be nil). It returns nil when there is
// none. The slice aliases msgs or the statement's storage: copy what is kept. Parameter values
// are never part of it.
func RequestText(msgs []byte, named func(name []byte) []byte) []byte {
	for len(msgs) >= 5 {
		typ, length, ok := wire.HeaderOf(msgs)
		if !ok || length < 4 || len(msgs) < 1+length {
			return nil
		}
		body := msgs[5 : 1+length]
		msgs = msgs[1+length:]
		switch typ {
		case 'Q':
			text, _, _ := wire.CString(body)
			return text
		case 'P':
			return ParseText(body)
		case 'B':
			_, rest, ok := wire.CString(body) // the portal
			if !ok || named == nil {
				return nil
			}
			name, _, ok := wire.CString(rest)
			if !ok {
				return nil
			}
			return named(name)
		}
	}
	return nil
}

// ParseText returns the statement text of a Parse message's body.
func ParseText(body []byte) []byte {
	if _, rest, ok := wire.CString(body); ok {
		text, _, _ := wire.CString(rest)
		return text
	}
	return nil
}

// StatementText returns the text of the client's prepared statement name ("" for the unnamed
// one), or nil when the client has none by that name.
func (t *Tracker) StatementText(name []byte) []byte {
	if cs, ok := t.stmts[string(name)]; ok {
		return RequestText(cs.ps.parse, nil)
	}
	if len(name) == 0 && len(t.unnamedParse) > 0 {
		return RequestText(t.unnamedParse, nil)
	}
	return nil
}
