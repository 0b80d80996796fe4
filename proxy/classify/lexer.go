package classify

import (
	"strings"
	"unicode/utf8"
)

// tokKind is the lexical class of a token.
type tokKind uint8

const (
	tokEOF    tokKind = iota
	tokWord           // unquoted identifier or keyword
	tokIdent          // quoted identifier: "x" or U&"x"
	tokString         // string constant of any form, dollar-quoted included
	tokParam          // positional parameter $n
	tokNumber         // numeric constant
	tokOp             // operator or punctuation: "::" is one token, anything else one byte
)

// token is one lexical token. text is a substring of the SQL, quotes and
// prefixes included; for a U& token followed by a UESCAPE clause, text is the
// quoted part only and uesc holds the escape character.
type token struct {
	kind tokKind
	uesc byte // escape character of a U&'...' or U&"..." token, 0 otherwise
	text string
}

// is reports whether t is the punctuation or operator op.
func (t token) is(op string) bool { return t.kind == tokOp && t.text == op }

// kw reports whether t is the unquoted keyword k, which must be lower case.
func (t token) kw(k string) bool { return t.kind == tokWord && equalFold(t.text, k) }

// lexer splits SQL into tokens the way PostgreSQL's scanner does, as far as
// it matters here: comments and whitespace are skipped, and every form of
// quoting is one token. It assumes standard_conforming_strings is on.
// It never allocates. Unterminated quotes and comments run to the end of the
// input.
type lexer struct {
	src string
	pos int
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

func isIdentStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= 0x80
}

func isIdentCont(c byte) bool {
	return isIdentStart(c) || c >= '0' && c <= '9' || c == '$'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// skipSpace moves past whitespace and comments.
func (l *lexer) skipSpace() {
	s := l.src
	for l.pos < len(s) {
		c := s[l.pos]
		switch {
		case isSpace(c):
			l.pos++
		case c == '-' && l.pos+1 < len(s) && s[l.pos+1] == '-':
			i := strings.IndexAny(s[l.pos:], "\n\r")
			if i < 0 {
				l.pos = len(s)
			} else {
				l.pos += i + 1
			}
		case c == '/' && l.pos+1 < len(s) && s[l.pos+1] == '*':
			l.pos = skipBlockComment(s, l.pos+2)
		default:
			return
		}
	}
}

// skipBlockComment returns the position after the block comment whose
// opening "/*" ends at i. Block comments nest.
func skipBlockComment(s string, i int) int {
	depth := 1
	for i < len(s) {
		switch {
		case s[i] == '/' && i+1 < len(s) && s[i+1] == '*':
			depth++
			i += 2
		case s[i] == '*' && i+1 < len(s) && s[i+1] == '/':
			depth--
			i += 2
			if depth == 0 {
				return i
			}
		default:
			i++
		}
	}
	return len(s)
}

// skipString returns the position after the closing quote of a string whose
// opening quote ends at i. A doubled quote is a quote inside the string;
// with backslash (E'...' strings), so is a quote after a backslash.
func skipString(s string, i int, backslash bool) int {
	for i < len(s) {
		switch s[i] {
		case '\\':
			if backslash {
				i += 2
				continue
			}
		case '\'':
			if i+1 < len(s) && s[i+1] == '\'' {
				i += 2
				continue
			}
			return i + 1
		}
		i++
	}
	return len(s)
}

// skipQuotedIdent returns the position after the closing double quote of an
// identifier whose opening quote ends at i.
func skipQuotedIdent(s string, i int) int {
	for i < len(s) {
		if s[i] == '"' {
			if i+1 < len(s) && s[i+1] == '"' {
				i += 2
				continue
			}
			return i + 1
		}
		i++
	}
	return len(s)
}

// next returns the next token, or a token of kind tokEOF at the end.
func (l *lexer) next() token {
	l.skipSpace()
	s := l.src
	start := l.pos
	if start >= len(s) {
		return token{}
	}
	c := s[start]
	var c1, c2 byte
	if start+1 < len(s) {
		c1 = s[start+1]
	}
	if start+2 < len(s) {
		c2 = s[start+2]
	}
	switch {
	case c == '\'':
		l.pos = skipString(s, start+1, false)
		return token{kind: tokString, text: s[start:l.pos]}
	case c == '"':
		l.pos = skipQuotedIdent(s, start+1)
		return token{kind: tokIdent, text: s[start:l.pos]}
	case c1 == '\'' && (c == 'e' || c == 'E'):
		l.pos = skipString(s, start+2, true)
		return token{kind: tokString, text: s[start:l.pos]}
	case c1 == '\'' && (c == 'b' || c == 'B' || c == 'x' || c == 'X' || c == 'n' || c == 'N'):
		l.pos = skipString(s, start+2, false)
		return token{kind: tokString, text: s[start:l.pos]}
	case (c == 'u' || c == 'U') && c1 == '&' && (c2 == '\'' || c2 == '"'):
		t := token{kind: tokString, uesc: '\\'}
		if c2 == '\'' {
			l.pos = skipString(s, start+3, false)
		} else {
			t.kind = tokIdent
			l.pos = skipQuotedIdent(s, start+3)
		}
		t.text = s[start:l.pos]
		l.uescape(&t)
		return t
	case isIdentStart(c):
		i := start + 1
		for i < len(s) && isIdentCont(s[i]) {
			i++
		}
		l.pos = i
		return token{kind: tokWord, text: s[start:i]}
	case isDigit(c) || c == '.' && isDigit(c1):
		l.pos = skipNumber(s, start)
		return token{kind: tokNumber, text: s[start:l.pos]}
	case c == '$':
		if isDigit(c1) {
			i := start + 1
			for i < len(s) && isDigit(s[i]) {
				i++
			}
			l.pos = i
			return token{kind: tokParam, text: s[start:i]}
		}
		if end := dollarDelim(s, start); end > 0 {
			delim := s[start:end]
			if j := strings.Index(s[end:], delim); j >= 0 {
				l.pos = end + j + len(delim)
			} else {
				l.pos = len(s)
			}
			return token{kind: tokString, text: s[start:l.pos]}
		}
	case c == ':' && c1 == ':':
		l.pos = start + 2
		return token{kind: tokOp, text: s[start:l.pos]}
	}
	l.pos = start + 1
	return token{kind: tokOp, text: s[start:l.pos]}
}

// dollarDelim returns the end of the dollar-quote delimiter ($$ or $tag$)
// starting at i, or 0 if there is none. A tag is an identifier without "$".
func dollarDelim(s string, i int) int {
	j := i + 1
	if j < len(s) && isIdentStart(s[j]) {
		j++
		for j < len(s) && (isIdentStart(s[j]) || isDigit(s[j])) {
			j++
		}
	}
	if j < len(s) && s[j] == '$' {
		return j + 1
	}
	return 0
}

// skipNumber returns the end of the numeric constant starting at i: digits,
// underscores, one decimal point and an exponent. Letters that follow are
// left for the next token, so "1into" is never one token.
func skipNumber(s string, i int) int {
	dot := false
	for i < len(s) {
		c := s[i]
		switch {
		case isDigit(c) || c == '_':
		case c == '.' && !dot && !(i+1 < len(s) && s[i+1] == '.'):
			dot = true
		case (c == 'e' || c == 'E') && i+1 < len(s):
			j := i + 1
			if s[j] == '+' || s[j] == '-' {
				j++
			}
			if j >= len(s) || !isDigit(s[j]) {
				return i
			}
			i = j
			for i < len(s) && isDigit(s[i]) {
				i++
			}
			return i
		default:
			return i
		}
		i++
	}
	return i
}

// uescape absorbs a "UESCAPE 'c'" clause after the U& token t, as
// PostgreSQL does, and records its escape character in t.uesc. A malformed
// clause leaves t.uesc 0 so that the token is never decoded.
func (l *lexer) uescape(t *token) {
	save := *l
	if w := l.next(); !w.kw("uescape") {
		*l = save
		return
	}
	t.uesc = 0
	v := l.next()
	if v.kind != tokString || len(v.text) != 3 || v.text[0] != '\'' {
		return
	}
	e := v.text[1]
	if isHexDigit(e) || e == '+' || e == '\'' || e == '"' || isSpace(e) {
		return
	}
	t.uesc = e
}

func isHexDigit(c byte) bool {
	return isDigit(c) || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// equalFold reports whether s equals the lower-case ASCII word k, ignoring
// ASCII case only, as PostgreSQL does for keywords.
func equalFold(s, k string) bool {
	if len(s) != len(k) {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != k[i] {
			return false
		}
	}
	return true
}

// lowerASCII folds ASCII letters to lower case; it allocates only when s has
// an upper-case letter.
func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if b[j] >= 'A' && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// maxIdentLen is NAMEDATALEN-1: PostgreSQL truncates longer identifiers.
const maxIdentLen = 63

// truncateIdent clips s to maxIdentLen bytes on a UTF-8 character boundary,
// or at maxIdentLen bytes if s is not UTF-8 there (the server would reject
// such text anyway).
func truncateIdent(s string) string {
	if len(s) <= maxIdentLen {
		return s
	}
	for n := maxIdentLen; n > maxIdentLen-utf8.UTFMax; n-- {
		if utf8.RuneStart(s[n]) {
			return s[:n]
		}
	}
	return s[:maxIdentLen]
}

// identValue returns the name a word or quoted-identifier token denotes, as
// PostgreSQL's scanner makes it: an unquoted word folded to lower case
// (ASCII only), a quoted one with "" unescaped and U& escapes decoded, both
// truncated to 63 bytes. ok is false for any other token and for a U&
// identifier with a bad escape. It allocates only when the name differs
// from the source text.
func identValue(t token) (name string, ok bool) {
	switch t.kind {
	case tokWord:
		return truncateIdent(lowerASCII(t.text)), true
	case tokIdent:
		body, esc := t.text, byte(0)
		if body[0] == 'u' || body[0] == 'U' {
			body, esc = body[2:], t.uesc
			if esc == 0 {
				return "", false
			}
		}
		body = body[1:]
		if !closed(body, '"') {
			return "", false
		}
		body = body[:len(body)-1]
		if strings.Contains(body, `""`) {
			body = strings.ReplaceAll(body, `""`, `"`)
		}
		if esc != 0 {
			if body, ok = decodeUnicode(body, esc); !ok {
				return "", false
			}
		}
		if body == "" {
			return "", false // zero-length identifiers are an error
		}
		return truncateIdent(body), true
	}
	return "", false
}

// stringValue returns the value of a string-constant token when it can be
// read without doubt: plain, N'...' and dollar-quoted strings, E'...' strings
// without backslashes and U&'...' strings. ok is false for bit strings, E'...'
// strings with escapes, unterminated strings and other tokens.
func stringValue(t token) (v string, ok bool) {
	if t.kind != tokString {
		return "", false
	}
	s := t.text
	var esc byte
	switch s[0] {
	case '$':
		end := dollarDelim(s, 0)
		if end == 0 || len(s) < 2*end || s[len(s)-end:] != s[:end] {
			return "", false
		}
		return s[end : len(s)-end], true
	case '\'':
	case 'n', 'N':
		s = s[1:]
	case 'e', 'E':
		if strings.IndexByte(s, '\\') >= 0 {
			return "", false
		}
		s = s[1:]
	case 'u', 'U':
		if esc = t.uesc; esc == 0 {
			return "", false
		}
		s = s[2:]
	default:
		return "", false // B'...' and X'...'
	}
	if s = s[1:]; !closed(s, '\'') {
		return "", false
	}
	s = s[:len(s)-1]
	if strings.Contains(s, "''") {
		s = strings.ReplaceAll(s, "''", "'")
	}
	if esc != 0 {
		return decodeUnicode(s, esc)
	}
	return s, true
}

// closed reports whether body, the text of a quoted token after its opening
// quote q, ends with a closing quote: inside, quotes come doubled, so the
// run of quotes at the end is odd exactly when the last one closes.
func closed(body string, q byte) bool {
	n := 0
	for n < len(body) && body[len(body)-1-n] == q {
		n++
	}
	return n%2 == 1
}

// decodeUnicode decodes the escapes of a U& constant: esc esc is esc itself,
// esc XXXX and esc+XXXXXX are code points, UTF-16 surrogate pairs included.
// ok is false for a malformed escape, which PostgreSQL rejects.
func decodeUnicode(s string, esc byte) (string, bool) {
	if strings.IndexByte(s, esc) < 0 {
		return s, true
	}
	var b strings.Builder
	b.Grow(len(s))
	var high rune
	for i := 0; i < len(s); {
		if s[i] != esc {
			if high != 0 {
				return "", false
			}
			b.WriteByte(s[i])
			i++
			continue
		}
		if i+1 < len(s) && s[i+1] == esc {
			if high != 0 {
				return "", false
			}
			b.WriteByte(esc)
			i += 2
			continue
		}
		n, j := 4, i+1
		if j < len(s) && s[j] == '+' {
			n, j = 6, j+1
		}
		if j+n > len(s) {
			return "", false
		}
		var r rune
		for _, c := range []byte(s[j : j+n]) {
			switch {
			case isDigit(c):
				r = r<<4 | rune(c-'0')
			case c >= 'a' && c <= 'f':
				r = r<<4 | rune(c-'a'+10)
			case c >= 'A' && c <= 'F':
				r = r<<4 | rune(c-'A'+10)
			default:
				return "", false
			}
		}
		i = j + n
		switch {
		case r >= 0xD800 && r <= 0xDBFF:
			if high != 0 {
				return "", false
			}
			high = r
			continue
		case r >= 0xDC00 && r <= 0xDFFF:
			if high == 0 {
				return "", false
			}
			r = (high-0xD800)<<10 | (r - 0xDC00) + 0x10000
			high = 0
		case high != 0:
			return "", false
		}
		if r == 0 || r > utf8.MaxRune {
			return "", false
		}
		b.WriteRune(r)
	}
	if high != 0 {
		return "", false
	}
	return b.String(), true
}
