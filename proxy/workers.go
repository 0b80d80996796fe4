package proxy

import (
	"sync"

	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy/wire"
)

// relayWorkers runs serverToClient loops on goroutines that are kept between loops. A
// transaction-mode client gets a server, and a loop relaying its replies, for every
// transaction; a new goroutine each time starts on a small stack and grows it on the loop's
// first deep call, which measured at several percent of the proxy's CPU under pgbench. A kept
// worker has its stack already grown.
//
// Idle workers wait for their next loop, most recently used first; beyond maxIdleRelayWorkers
// a worker ends when its loop does, so the number kept follows the peak number of servers in
// use at once, not the number of clients. stop ends them.
type relayWorkers struct {
	mu      sync.Mutex
	idle    []*relayWorker // most recently parked last
	stopped bool
	wg      sync.WaitGroup
}

// maxIdleRelayWorkers bounds the workers kept waiting: a parked worker costs its stack.
const maxIdleRelayWorkers = 128

type relayWorker struct {
	tasks chan relayTask // buffered: handing over a loop never blocks
	// f is the read state of the worker's loops, reused so that a loop allocates none.
	f wire.Frames
}

// relayTask is one serverToClient loop: session s relaying server c until done is closed.
type relayTask struct {
	s    *session
	c    *pool.Conn
	done chan struct{}
}

// start runs t on an idle worker, or on a new one.
func (w *relayWorkers) start(t relayTask) {
	w.mu.Lock()
	if n := len(w.idle); n > 0 {
		wk := w.idle[n-1]
		w.idle[n-1] = nil
		w.idle = w.idle[:n-1]
		w.mu.Unlock()
		wk.tasks <- t
		return
	}
	w.wg.Add(1)
	w.mu.Unlock()
	wk := &relayWorker{tasks: make(chan relayTask, 1)}
	go wk.run(w, t)
}

func (wk *relayWorker) run(w *relayWorkers, t relayTask) {
	defer w.wg.Done()
	for {
		t.s.serverToClient(t.c, t.done, &wk.f)
		t = relayTask{} // let the session go while parked
		w.mu.Lock()
		if w.stopped || len(w.idle) >= maxIdleRelayWorkers {
			w.mu.Unlock()
			return
		}
		w.idle = append(w.idle, wk)
		w.mu.Unlock()
		var ok bool
		if t, ok = <-wk.tasks; !ok {
			return
		}
	}
}

// stop ends the idle workers and waits for the busy ones to finish their loops (the caller
// has ended the sessions running them). Loops started later run on goroutines of their own.
func (w *relayWorkers) stop() {
	w.mu.Lock()
	w.stopped = true
	idle := w.idle
	w.idle = nil
	w.mu.Unlock()
	for _, wk := range idle {
		close(wk.tasks)
	}
	w.wg.Wait()
}
