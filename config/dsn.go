package config

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
)

// This file reads and rewrites PostgreSQL connection strings in both forms
// that pgconn.ParseConfig accepts: URLs ("postgres://user:pw@host/db?k=v")
// and keyword/value strings ("host=h user=u password='p w'"). The URL form
// is split the way libpq (and pgconn) split it rather than with net/url,
// which rejects libpq's multi-host syntax ("postgres://h1:5432,[::1]:5433/db").
// Everything not rewritten is kept byte for byte.

// secretKeys are connection-string keys whose values are secrets.
var secretKeys = map[string]bool{"password": true, "sslpassword": true}

type queryParam struct {
	rawKey, rawVal string
	hasEq          bool
	key            string // percent-decoded, canonical ("dbname" -> "database")
}

type kvPair struct {
	key, val string
}

// dsn is a parsed connection string.
type dsn struct {
	isURL bool

	// URL form.
	prefix      string // "postgres://" or "postgresql://"
	hasUserinfo bool
	userinfo    string // raw, without '@'
	netloc      string // raw host[:port][,host[:port]...]
	hasPath     bool
	path        string // raw, without '/'
	query       []queryParam

	// Keyword/value form.
	pairs []kvPair
}

func isURLForm(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

func canonicalKey(k string) string {
	if k == "dbname" {
		return "database"
	}
	return k
}

// parseDSN splits s into its parts. It does not validate host names, ports
// or options: pgconn.ParseConfig does that.
func parseDSN(s string) (*dsn, error) {
	if isURLForm(s) {
		return parseURL(s)
	}
	pairs, err := parseKV(s)
	if err != nil {
		return nil, err
	}
	return &dsn{pairs: pairs}, nil
}

// errAuthorityAt refuses a URL whose user name or password holds a raw '@'.
var errAuthorityAt = errors.New("the URL's user:password@host part has more than one '@': percent-encode an '@' in the user name or password as %40")

func parseURL(s string) (*dsn, error) {
	d := &dsn{isURL: true}
	prefix := "postgres://"
	if strings.HasPrefix(s, "postgresql://") {
		prefix = "postgresql://"
	}
	d.prefix = prefix
	p := s[len(prefix):]
	authority := p
	if i := strings.IndexAny(p, "/?"); i >= 0 {
		authority = p[:i]
	}
	if strings.Count(authority, "@") > 1 {
		// libpq would take the first '@' as the end of the password and the rest of the
		// password as part of the host name, where no redaction finds it.
		return nil, errAuthorityAt
	}
	// Like libpq, only a '/' ends the search for the userinfo terminator.
	if i := strings.IndexAny(p, "@/"); i >= 0 && p[i] == '@' {
		d.hasUserinfo = true
		d.userinfo = p[:i]
		p = p[i+1:]
	}
	i := strings.IndexAny(p, "/?")
	if i < 0 {
		d.netloc = p
		return d, nil
	}
	d.netloc = p[:i]
	p = p[i:]
	if p[0] == '/' {
		d.hasPath = true
		p = p[1:]
		if j := strings.IndexByte(p, '?'); j >= 0 {
			d.path = p[:j]
			p = p[j:]
		} else {
			d.path = p
			p = ""
		}
	}
	if strings.HasPrefix(p, "?") {
		for _, pair := range strings.Split(p[1:], "&") {
			if pair == "" {
				continue
			}
			rk, rv, hasEq := strings.Cut(pair, "=")
			k, err := url.PathUnescape(rk)
			if err != nil {
				k = rk
			}
			d.query = append(d.query, queryParam{rawKey: rk, rawVal: rv, hasEq: hasEq, key: canonicalKey(strings.TrimSpace(k))})
		}
	}
	return d, nil
}

func isKVSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

const kvSpace = " \t\n\r\v\f"

// parseKV parses a keyword/value connection string like pgconn does.
func parseKV(s string) ([]kvPair, error) {
	var pairs []kvPair
	s = strings.TrimLeft(s, kvSpace)
	for len(s) > 0 {
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			return nil, errors.New("invalid keyword/value")
		}
		key := strings.Trim(s[:eq], kvSpace)
		if strings.ContainsAny(key, kvSpace) || key == "" {
			return nil, errors.New("invalid keyword/value")
		}
		s = strings.TrimLeft(s[eq+1:], kvSpace)
		var val string
		switch {
		case len(s) == 0:
		case s[0] != '\'':
			end := 0
			for ; end < len(s); end++ {
				if isKVSpace(s[end]) {
					break
				}
				if s[end] == '\\' {
					end++
					if end == len(s) {
						break
					}
				}
			}
			if end > len(s) {
				end = len(s)
			}
			val = unescapeKV(s[:end])
			s = strings.TrimLeft(s[end:], kvSpace)
		default:
			s = s[1:]
			end := 0
			for ; end < len(s); end++ {
				if s[end] == '\'' {
					break
				}
				if s[end] == '\\' {
					end++
					if end == len(s) {
						break
					}
				}
			}
			if end >= len(s) {
				return nil, errors.New("unterminated quoted string in connection info string")
			}
			val = unescapeKV(s[:end])
			s = strings.TrimLeft(s[end+1:], kvSpace)
		}
		pairs = append(pairs, kvPair{key: canonicalKey(key), val: val})
	}
	return pairs, nil
}

func unescapeKV(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			i++
			if i == len(s) {
				break
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// quoteKV quotes a keyword/value value when it needs it.
func quoteKV(v string) string {
	if v != "" && !strings.ContainsAny(v, kvSpace+`'\`) {
		return v
	}
	r := strings.NewReplacer(`\`, `\\`, `'`, `\'`)
	return "'" + r.Replace(v) + "'"
}

// escapeURIComponent percent-encodes every byte except RFC 3986 unreserved
// characters.
func escapeURIComponent(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

// get returns the value of a connection-string key ("user", "password",
// "database", ...), the last occurrence winning as in pgconn.
func (d *dsn) get(key string) (string, bool) {
	var val string
	var found bool
	if d.isURL {
		if d.hasUserinfo {
			u, pw, hasPW := strings.Cut(d.userinfo, ":")
			switch key {
			case "user":
				if u != "" {
					val, found = unescapeLoose(u), true
				}
			case "password":
				if hasPW && pw != "" {
					val, found = unescapeLoose(pw), true
				}
			}
		}
		if key == "database" && d.hasPath && d.path != "" {
			val, found = unescapeLoose(d.path), true
		}
		for _, q := range d.query {
			if q.key == key {
				val, found = unescapeLoose(q.rawVal), true
			}
		}
		return val, found
	}
	for _, p := range d.pairs {
		if p.key == key {
			val, found = p.val, true
		}
	}
	return val, found
}

func unescapeLoose(s string) string {
	v, err := url.PathUnescape(strings.TrimSpace(s))
	if err != nil {
		return s
	}
	return v
}

// withLogin returns the connection string with its database, user and
// password replaced; an empty password removes any password. Every other
// option is kept.
func (d *dsn) withLogin(database, user, password string) string {
	if d.isURL {
		var b strings.Builder
		b.WriteString(d.prefix)
		if user != "" || password != "" {
			b.WriteString(escapeURIComponent(user))
			if password != "" {
				b.WriteByte(':')
				b.WriteString(escapeURIComponent(password))
			}
			b.WriteByte('@')
		}
		b.WriteString(d.netloc)
		b.WriteByte('/')
		b.WriteString(escapeURIComponent(database))
		sep := byte('?')
		for _, q := range d.query {
			switch q.key {
			case "user", "password", "database":
				continue
			}
			b.WriteByte(sep)
			sep = '&'
			b.WriteString(q.rawKey)
			if q.hasEq {
				b.WriteString("=" + q.rawVal)
			}
		}
		return b.String()
	}
	parts := make([]string, 0, len(d.pairs)+3)
	for _, p := range d.pairs {
		switch p.key {
		case "user", "password", "database":
			continue
		}
		parts = append(parts, p.key+"="+quoteKV(p.val))
	}
	parts = append(parts, "dbname="+quoteKV(database), "user="+quoteKV(user))
	if password != "" {
		parts = append(parts, "password="+quoteKV(password))
	}
	return strings.Join(parts, " ")
}

// String returns the connection string as parsed, in its own form: the raw
// parts of a URL, re-quoted keyword/value pairs. Parsing it again gives the
// same values.
func (d *dsn) String() string { return d.format(false) }

// format writes the connection string in its own form, with every secret
// value replaced by "xxxxx" when redact is set.
func (d *dsn) format(redact bool) string {
	if d.isURL {
		var b strings.Builder
		b.WriteString(d.prefix)
		if d.hasUserinfo {
			u, _, hasPW := strings.Cut(d.userinfo, ":")
			switch {
			case !redact:
				b.WriteString(d.userinfo)
			case hasPW:
				b.WriteString(u + ":" + redacted)
			default:
				b.WriteString(u)
			}
			b.WriteByte('@')
		}
		b.WriteString(d.netloc)
		if d.hasPath {
			b.WriteByte('/')
			b.WriteString(d.path)
		}
		for i, q := range d.query {
			if i == 0 {
				b.WriteByte('?')
			} else {
				b.WriteByte('&')
			}
			b.WriteString(q.rawKey)
			switch {
			case redact && secretKeys[strings.ToLower(q.key)]:
				b.WriteString("=" + redacted)
			case q.hasEq:
				b.WriteString("=" + q.rawVal)
			}
		}
		return b.String()
	}
	parts := make([]string, 0, len(d.pairs))
	for _, p := range d.pairs {
		v := p.val
		if redact && secretKeys[p.key] {
			v = redacted
		}
		k := p.key
		if k == "database" {
			k = "dbname"
		}
		parts = append(parts, k+"="+quoteKV(v))
	}
	return strings.Join(parts, " ")
}

// remove deletes every occurrence of an option (a query parameter or a
// keyword, not user, password or database) and returns its value, the last
// occurrence winning as in get.
func (d *dsn) remove(key string) (val string, found bool) {
	val, found = d.get(key)
	if d.isURL {
		d.query = slices.DeleteFunc(d.query, func(q queryParam) bool { return q.key == key })
	} else {
		d.pairs = slices.DeleteFunc(d.pairs, func(p kvPair) bool { return p.key == key })
	}
	return val, found
}

// Values of the load_balance_hosts connection option (libpq 16).
const (
	// LoadBalanceDisable tries the hosts in the order they are listed (the
	// default).
	LoadBalanceDisable = "disable"
	// LoadBalanceRandom tries the hosts, and the addresses of each host, in
	// a random order for every connection, spreading connections over
	// equivalent hosts.
	LoadBalanceRandom = "random"
)

// takeLoadBalanceHosts removes load_balance_hosts from d, which pgconn does
// not know (it would send it to the server as a run-time parameter, and the
// server would refuse the login), and returns its value: LoadBalanceDisable
// when absent or empty, or LoadBalanceRandom.
func (d *dsn) takeLoadBalanceHosts() (string, error) {
	v, _ := d.remove("load_balance_hosts")
	switch v {
	case "", LoadBalanceDisable:
		return LoadBalanceDisable, nil
	case LoadBalanceRandom:
		return LoadBalanceRandom, nil
	}
	return "", fmt.Errorf("load_balance_hosts: must be %q or %q, got %q", LoadBalanceDisable, LoadBalanceRandom, v)
}

// SplitLoadBalanceHosts returns dsn without its load_balance_hosts option,
// ready for pgconn.ParseConfig, and the option's value: LoadBalanceDisable
// (also when the option is absent) or LoadBalanceRandom. pgconn does not
// support the option and would send it to the server as a run-time
// parameter, which the server refuses. A dsn without the option is returned
// unchanged. Errors hold no secret.
func SplitLoadBalanceHosts(dsn string) (connString, mode string, err error) {
	d, err := parseDSN(dsn)
	if err != nil {
		return "", "", fmt.Errorf("cannot parse `%s`: %w", RedactDSN(dsn), err)
	}
	if _, found := d.get("load_balance_hosts"); !found {
		return dsn, LoadBalanceDisable, nil
	}
	mode, err = d.takeLoadBalanceHosts()
	if err != nil {
		return "", "", err
	}
	return d.String(), mode, nil
}

// redacted returns the connection string with every secret value replaced
// by "xxxxx".
func (d *dsn) redacted() string { return d.format(true) }

// RedactDSN returns dsn with every password replaced by "xxxxx": the
// password of a URL's user info, the password and sslpassword query
// parameters, and the password and sslpassword keywords of the
// keyword/value form. Other parts are kept, so the result still shows the
// host, port, database, user and options. A keyword/value string that
// cannot be parsed is cut at its first "password" keyword. The result is
// safe to log.
func RedactDSN(dsn string) string {
	if dsn == "" {
		return ""
	}
	d, err := parseDSN(dsn)
	if err == nil {
		return d.redacted()
	}
	if isURLForm(dsn) {
		// An unparseable URL: where its password ends is unknown, so nothing after the
		// scheme is shown.
		prefix, _, _ := strings.Cut(dsn, "://")
		return prefix + "://" + redacted + "@..."
	}
	// Unparseable keyword/value string: keep only what precedes the first
	// thing that may be a password.
	if i := strings.Index(strings.ToLower(dsn), "password"); i >= 0 {
		return dsn[:i] + "password=" + redacted + " ..."
	}
	return dsn
}

// dsnSecrets returns the decoded secret values in dsn (best effort), so that
// error messages quoting parts of dsn can be scrubbed.
func dsnSecrets(dsn string) []string {
	var out []string
	d, err := parseDSN(dsn)
	if err != nil {
		return nil
	}
	if d.isURL {
		if d.hasUserinfo {
			if _, pw, ok := strings.Cut(d.userinfo, ":"); ok && pw != "" {
				out = append(out, pw, unescapeLoose(pw))
			}
		}
		for _, q := range d.query {
			if secretKeys[q.key] && q.rawVal != "" {
				out = append(out, q.rawVal, unescapeLoose(q.rawVal))
			}
		}
		return out
	}
	for _, p := range d.pairs {
		if secretKeys[p.key] && p.val != "" {
			out = append(out, p.val)
		}
	}
	return out
}

// scrub removes every secret of dsn from msg.
func scrub(msg, dsn string) string {
	for _, s := range dsnSecrets(dsn) {
		msg = strings.ReplaceAll(msg, s, redacted)
	}
	return msg
}
