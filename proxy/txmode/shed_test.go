package txmode

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

// TestShedLetsGoWhenIdle: a tracker keeps its remembered batch, reply queue and scratch
// buffers while a request is in flight, and lets them go at Shed once it is answered, so that
// a client that ran queries and went idle holds none of them; the next request works as before.
func TestShedLetsGoWhenIdle(t *testing.T) {
	var tr Tracker
	tr.Init(&Registry{}, &Limits{MaxMessage: 1 << 20, Retries: 2})
	st := NewServerState()
	query, err := (&pgproto3.Query{String: "SELECT 1"}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	reply := []byte{}
	for _, m := range []pgproto3.BackendMessage{&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'}} {
		if reply, err = m.Encode(reply); err != nil {
			t.Fatal(err)
		}
	}
	for round := 0; round < 2; round++ {
		f := wire.Frames{Buf: append([]byte(nil), query...), W: len(query)}
		c := tr.ScanClient(&f, st)
		if c.Err != nil || c.Requests != 1 || string(c.Out) != string(query) {
			t.Fatalf("round %d: scan of a Query: requests %d, err %v, out %q", round, c.Requests, c.Err, c.Out)
		}
		tr.Pending += c.Requests // as the proxy counts what it sends
		tr.Shed()                // in flight: nothing may go
		if tr.b == nil || tr.rb == nil || len(tr.rb.entries) != 1 || tr.Queued() != 1 {
			t.Fatalf("round %d: Shed with a request in flight dropped its state (buffers %v, batch %v, queued %d)", round, tr.b != nil, tr.rb != nil, tr.Queued())
		}
		sf := wire.Frames{Buf: append([]byte(nil), reply...), W: len(reply)}
		out, ready, status, _, err := tr.ScanServer(&sf, st, false, false)
		if err != nil || ready != 1 || status != 'I' || string(out) != string(reply) {
			t.Fatalf("round %d: reply scan: ready %d, status %c, err %v, out %q", round, ready, status, err, out)
		}
		if tr.Pending != 0 {
			t.Fatalf("round %d: %d requests pending after the reply", round, tr.Pending)
		}
		tr.TakeEvents()
		tr.Shed()
		if tr.b != nil || tr.rb != nil || tr.resp.e != nil || tr.signals != nil {
			t.Errorf("round %d: an idle tracker keeps buffers %v, batch %v, queue %v, signals %v", round, tr.b != nil, tr.rb != nil, tr.resp.e != nil, tr.signals != nil)
		}
	}
}
