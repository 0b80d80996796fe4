package classify

import "strings"

// Reason is why a client must be pinned to its server connection. The set is
// bounded, so a Reason can be used as a metric label.
type Reason string

// The reasons for pinning. None means the SQL leaves no state behind that
// the proxy cannot carry to another server.
const (
	None Reason = ""
	// Listen is LISTEN. UNLISTEN is harmless.
	Listen Reason = "listen"
	// AdvisoryLock is a call to a session-level advisory lock function:
	// pg_advisory_lock, pg_advisory_lock_shared, pg_try_advisory_lock or
	// pg_try_advisory_lock_shared. The _xact_ variants are harmless.
	AdvisoryLock Reason = "advisory_lock"
	// TempTable is CREATE TEMP|TEMPORARY TABLE, VIEW or SEQUENCE, a CREATE
	// of an object in schema pg_temp, or SELECT ... INTO TEMP.
	TempTable Reason = "temp_table"
	// WithHoldCursor is DECLARE ... CURSOR WITH HOLD.
	WithHoldCursor Reason = "with_hold_cursor"
	// SQLPrepare is the SQL command PREPARE (not PREPARE TRANSACTION).
	SQLPrepare Reason = "sql_prepare"
	// SetRole is SET [SESSION] ROLE, SET SESSION AUTHORIZATION, their
	// RESET forms, or set_config('role'|'session_authorization', v, false).
	SetRole Reason = "set_role"
	// Load is LOAD 'library'.
	Load Reason = "load"
	// SetUntracked is a session-level SET or RESET of a parameter that the
	// tracked callback rejects, or a set_config(name, v, false) of one,
	// including one whose name or is_local argument is not a literal.
	SetUntracked Reason = "set_untracked"
	// ClientEncoding is a client encoding in which the byte of a backslash or a quote can be
	// the second byte of a character (SJIS, BIG5, GBK, GB18030, UHC, JOHAB,
	// SHIFT_JIS_2004): the classifier, which reads bytes, cannot find where a string ends.
	ClientEncoding Reason = "client_encoding"
)

// UnsafeEncoding reports whether a client_encoding value names an encoding whose multi-byte
// characters can contain the bytes of ASCII quotes and backslashes (PostgreSQL's client-only
// encodings): SQL in it is not classified reliably (see ClientEncoding).
func UnsafeEncoding(name string) bool {
	n := strings.Map(func(r rune) rune {
		if r == '-' || r == '_' || r == ' ' {
			return -1
		}
		return r
	}, strings.ToLower(name))
	switch n {
	case "sjis", "shiftjis", "mskanji", "windows932", "win932", "shiftjis2004",
		"big5", "windows950", "win950", "gbk", "windows936", "win936", "cp936",
		"gb18030", "uhc", "windows949", "win949", "johab":
		return true
	}
	return false
}

// Result describes one SQL string.
type Result struct {
	// Pin is the first reason found to pin the client, None if there is none.
	Pin Reason
	// SetsTracked reports a session-level SET, RESET or set_config(..., false)
	// of a tracked parameter, or a RESET ALL or DISCARD ALL: the proxy must
	// re-read the session's parameters afterwards.
	SetsTracked bool
	// DiscardAll reports DISCARD ALL or DEALLOCATE [PREPARE] ALL: every
	// prepared statement of the session is dropped.
	DiscardAll bool
	// Deallocate holds the names of DEALLOCATE [PREPARE] name, in order,
	// as PostgreSQL resolves them: unquoted names folded to lower case,
	// quoted ones kept verbatim, both truncated to 63 bytes. They never
	// share memory with the SQL text.
	Deallocate []string
	// Statements is the number of non-empty statements.
	Statements int
	// Plain reports that there is at least one statement and every one is a query or a data
	// change that its implicit transaction makes atomic: SELECT, INSERT, UPDATE, DELETE, MERGE,
	// VALUES, TABLE, WITH or a parenthesised query (also under EXPLAIN). After a serialization
	// failure or deadlock rolled such a statement back, running it again is what a client would
	// do.
	Plain bool
	// CommitsAlone reports a statement that may commit work before it ends, so that an error
	// from it proves nothing about what took effect: CALL and DO (a procedure or DO block may
	// COMMIT), COMMIT/END and COMMIT/ROLLBACK PREPARED, and the statements PostgreSQL refuses in a
	// transaction block because they commit internally (VACUUM, CLUSTER, REINDEX, CREATE/DROP/
	// ALTER DATABASE, CREATE/DROP TABLESPACE, ALTER SYSTEM, CREATE/ALTER/DROP SUBSCRIPTION, and
	// anything CONCURRENTLY). The proxy never sends such a statement again once a server got it.
	CommitsAlone bool
	// Signal describes the SQL when it is exactly one SELECT of pg_cancel_backend or
	// pg_terminate_backend of one argument, a constant or a parameter (drivers that cancel a
	// query by SQL send this): the proxy carries it out itself for a backend PID it minted.
	Signal Signal
}

// Signal is a call of pg_cancel_backend(pid) or pg_terminate_backend(pid) that is a whole
// statement: SELECT [pg_catalog.]pg_cancel_backend(pid) with pid an integer constant, or $n,
// optionally cast to an integer type. Func is "" when the SQL is not one.
type Signal struct {
	Func  string // "pg_cancel_backend" or "pg_terminate_backend"
	PID   int64  // the constant, when Param is 0
	Param int    // n of $n, 0 for a constant
}

// Classify describes sql: the text of a simple-protocol Query, which may hold
// many statements, or of a Parse message. tracked reports whether the proxy
// replays a parameter; it gets the name in lower case, such as "search_path"
// or "timezone". A nil tracked tracks nothing. The name tracked gets may be
// a substring of sql: it must be copied to be kept after tracked returns.
//
// Classify sees only the text: statements run by a DO block, a function
// body or CALL are invisible to it (see the package documentation).
// Classify allocates nothing unless the SQL names a statement to
// deallocate or, rarely, spells a name it must fold or unescape. It is safe
// for concurrent use if tracked is.
func Classify(sql string, tracked func(param string) bool) Result {
	c := classifier{tracked: tracked}
	lx := lexer{src: sql}
	for {
		st := stmt{lx: lx}
		if st.next().kind == tokEOF {
			if st.lx.pos >= len(sql) {
				return c.res
			}
			lx = st.lx // an empty statement: ";"
			continue
		}
		c.res.Statements++
		if c.res.Statements == 1 {
			c.res.Plain = true
		} else {
			c.res.Signal = Signal{} // only a statement on its own
		}
		start := stmt{lx: lx}
		v := c.statement(start)
		lx = c.scan(start, v)
	}
}

// stmt reads the tokens of one statement. It tracks the parenthesis depth
// and reports tokEOF at a semicolon outside parentheses, which it consumes,
// or at the end of the input. It is a value: copy it to look ahead.
type stmt struct {
	lx    lexer
	depth int
	ended bool
}

func (s *stmt) next() token {
	if s.ended {
		return token{}
	}
	t := s.lx.next()
	switch {
	case t.kind == tokEOF:
		s.ended = true
	case t.kind == tokOp && len(t.text) == 1:
		switch t.text[0] {
		case '(':
			s.depth++
		case ')':
			if s.depth > 0 {
				s.depth--
			}
		case ';':
			if s.depth == 0 {
				s.ended = true
				return token{}
			}
		}
	}
	return t
}

// peek returns the next token without consuming it.
func (s *stmt) peek() token {
	la := *s
	return la.next()
}

// verb is the kind of a statement, as far as the expression scan needs it.
type verb uint8

const (
	verbOther  verb = iota
	verbSelect      // SELECT, WITH or a parenthesised query: may be SELECT INTO
	verbCreate      // CREATE: may create an object in pg_temp, named before any AS
)

type classifier struct {
	tracked func(string) bool
	res     Result
}

func (c *classifier) pin(r Reason) {
	if c.res.Pin == None {
		c.res.Pin = r
	}
}

// param records a session-level change of parameter name (lower case).
func (c *classifier) param(name string) {
	switch {
	case name == "role" || name == "session_authorization":
		c.pin(SetRole)
	case c.tracked != nil && c.tracked(name):
		c.res.SetsTracked = true
	default:
		c.pin(SetUntracked)
	}
}

// statement classifies a statement by its leading keywords, looking through
// EXPLAIN, and returns its verb for the expression scan.
func (c *classifier) statement(st stmt) verb {
	t := st.next()
	if t.kw("explain") {
		t = st.next()
		if t.is("(") {
			for st.depth > 0 && t.kind != tokEOF {
				t = st.next()
			}
			t = st.next()
		}
		for t.kw("analyze") || t.kw("analyse") || t.kw("verbose") {
			t = st.next()
		}
	}
	if t.is("(") {
		return verbSelect
	}
	c.res.Plain = c.res.Plain && t.kind == tokWord && plainVerb(t.text)
	if t.kind != tokWord {
		return verbOther
	}
	if commitsAlone(t, st) {
		c.res.CommitsAlone = true
	}
	switch lowerKeyword(t.text) {
	case "select":
		if c.res.Statements == 1 {
			c.res.Signal = signal(st)
		}
		return verbSelect
	case "with":
		return verbSelect
	case "create":
		c.create(&st)
		return verbCreate
	case "listen":
		c.pin(Listen)
	case "load":
		c.pin(Load)
	case "prepare":
		if n := st.next(); n.kw("transaction") && st.peek().kind == tokString {
			return verbOther // PREPARE TRANSACTION 'gid'
		}
		c.pin(SQLPrepare)
	case "declare":
		c.declare(&st)
	case "set":
		c.set(&st)
	case "reset":
		c.reset(&st)
	case "discard":
		if st.next().kw("all") && st.peek().kind == tokEOF {
			c.res.DiscardAll = true
			c.res.SetsTracked = true
		}
	case "deallocate":
		c.deallocate(&st)
	}
	return verbOther
}

// plainVerb reports whether a statement starting with word w is a query or a data change
// (see Result.Plain).
func plainVerb(w string) bool {
	switch len(w) {
	case 4:
		return equalFold(w, "with")
	case 5:
		return equalFold(w, "merge") || equalFold(w, "table")
	case 6:
		return equalFold(w, "select") || equalFold(w, "insert") || equalFold(w, "update") ||
			equalFold(w, "delete") || equalFold(w, "values")
	}
	return false
}

// commitsAlone reports whether a statement starting with t may commit on its own (see
// Result.CommitsAlone); st is positioned after t. CONCURRENTLY anywhere is found by scan.
func commitsAlone(t token, st stmt) bool {
	switch {
	case t.kw("call"), t.kw("do"), t.kw("commit"), t.kw("end"), t.kw("vacuum"), t.kw("cluster"), t.kw("reindex"):
		return true
	case t.kw("rollback"):
		return st.next().kw("prepared")
	}
	var object token
	switch {
	case t.kw("create"), t.kw("drop"):
		object = st.next()
	case t.kw("alter"):
		object = st.next()
		if object.kw("system") {
			return true
		}
	default:
		return false
	}
	return object.kw("database") || object.kw("tablespace") || object.kw("subscription")
}

// signal matches the rest of a SELECT (st after the keyword) against a call of
// pg_cancel_backend or pg_terminate_backend that is the whole statement.
func signal(st stmt) Signal {
	t := st.next()
	if t.kw("pg_catalog") {
		if !st.next().is(".") {
			return Signal{}
		}
		t = st.next()
	}
	var sig Signal
	switch {
	case t.kw("pg_cancel_backend"):
		sig.Func = "pg_cancel_backend"
	case t.kw("pg_terminate_backend"):
		sig.Func = "pg_terminate_backend"
	default:
		return Signal{}
	}
	if !st.next().is("(") {
		return Signal{}
	}
	switch arg := st.next(); arg.kind {
	case tokNumber:
		n, ok := parseInt(arg.text)
		if !ok {
			return Signal{}
		}
		sig.PID = n
	case tokString:
		// A quoted integer, as drivers that interpolate parameters send it: '123'.
		if len(arg.text) < 3 || arg.text[0] != '\'' || arg.text[len(arg.text)-1] != '\'' {
			return Signal{}
		}
		n, ok := parseInt(arg.text[1 : len(arg.text)-1])
		if !ok {
			return Signal{}
		}
		sig.PID = n
	case tokParam:
		n, ok := parseInt(arg.text[1:])
		if !ok || n < 1 || n > 65535 {
			return Signal{}
		}
		sig.Param = int(n)
	default:
		return Signal{}
	}
	t = st.next()
	if t.is("::") {
		if typ := st.next(); !typ.kw("int") && !typ.kw("int4") && !typ.kw("integer") && !typ.kw("int8") && !typ.kw("bigint") {
			return Signal{}
		}
		t = st.next()
	}
	if !t.is(")") || st.next().kind != tokEOF {
		return Signal{}
	}
	return sig
}

// parseInt reads a decimal integer of at most 18 digits.
func parseInt(s string) (int64, bool) {
	if s == "" || len(s) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return 0, false
		}
		n = n*10 + int64(s[i]-'0')
	}
	return n, true
}

// keywords are the statement keywords statement looks for; lowerKeyword
// maps a word to one of them without allocating.
var keywords = [...]string{
	"select", "with", "create", "listen", "load", "prepare", "declare",
	"set", "reset", "discard", "deallocate",
}

func lowerKeyword(w string) string {
	for _, k := range keywords {
		if equalFold(w, k) {
			return k
		}
	}
	return ""
}

// create handles CREATE [OR REPLACE] [LOCAL|GLOBAL] TEMP|TEMPORARY ....
// CREATE ... pg_temp.name is left to the expression scan.
func (c *classifier) create(st *stmt) {
	t := st.next()
	if t.kw("or") && st.peek().kw("replace") {
		st.next()
		t = st.next()
	}
	if t.kw("local") || t.kw("global") {
		t = st.next()
	}
	if t.kw("temp") || t.kw("temporary") {
		c.pin(TempTable)
	}
}

// declare handles DECLARE name [options] CURSOR [WITH HOLD|WITHOUT HOLD] FOR.
func (c *classifier) declare(st *stmt) {
	st.next() // the cursor name
	for {
		t := st.next()
		switch {
		case t.kind == tokEOF, t.kw("for") && st.depth == 0:
			return
		case t.kw("with") && st.peek().kw("hold"):
			c.pin(WithHoldCursor)
			return
		}
	}
}

// set handles the SET command. SET LOCAL changes nothing that outlasts the
// transaction, except that a search_path that starts with pg_temp makes
// CREATE create temporary objects.
func (c *classifier) set(st *stmt) {
	t := st.next()
	local := t.kw("local")
	switch {
	case local:
		t = st.next()
	case t.kw("session"):
		switch n := st.peek(); {
		case n.kw("authorization"):
			c.pin(SetRole)
			return
		case n.kw("characteristics"):
			st.next()
			c.characteristics(st)
			return
		}
		t = st.next()
	}
	var name string
	switch {
	case t.kw("transaction"), t.kw("constraints"):
		return // this transaction only
	case t.kw("role"):
		name = "role"
	case t.kw("names"):
		name = "client_encoding"
	case t.kw("schema"):
		name = "search_path"
		c.searchPath(st.next())
	case t.kw("time") && st.peek().kw("zone"):
		name = "timezone"
	case t.kw("xml") && st.peek().kw("option"):
		name = "xmloption"
	default:
		var ok bool
		if name, ok = varName(t, st); !ok {
			return
		}
		if name == "search_path" {
			if op := st.next(); op.kw("to") || op.is("=") {
				c.searchPath(st.next())
			}
		}
	}
	if !local {
		c.param(name)
	}
}

// searchPath pins the client if v, the first value of a search_path, is the
// temporary schema: CREATE TABLE x would then create a temporary table.
func (c *classifier) searchPath(v token) {
	if isPgTemp(v) {
		c.pin(TempTable)
	} else if s, ok := stringValue(v); ok && pgTempFirst(s) {
		c.pin(TempTable)
	}
}

// pgTempFirst reports whether the search_path string s starts with pg_temp.
func pgTempFirst(s string) bool {
	for len(s) > 0 && isSpace(s[0]) {
		s = s[1:]
	}
	t := token{kind: tokWord}
	if strings.HasPrefix(s, `"`) {
		t.kind = tokIdent
		s = s[:skipQuotedIdent(s, 1)]
	} else if i := strings.IndexAny(s, ", \t\n\r\f\v"); i >= 0 {
		s = s[:i]
	}
	t.text = s
	return isPgTemp(t)
}

// characteristics handles SET SESSION CHARACTERISTICS AS TRANSACTION modes,
// which set the default_transaction_* parameters.
func (c *classifier) characteristics(st *stmt) {
	const isolation = "default_transaction_isolation"
	if !st.next().kw("as") || !st.next().kw("transaction") {
		c.param(isolation) // not valid SQL: be conservative
		return
	}
	found := false
	for {
		t := st.next()
		switch {
		case t.kind == tokEOF:
			if !found {
				c.param(isolation)
			}
			return
		case t.kw("isolation"):
			c.param(isolation)
			st.next() // LEVEL
			if l := st.next(); l.kw("read") || l.kw("repeatable") {
				st.next() // COMMITTED, UNCOMMITTED or READ
			}
		case t.kw("read"):
			c.param("default_transaction_read_only")
			st.next() // ONLY or WRITE
		case t.kw("deferrable") || t.kw("not") && st.peek().kw("deferrable"):
			c.param("default_transaction_deferrable")
		default:
			continue // "," and NOT
		}
		found = true
	}
}

// reset handles the RESET command.
func (c *classifier) reset(st *stmt) {
	t := st.next()
	switch {
	case t.kw("all"):
		c.res.SetsTracked = true
	case t.kw("role"):
		c.pin(SetRole)
	case t.kw("session"):
		if st.next().kw("authorization") {
			c.pin(SetRole)
		}
	case t.kw("time") && st.peek().kw("zone"):
		c.param("timezone")
	case t.kw("transaction"):
		// RESET TRANSACTION ISOLATION LEVEL: this transaction only.
	default:
		if name, ok := varName(t, st); ok {
			c.param(name)
		}
	}
}

// varName reads a parameter name, t and any ".part" after it, in lower
// case: PostgreSQL compares parameter names without regard to case.
func varName(t token, st *stmt) (string, bool) {
	name, ok := identValue(t)
	if !ok {
		return "", false
	}
	for {
		la := *st
		if !la.next().is(".") {
			break
		}
		part, ok := identValue(la.next())
		if !ok {
			break
		}
		name += "." + part
		*st = la
	}
	return lowerASCII(name), true
}

// deallocate handles DEALLOCATE [PREPARE] name|ALL.
func (c *classifier) deallocate(st *stmt) {
	t := st.next()
	if t.kw("prepare") {
		if n := st.next(); n.kind != tokEOF {
			t = n
		} // else the statement is named "prepare"
	}
	if st.next().kind != tokEOF {
		return // not valid SQL: nothing is deallocated
	}
	if t.kw("all") {
		c.res.DiscardAll = true
		return
	}
	if name, ok := identValue(t); ok {
		// A copy: sql may be a view of a buffer the caller reuses.
		c.res.Deallocate = append(c.res.Deallocate, strings.Clone(name))
	}
}

// scan looks at every token of the statement for calls of the functions
// that matter and, by verb, for SELECT INTO TEMP and CREATE ... pg_temp.x.
// It returns the lexer positioned after the statement.
func (c *classifier) scan(st stmt, v verb) lexer {
	var p1, p2 token // the two tokens before t
	for {
		t := st.next()
		if t.kind == tokEOF {
			return st.lx
		}
		if t.kind == tokWord && len(t.text) == len("concurrently") && t.kw("concurrently") {
			c.res.CommitsAlone = true
		}
		if t.kind == tokWord || t.kind == tokIdent {
			switch {
			case v == verbSelect && t.kw("into") && !p1.kw("insert") && !p1.kw("merge"):
				if intoTemp(st) {
					c.pin(TempTable)
				}
			case v == verbCreate && st.depth == 0 && t.kw("as"):
				v = verbOther // what follows AS reads, it does not create
			case v == verbCreate && st.depth == 0 && isPgTemp(t) && st.peek().is("."):
				c.pin(TempTable)
			default:
				c.call(t, p1, p2, st)
			}
		}
		p2, p1 = p1, t
	}
}

// intoTemp reports whether the tokens after INTO make a temporary table:
// [LOCAL|GLOBAL] TEMP|TEMPORARY, or [UNLOGGED] [TABLE] pg_temp.name.
func intoTemp(st stmt) bool {
	t := st.next()
	if t.kw("local") || t.kw("global") {
		t = st.next()
	}
	if t.kw("temp") || t.kw("temporary") {
		return true
	}
	if t.kw("unlogged") {
		t = st.next()
	}
	if t.kw("table") {
		t = st.next()
	}
	return isPgTemp(t) && st.next().is(".")
}

// isPgTemp reports whether t names the session's temporary schema:
// pg_temp, or pg_temp_N.
func isPgTemp(t token) bool {
	var s string
	switch t.kind {
	case tokWord:
		if s = t.text; len(s) < 7 || !equalFold(s[:7], "pg_temp") {
			return false
		}
	case tokIdent:
		var ok bool
		if s, ok = identValue(t); !ok || !strings.HasPrefix(s, "pg_temp") {
			return false
		}
	default:
		return false
	}
	rest := s[7:]
	if rest == "" {
		return true
	}
	if len(rest) < 2 || rest[0] != '_' {
		return false
	}
	for i := 1; i < len(rest); i++ {
		if !isDigit(rest[i]) {
			return false
		}
	}
	return true
}

// function is one of the functions scan looks for.
type function uint8

const (
	fnNone function = iota
	fnAdvisoryLock
	fnSetConfig
)

// functionOf returns the function a name token denotes. A word is compared
// only if it has the length of one of the names, without allocating.
func functionOf(t token) function {
	switch t.kind {
	case tokWord:
		switch s := t.text; len(s) {
		case 10:
			if equalFold(s, "set_config") {
				return fnSetConfig
			}
		case 16, 20, 23, 27:
			if equalFold(s, "pg_advisory_lock") || equalFold(s, "pg_try_advisory_lock") ||
				equalFold(s, "pg_advisory_lock_shared") || equalFold(s, "pg_try_advisory_lock_shared") {
				return fnAdvisoryLock
			}
		}
	case tokIdent:
		switch s, _ := identValue(t); s {
		case "pg_advisory_lock", "pg_advisory_lock_shared",
			"pg_try_advisory_lock", "pg_try_advisory_lock_shared":
			return fnAdvisoryLock
		case "set_config":
			return fnSetConfig
		}
	}
	return fnNone
}

// call handles t if it is a call of an advisory lock function or of
// set_config, unqualified or qualified with pg_catalog. p1 and p2 are the
// tokens before t; st is positioned after t.
func (c *classifier) call(t, p1, p2 token, st stmt) {
	fn := functionOf(t)
	if fn == fnNone || !st.next().is("(") {
		return
	}
	if p1.is(".") {
		if schema, ok := identValue(p2); !ok || schema != "pg_catalog" {
			return // someone else's function
		}
	}
	switch fn {
	case fnAdvisoryLock:
		c.pin(AdvisoryLock)
	case fnSetConfig:
		c.setConfig(st)
	}
}

// arg is what setConfig learns of one argument of a call.
type arg struct {
	first   token // its first token
	n       int   // its number of tokens
	literal bool  // a single constant, possibly cast: 'x', true, 'f'::bool
	cast    bool  // after "::", expecting a type name
}

func (a *arg) add(t token) {
	a.n++
	switch {
	case a.n == 1:
		a.first = t
		a.literal = t.kind == tokString || t.kw("true") || t.kw("false") || t.kw("null")
	case !a.cast && t.is("::"):
		a.cast = true
	case a.cast && t.kind == tokWord:
		a.cast = false
	default:
		a.literal = false
	}
}

func (a *arg) isLiteral() bool { return a.n > 0 && a.literal && !a.cast }

// setConfig handles set_config(name, value, is_local); st is positioned
// after the opening parenthesis.
func (c *classifier) setConfig(st stmt) {
	var args [3]arg
	n, depth := 0, st.depth
	cur := &args[0]
	for {
		t := st.next()
		if t.kind == tokEOF || t.is(")") && st.depth < depth {
			break
		}
		if t.is(",") && st.depth == depth {
			n++
			if n < len(args) {
				cur = &args[n]
			} else {
				cur = &arg{}
			}
			continue
		}
		cur.add(t)
	}
	if n != 2 || args[2].n == 0 {
		c.pin(SetUntracked) // not set_config(text, text, bool): be conservative
		return
	}
	var name string
	ok := args[0].isLiteral()
	if ok {
		name, ok = stringValue(args[0].first)
	}
	name = lowerASCII(name)
	if ok && name == "search_path" && args[1].isLiteral() {
		c.searchPath(args[1].first)
	}
	local, known := boolValue(&args[2])
	if known && local {
		return
	}
	if !ok {
		c.pin(SetUntracked)
		return
	}
	switch {
	case name == "role" || name == "session_authorization":
		c.pin(SetRole)
	case !known:
		c.pin(SetUntracked)
	default:
		c.param(name)
	}
}

// boolValue returns the value of a boolean literal argument; known is false
// if the argument is not a literal. NULL is false, as set_config takes it.
func boolValue(a *arg) (v, known bool) {
	if !a.isLiteral() {
		return false, false
	}
	switch t := a.first; {
	case t.kw("true"):
		return true, true
	case t.kw("false"), t.kw("null"):
		return false, true
	}
	s, ok := stringValue(a.first)
	if !ok {
		return false, false
	}
	return parseBool(s)
}

// parseBool reads a boolean as PostgreSQL's boolin does: a prefix of true,
// false, yes or no, on, off (at least two letters), 1 or 0, in any case,
// with surrounding whitespace.
func parseBool(s string) (v, ok bool) {
	for len(s) > 0 && isSpace(s[0]) {
		s = s[1:]
	}
	for len(s) > 0 && isSpace(s[len(s)-1]) {
		s = s[:len(s)-1]
	}
	prefix := func(word string, min int) bool {
		return len(s) >= min && len(s) <= len(word) && equalFold(s, word[:len(s)])
	}
	switch {
	case prefix("true", 1), prefix("yes", 1), prefix("on", 2), s == "1":
		return true, true
	case prefix("false", 1), prefix("no", 1), prefix("off", 2), s == "0":
		return false, true
	}
	return false, false
}
