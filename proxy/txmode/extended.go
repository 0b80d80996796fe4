package txmode

import (
	"bytes"

	"github.com/pgsidecar/pgsidecar/internal/retry"
	"github.com/pgsidecar/pgsidecar/proxy/classify"
	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

// The extended protocol's references to statements: Bind, Describe and Close.

// maxBindNames bounds the head of a Bind (portal and statement names) the proxy waits for.
const maxBindNames = 4096

// trackBind rewrites a Bind of a named statement to its server-side name, preparing it first
// if this server does not have it. body may hold only the start of a large Bind: only the names
// are needed, and the parameters stream through. need > 0 asks for that many bytes buffered.
func (t *Tracker) trackBind(body []byte, st *ServerState, w *wire.Batch, total int) (need int, hold bool, err error) {
	portal, rest, ok := wire.CString(body)
	var name []byte
	if ok {
		name, _, ok = wire.CString(rest)
	}
	if !ok {
		if len(body) < total-5 && len(body) < maxBindNames {
			return min(total, 5+maxBindNames), false, nil
		}
		return 0, false, wire.Errorf("malformed Bind message")
	}
	t.call = nil
	var sig classify.Signal
	if t.unnamedSignal != nil {
		sig = *t.unnamedSignal
	}
	if len(name) != 0 {
		if cs, ok := t.stmts[string(name)]; ok {
			sig = cs.ps.signal
		} else {
			sig = classify.Signal{}
		}
	}
	if sig.Func != "" && sig.Param > 0 && len(body) == total-5 {
		if pid, formats, ok := bindArgs(body, sig.Param); ok && t.answersSignal(sig, pid) {
			// pg_cancel_backend($1) of a PID the proxy minted: this portal is answered
			// here, its Describe and Execute too (signal.go).
			t.call = &signalCall{portal: string(portal), fn: sig.Func, pid: pid, result: t.signal(sig.Func, pid), formats: formats}
			w.Cut(w.F.R + total)
			t.resp.push(Entry{synth: []byte{'2', 0, 0, 0, 4}})
			return 0, false, nil
		}
	}
	if len(name) == 0 {
		t.ensureUnnamed(st, w)
		t.resp.push(Entry{msg: 'B', commits: t.unnamedCommits})
		t.applyEffect(t.unnamedEffect, st)
		return 0, false, nil
	}
	cs, ok := t.stmts[string(name)]
	if !ok {
		if t.refuseUnknown(name, w, total) {
			return 0, false, nil
		}
		// The server has no statement by the client's name either, so it answers with the
		// error PostgreSQL would give.
		t.resp.push(Entry{msg: 'B'})
		return 0, false, nil
	}
	ps := cs.ps
	if t.verifying == ps {
		// The statement was prepared for this Bind, its shape read back.
		t.verifying = nil
		if !t.verifyFailed && !bytes.Equal(t.bufs().verifyShape, cs.shape) {
			// The client chose its formats, and decodes the rows, by the shape it was told;
			// the statement has another one now (its columns' types changed). PostgreSQL
			// fails such a Bind, and drivers prepare again when it does.
			t.refuseMessage(w, total, retry.CodeFeatureNotSupported, "cached plan must not change result type")
			return 0, false, nil
		}
	} else if !st.has(ps) && cs.shape != nil {
		// The client knows the statement's shape, and this server is about to prepare it
		// afresh: read its shape back first, and hold the Bind until then.
		w.Cut(w.F.R)
		t.prepare(ps, st, w, true)
		w.Out = appendDescribe(w.Out, 'S', ps.name)
		w.Out = wire.AppendFlush(w.Out)
		t.resp.push(Entry{msg: 'D', swallow: true, verify: true, stmt: ps})
		b := t.bufs()
		t.verifying, t.VerifyDone, t.verifyFailed, b.verifyShape = ps, false, false, b.verifyShape[:0]
		return 0, true, nil
	}
	head := 5 + len(portal) + 1 + len(name) + 1
	w.Cut(w.F.R + head)
	if !st.has(ps) {
		t.prepare(ps, st, w, true)
	} else if ps != t.justParsed {
		t.cache.Hits++
	}
	t.justParsed = nil
	n := total - 1 - len(name) + len(ps.name)
	w.Add([]byte{'B', byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
	w.Add(portal)
	w.AddByte(0)
	w.AddString(ps.name)
	w.AddByte(0)
	t.resp.push(Entry{msg: 'B', stmt: ps, commits: ps.commits})
	t.applyEffect(ps.effect, st)
	return 0, false, nil
}

// trackDescribe rewrites a Describe of a named statement like trackBind.
func (t *Tracker) trackDescribe(body []byte, st *ServerState, w *wire.Batch, total int) error {
	if len(body) < 2 {
		return wire.Errorf("malformed Describe message")
	}
	name, _, ok := wire.CString(body[1:])
	if !ok {
		return wire.Errorf("malformed Describe message")
	}
	if body[0] != 'S' {
		if c := t.call; c != nil && string(name) == c.portal {
			w.Cut(w.F.R + total)
			t.resp.push(Entry{synth: signalReply(nil, c.fn, c.result, true, false, resultFormat(c.formats))})
			return nil
		}
		t.resp.push(Entry{msg: 'D', portal: true})
		return nil
	}
	if len(name) == 0 {
		t.ensureUnnamed(st, w)
		t.resp.push(Entry{msg: 'D'})
		return nil
	}
	cs, ok := t.stmts[string(name)]
	if !ok {
		if !t.refuseUnknown(name, w, total) {
			t.resp.push(Entry{msg: 'D'})
		}
		return nil
	}
	ps := cs.ps
	w.Cut(w.F.R + total)
	if !st.has(ps) {
		t.prepare(ps, st, w, true)
	}
	w.Out = appendDescribe(w.Out, 'S', ps.name)
	w.Used = true
	t.resp.push(Entry{msg: 'D', stmt: ps, described: cs})
	return nil
}

// trackClose answers Close of a named statement itself: the shared server-side statement may
// serve other clients and stays until evicted.
func (t *Tracker) trackClose(body []byte, w *wire.Batch, total int) {
	if len(body) < 2 || body[0] != 'S' {
		t.resp.push(Entry{msg: 'C'})
		return
	}
	name, _, _ := wire.CString(body[1:])
	if len(name) == 0 {
		t.forgetUnnamed()
		t.resp.push(Entry{msg: 'C'})
		return
	}
	t.dropStmt(string(name))
	w.Cut(w.F.R + total)
	t.resp.push(Entry{synth: wire.AppendCloseComplete(nil)})
}
