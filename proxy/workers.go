package proxy

import (
	"slices"
	"sync"

	"github.com/pgsidecar/pgsidecar/pool"
)

// workers runs tasks on goroutines that are kept between tasks. A new goroutine starts on a
// small stack and grows it (a copy of the stack each time) on the task's first deep calls:
// measured at several percent of the proxy's CPU under pgbench, for the relay loops of every
// transaction and for every login under a connection per transaction. A kept worker has its
// stack already grown.
//
// Idle workers wait for their next task, most recently used first; beyond maxIdleWorkers a
// worker ends when its task does, so the number kept follows the peak number of tasks at once,
// not the number of clients. stop ends them. The zero value is ready to use.
type workers[T task] struct {
	mu      sync.Mutex
	idle    []*worker[T] // most recently parked last
	stopped bool
	wg      sync.WaitGroup
}

// task is what workers run; l is the worker's relay state, kept between tasks so that a relay
// loop allocates none.
type task interface {
	run(l *relayState)
}

// maxIdleWorkers bounds the workers kept waiting, per pool: a parked worker costs its stack.
const maxIdleWorkers = 128

type worker[T task] struct {
	tasks chan T // buffered: handing over a task never blocks
	l     relayState
	// exited is closed when the worker's goroutine ends (see trim).
	exited chan struct{}
}

// relayTask is one serverToClient loop: session s relaying server c until done is closed.
type relayTask struct {
	s    *session
	c    *pool.Conn
	done chan struct{}
}

func (t relayTask) run(l *relayState) { t.s.serverToClient(t.c, t.done, l) }

// sessionTask runs a session: its login (run), or its client loop when it resumes from being
// parked (relay).
type sessionTask struct {
	s      *session
	resume bool
}

func (t sessionTask) run(*relayState) {
	if t.resume {
		t.s.relay()
	} else {
		t.s.run()
	}
}

// start runs t on an idle worker, or on a new one.
func (w *workers[T]) start(t T) {
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
	wk := &worker[T]{tasks: make(chan T, 1), exited: make(chan struct{})}
	go wk.loop(w, t)
}

func (wk *worker[T]) loop(w *workers[T], t T) {
	defer w.wg.Done()
	defer close(wk.exited)
	var none T
	for {
		t.run(&wk.l)
		t = none // let the task's session go while parked
		w.mu.Lock()
		if w.stopped || len(w.idle) >= maxIdleWorkers {
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

// trim ends the idle workers beyond keep, those idle longest first, and returns once each of
// their goroutines is in its deferred calls, about to exit (its stack is freed when it does),
// so that the collection the caller runs next mostly finds those stacks free. After a burst
// of logins the workers it needed, with their grown stacks, would otherwise stay for good (up
// to maxIdleWorkers, up to 16 KB each).
func (w *workers[T]) trim(keep int) {
	w.mu.Lock()
	n := len(w.idle) - keep
	if n <= 0 {
		w.mu.Unlock()
		return
	}
	ended := slices.Clone(w.idle[:n])
	w.idle = slices.Delete(w.idle, 0, n)
	w.mu.Unlock()
	for _, wk := range ended {
		close(wk.tasks)
	}
	for _, wk := range ended {
		<-wk.exited
	}
}

// stop ends the idle workers and waits for the busy ones to finish their tasks (the caller
// has ended the sessions running them). Tasks started later run on goroutines of their own.
func (w *workers[T]) stop() {
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
