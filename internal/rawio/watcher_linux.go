package rawio

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// Watcher wakes a Waker when a watched socket becomes readable, with one epoll instance and
// one goroutine for all of them, so that a connection idly waiting for its peer needs no
// goroutine of its own (a parked goroutine costs its stack, 2 to 8 KB; a watch costs a map
// entry here and the kernel's epoll item). The epoll instance is itself waited on through the
// runtime's poller, so the Watcher's goroutine holds no thread while it waits, and waking it
// costs no thread switch.
//
// A watch is one-shot: it wakes its Waker once, for the first readiness (data, hang-up or
// error), after which the socket must be watched again to wake it again. Readiness is
// level-triggered, so data that arrived before Watch wakes at once.
type Watcher struct {
	// file holds the epoll descriptor for the runtime's poller; rc waits on it.
	file *os.File
	rc   syscall.RawConn

	mu      sync.Mutex
	waiting map[uint64]Waker
	closed  bool

	// Watch's epoll_ctl, under ctlMu: its arguments and result are kept here and its callbacks
	// bound once, so that a Watch allocates nothing (closures capturing them cost four
	// allocations a watch, one per login under a connection per transaction).
	ctlMu            sync.Mutex
	ctlKey           uint64
	ctlFd            uintptr
	ctlErr           error
	onSockFn, onEpFn func(fd uintptr)

	done chan struct{}
}

// Waker is woken by a Watcher. Wake runs on the Watcher's goroutine: it must not block.
type Waker interface {
	Wake()
}

// NewWatcher starts a Watcher; Close stops it.
func NewWatcher() (*Watcher, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	if err := syscall.SetNonblock(epfd, true); err != nil {
		_ = syscall.Close(epfd)
		return nil, fmt.Errorf("epoll non-blocking: %w", err)
	}
	// Non-blocking, so os.NewFile hands it to the runtime's poller.
	file := os.NewFile(uintptr(epfd), "rawio-watcher")
	rc, err := file.SyscallConn()
	if err != nil {
		_ = file.Close()
		return nil, fmt.Errorf("epoll raw conn: %w", err)
	}
	w := &Watcher{file: file, rc: rc, waiting: make(map[uint64]Waker), done: make(chan struct{})}
	w.onSockFn, w.onEpFn = w.onSock, w.onEp
	go w.loop()
	return w, nil
}

// setKey stores key in the event's 64 bits of user data (Fd and Pad in Go's layout).
func setKey(ev *syscall.EpollEvent, key uint64) {
	ev.Fd = int32(uint32(key))
	ev.Pad = int32(uint32(key >> 32))
}

func keyOf(ev *syscall.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// ErrWatcherClosed is returned by Watch after Close.
var ErrWatcherClosed = errors.New("rawio: watcher closed")

// Watch wakes wk, once, when c's socket becomes readable or is hung up. key identifies the
// watch and must be unique among the Watcher's watches. The socket is added to the epoll set
// the first time, and re-armed later (an EPOLL_CTL_ADD that finds it there already is followed
// by an EPOLL_CTL_MOD); it stays in the set until closed. ADD is tried first because most
// sockets are watched once, right after their login, and a connection per transaction then
// saves a system call; one that is watched again, after a while of use, pays it.
//
// The socket is reached through c's RawConn, so that a Close racing with Watch cannot make it
// act on a reused descriptor; the kernel drops a closed socket from the set by itself. A Watch
// that fails wakes nothing: the caller keeps reading on its own.
func (w *Watcher) Watch(c *Conn, key uint64, wk Waker) error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return ErrWatcherClosed
	}
	w.waiting[key] = wk
	w.mu.Unlock()
	// Both descriptors are reached through their RawConns, which keep them open meanwhile.
	w.ctlMu.Lock()
	w.ctlKey, w.ctlErr = key, nil
	err := c.rc.Control(w.onSockFn)
	if err == nil {
		err = w.ctlErr
	}
	w.ctlMu.Unlock()
	if err != nil {
		w.Forget(key)
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	return nil
}

// onSock is Watch's callback with the socket's descriptor (under ctlMu).
func (w *Watcher) onSock(fd uintptr) {
	w.ctlFd = fd
	if err := w.rc.Control(w.onEpFn); err != nil {
		w.ctlErr = err
	}
}

// onEp is Watch's callback with the epoll descriptor (under ctlMu): it adds the socket to the
// set, or re-arms it.
func (w *Watcher) onEp(epfd uintptr) {
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT}
	setKey(&ev, w.ctlKey)
	err := epollCtl(epfd, syscall.EPOLL_CTL_ADD, w.ctlFd, &ev)
	if err == syscall.EEXIST {
		err = epollCtl(epfd, syscall.EPOLL_CTL_MOD, w.ctlFd, &ev)
	}
	w.ctlErr = err
}

// Forget drops the watch key without waking its Waker, for a caller woken another way. An
// event already on its way for it is then ignored.
func (w *Watcher) Forget(key uint64) {
	w.mu.Lock()
	delete(w.waiting, key)
	w.mu.Unlock()
}

// Len returns the number of watches waiting.
func (w *Watcher) Len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.waiting)
}

func (w *Watcher) loop() {
	defer close(w.done)
	events := make([]syscall.EpollEvent, 128)
	// The epoll instance is edge-triggered in the runtime's poller: each wait drains it. A
	// batch smaller than events emptied it, so the loop waits then: an event arriving later
	// makes the runtime's poller report it, the wait returns at once, and no event is lost
	// for the one system call saved.
	poll := func(fd uintptr) bool {
		for {
			n, err := epollPoll(fd, events)
			if err == syscall.EINTR {
				continue
			}
			if err != 0 {
				return true // not expected with a valid epoll descriptor
			}
			w.dispatch(events[:n])
			if n < len(events) {
				return false
			}
		}
	}
	if err := w.rc.Read(poll); err != nil {
		return // Close
	}
	// epoll_wait failed: the watches would never wake, so wake them all (each reads for
	// itself) and refuse new ones.
	w.wakeAll()
}

// dispatch wakes the Wakers of events.
func (w *Watcher) dispatch(events []syscall.EpollEvent) {
	for i := range events {
		key := keyOf(&events[i])
		w.mu.Lock()
		wk := w.waiting[key]
		delete(w.waiting, key)
		w.mu.Unlock()
		if wk != nil {
			wk.Wake()
		}
	}
}

// wakeAll wakes every waiting Waker and refuses later watches.
func (w *Watcher) wakeAll() {
	w.mu.Lock()
	waiting := w.waiting
	w.waiting = make(map[uint64]Waker)
	w.closed = true
	w.mu.Unlock()
	for _, wk := range waiting {
		wk.Wake()
	}
}

// Close stops the Watcher; the watches still waiting are woken, so that no waiter is lost.
// Calling it again does nothing.
func (w *Watcher) Close() error {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	err := w.file.Close() // ends the loop's wait (if epoll_wait failed, the loop has ended)
	<-w.done
	w.wakeAll()
	if errors.Is(err, os.ErrClosed) {
		return nil
	}
	return err
}

// epollCtl and epollPoll are epoll_ctl and a non-blocking epoll_wait as raw system calls: they
// never block, and an ordinary system call would tell the scheduler, whose monitor then keeps
// waking every 20 us on a busy proxy (see Conn).
func epollCtl(epfd uintptr, op int, fd uintptr, ev *syscall.EpollEvent) error {
	_, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_CTL, epfd, uintptr(op), fd, uintptr(unsafe.Pointer(ev)), 0, 0)
	if e != 0 {
		return e // a syscall.Errno, compared by callers
	}
	return nil
}

func epollPoll(epfd uintptr, events []syscall.EpollEvent) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, epfd, uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	return int(n), e
}
