package admin

import (
	"strconv"
	"strings"

	"github.com/pgsidecar/pgsidecar/internal/retry"
)

// statement is one parsed admin command.
type statement struct {
	src    string // the command's text as sent, for error messages
	verb   string // command word in lower case: "show", "pause", "set", ...
	arg    string // the argument, unquoted and case kept (database names are case-sensitive)
	hasArg bool
	id     uint64 // KILL_CLIENT's argument
	value  string // SET's value
}

// tag is the verb as PgBouncer names it in CommandComplete and logs ("PAUSE", "KILL_CLIENT").
func (st statement) tag() string {
	if st.verb == "select" {
		return "SHOW" // PgBouncer's alias (admin.c cmd_list)
	}
	return strings.ToUpper(st.verb)
}

// token kinds.
const (
	tokWord   = 'w' // [A-Za-z0-9_]+ or a "quoted identifier"
	tokString = 's' // a 'string literal', only for SET's value
	tokEquals = '='
)

type token struct {
	kind byte
	text string // unquoted
}

// parse splits query into its ';'-separated commands and checks each one. It follows
// PgBouncer's grammar (admin.c cmd_normal_rx, cmd_set_word_rx, cmd_set_str_rx): a command
// word and at most one argument, or SET key =|TO value. Unquoted words are ASCII letters,
// digits and '_'; anything else needs double quotes ("" escapes a quote). Like PostgreSQL, the
// whole query is parsed before anything runs, so a typo in the third command cannot leave the
// first two done; a query with no command at all parses to none.
func parse(query string) ([]statement, *Error) {
	var (
		stmts []statement
		toks  []token
		start int // where the current command's text begins
	)
	end := func(i int) *Error {
		if len(toks) > 0 {
			st, err := build(strings.TrimSpace(query[start:i]), toks)
			if err != nil {
				return err
			}
			stmts = append(stmts, st)
		}
		toks, start = toks[:0], i+1
		return nil
	}
	for i := 0; i < len(query); {
		c := query[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
		case c == ';':
			if err := end(i); err != nil {
				return nil, err
			}
			i++
		case c == '=':
			toks = append(toks, token{kind: tokEquals})
			i++
		case c == '"' || c == '\'':
			text, n, ok := unquote(query[i:], c)
			if !ok || (c == '"' && text == "") { // unterminated, or PostgreSQL's zero-length identifier
				return nil, syntaxError(commandText(query, start))
			}
			kind := byte(tokWord)
			if c == '\'' {
				kind = tokString
			}
			toks = append(toks, token{kind: kind, text: text})
			i += n
		case isWordByte(c):
			j := i + 1
			for j < len(query) && isWordByte(query[j]) {
				j++
			}
			toks = append(toks, token{kind: tokWord, text: query[i:j]})
			i = j
		default:
			return nil, syntaxError(commandText(query, start))
		}
	}
	if err := end(len(query)); err != nil {
		return nil, err
	}
	return stmts, nil
}

func isWordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_'
}

// unquote reads the quoted token at the start of s (s[0] is the quote q, doubled inside to
// stand for itself) and returns its text and length; ok is false when it is unterminated.
func unquote(s string, q byte) (text string, n int, ok bool) {
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		if s[i] != q {
			b.WriteByte(s[i])
			continue
		}
		if i+1 < len(s) && s[i+1] == q {
			b.WriteByte(q)
			i++
			continue
		}
		return b.String(), i + 1, true
	}
	return "", len(s), false
}

// commandText is the text of the command starting at start, up to a ';' outside quotes, for
// an error about a command that did not tokenize.
func commandText(query string, start int) string {
	var quote byte
	for i := start; i < len(query); i++ {
		switch c := query[i]; {
		case quote != 0:
			if c == quote {
				quote = 0 // a doubled quote closes and reopens: same result
			}
		case c == '"' || c == '\'':
			quote = c
		case c == ';':
			return strings.TrimSpace(query[start:i])
		}
	}
	return strings.TrimSpace(query[start:])
}

// build checks one command's tokens against the grammar and its verb's arguments.
func build(src string, toks []token) (statement, *Error) {
	bad := syntaxError(src)
	if toks[0].kind != tokWord {
		return statement{}, bad
	}
	st := statement{src: src, verb: strings.ToLower(toks[0].text)}
	if st.verb == "set" {
		// SET key = value | SET key TO value, the value a word or a 'string'.
		if len(toks) != 4 || toks[1].kind != tokWord || toks[3].kind == tokEquals ||
			!(toks[2].kind == tokEquals || toks[2].kind == tokWord && strings.EqualFold(toks[2].text, "to")) {
			return statement{}, bad
		}
		st.arg, st.hasArg, st.value = toks[1].text, true, toks[3].text
		return st, nil
	}
	switch {
	case len(toks) > 2:
		return statement{}, bad
	case len(toks) == 2:
		if toks[1].kind != tokWord {
			return statement{}, bad
		}
		st.arg, st.hasArg = toks[1].text, true
	}
	if err := checkArgs(&st); err != nil {
		return statement{}, err
	}
	return st, nil
}

// checkArgs checks the argument each verb takes (admin.c's admin_cmd_* functions); unknown
// verbs and SHOW items are syntax errors, as in PgBouncer.
func checkArgs(st *statement) *Error {
	switch st.verb {
	case "show", "select":
		if !st.hasArg {
			return syntaxError(st.src)
		}
		if _, known := showHandler(st.arg); !known {
			return syntaxError(st.src)
		}
	case "pause", "resume", "reconnect", "kill", "wait_close":
		// optional database
	case "disable", "enable":
		if !st.hasArg {
			return &Error{Code: retry.CodeSyntaxError, Message: "a database is required"}
		}
	case "kill_client":
		if !st.hasArg {
			return &Error{Code: retry.CodeSyntaxError, Message: "a client id is required"}
		}
		id, err := strconv.ParseUint(st.arg, 10, 64)
		if err != nil {
			return &Error{Code: retry.CodeInvalidParameterValue, Message: "invalid client id: " + clip(st.arg)}
		}
		st.id = id
	case "reload", "suspend":
		if st.hasArg {
			return syntaxError(st.src)
		}
	case "shutdown":
		if st.hasArg && !strings.EqualFold(st.arg, "wait_for_servers") && !strings.EqualFold(st.arg, "wait_for_clients") {
			return syntaxError(st.src)
		}
	default:
		return syntaxError(st.src)
	}
	return nil
}
