// Package classify tells the proxy, from the text of SQL a client sends, what
// the SQL leaves behind in its server session. In transaction pooling a
// client's consecutive transactions run on different server connections, so
// the proxy must know when a client leaves state that cannot move (and pin
// the client to its server for the rest of its session) and when it changes
// parameters that the proxy replays on every server it hands the client.
//
// [Classify] reads one SQL string: the text of a simple-protocol Query, which
// may hold many statements, or of a Parse message. It returns a [Result]:
//
//   - Pin: the first [Reason] found to pin the client, [None] if there is
//     none. Reasons: LISTEN; session-level advisory locks; temporary tables,
//     views and sequences (CREATE TEMP, CREATE ... pg_temp.x, SELECT INTO
//     TEMP, a search_path that starts with pg_temp); WITH HOLD cursors; SQL
//     PREPARE; SET ROLE and SET SESSION AUTHORIZATION; LOAD; and session-level
//     changes of parameters the proxy does not replay.
//   - SetsTracked: a session-level change of a replayed parameter (SET,
//     RESET, set_config(..., false), RESET ALL, DISCARD ALL); the proxy
//     re-reads the session's parameters once the SQL has run.
//   - DiscardAll and Deallocate: prepared statements the SQL drops.
//   - Statements: the number of non-empty statements.
//
// SET LOCAL, SET TRANSACTION, set_config(name, value, true) and the _xact_
// advisory lock functions last only as long as the transaction, so they
// have no effect. Where an argument of set_config is not a literal,
// Classify assumes the worst.
//
// Example, in the proxy, for each Query from a client in transaction
// pooling:
//
//	res := classify.Classify(query, replayed)
//	if res.Pin != classify.None && !sess.pinned {
//		sess.pin(res.Pin) // and count it, labelled with res.Pin
//	}
//	for _, name := range res.Deallocate {
//		sess.forgetStatement(name)
//	}
//	if res.DiscardAll {
//		sess.forgetAllStatements()
//	}
//	// forward the query; after ReadyForQuery:
//	if res.SetsTracked {
//		sess.rereadParameters()
//	}
//
// # How it reads SQL
//
// A hand-written lexer follows PostgreSQL's scanner: -- and nested /* */
// comments; '...' strings; E'...' strings with backslash escapes; U&'...'
// and U&"..." with UESCAPE; B'...', X'...' and N'...'; dollar quotes
// ($$...$$ and $tag$...$tag$, while $1 is a parameter); "..." identifiers
// with doubled quotes; and parentheses. Nothing inside a
// string, comment or quoted identifier is taken for a keyword. A semicolon
// outside parentheses ends a statement. An unterminated quote or comment
// runs to the end of the text. Keywords are matched without regard to ASCII
// case; names are folded as PostgreSQL folds them. Classify uses no regular
// expressions and, for SQL that deallocates nothing, allocates nothing except
// in rare spellings (a parameter name in upper case, a quoted name with
// escapes).
//
// # Limits
//
// Classify sees only the text it is given. What runs inside a DO block, a
// function or procedure body (dollar-quoted or not), CALL, or dynamic SQL
// cannot be seen: CREATE TEMP TABLE, pg_advisory_lock or SET inside them
// goes unnoticed. The caller may wish to pin on DO and CALL by policy.
//
// It assumes standard_conforming_strings is on, PostgreSQL's default: with it
// off, backslashes escape quotes in '...' strings and the statements may be
// split differently. Do not replay that parameter (so that setting it pins
// the session), and pin a client that starts with it off.
//
// It assumes the server accepts the SQL. PostgreSQL parses a whole Query
// before it runs any statement of it, so SQL with a syntax error does
// nothing; for such SQL the result may name effects that do not happen, and
// errs towards pinning. EXPLAIN without ANALYZE is classified like the
// statement it explains, although that statement does not run. The
// statements of a BEGIN ATOMIC function body are counted as statements of
// their own.
package classify
