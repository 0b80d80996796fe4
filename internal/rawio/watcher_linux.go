package rawio

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
)

// Watcher wakes a Waker when a watched socket becomes readable, with one goroutine and one
// epoll instance for all of them, so that a connection idly waiting for its peer needs no
// goroutine of its own (a parked goroutine costs its stack, 2 to 8 KB; a watch costs a map
// entry here and the kernel's epoll item).
//
// A watch is one-shot: it wakes its Waker once, for the first readiness (data, hang-up or
// error), after which the socket must be watched again to wake it again. Readiness is
// level-triggered, so data that arrived before Watch wakes at once.
type Watcher struct {
	epfd int
	// wakeFd is an eventfd that Close writes to, to end the loop.
	wakeFd int

	mu      sync.Mutex
	waiting map[uint64]Waker
	closed  bool

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
	efd, _, errno := syscall.Syscall(syscall.SYS_EVENTFD2, 0, syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if errno != 0 {
		_ = syscall.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", errno)
	}
	w := &Watcher{epfd: epfd, wakeFd: int(efd), waiting: make(map[uint64]Waker), done: make(chan struct{})}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
	setKey(&ev, closeKey)
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, w.wakeFd, &ev); err != nil {
		_ = syscall.Close(w.wakeFd)
		_ = syscall.Close(epfd)
		return nil, fmt.Errorf("epoll_ctl eventfd: %w", err)
	}
	go w.loop()
	return w, nil
}

// closeKey is the key of the Watcher's own eventfd; Watch refuses it.
const closeKey = ^uint64(0)

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
// watch and must be unique among c's watches and never closeKey; first says c was never
// watched by w before (its socket is added to the epoll set, later watches re-arm it).
//
// The socket is reached through c's RawConn, so that a Close racing with Watch cannot make it
// act on a reused descriptor; the kernel drops a closed socket from the set by itself. A Watch
// that fails wakes nothing: the caller keeps reading on its own.
func (w *Watcher) Watch(c *Conn, key uint64, first bool, wk Waker) error {
	if key == closeKey {
		return errors.New("rawio: reserved watch key")
	}
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return ErrWatcherClosed
	}
	w.waiting[key] = wk
	w.mu.Unlock()
	op := syscall.EPOLL_CTL_MOD
	if first {
		op = syscall.EPOLL_CTL_ADD
	}
	var ctlErr error
	err := c.rc.Control(func(fd uintptr) {
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT}
		setKey(&ev, key)
		ctlErr = syscall.EpollCtl(w.epfd, op, int(fd), &ev)
	})
	if err == nil {
		err = ctlErr
	}
	if err != nil {
		w.Forget(key)
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	return nil
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
	for {
		n, err := syscall.EpollWait(w.epfd, events, -1)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			// Not expected with a valid epoll descriptor; the watches would never wake, so
			// wake them all: each reads for itself.
			w.wakeAll()
			return
		}
		for i := range events[:n] {
			key := keyOf(&events[i])
			if key == closeKey {
				return
			}
			w.mu.Lock()
			wk := w.waiting[key]
			delete(w.waiting, key)
			w.mu.Unlock()
			if wk != nil {
				wk.Wake()
			}
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
func (w *Watcher) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		<-w.done
		return nil
	}
	w.closed = true
	w.mu.Unlock()
	one := [8]byte{1}
	if _, err := syscall.Write(w.wakeFd, one[:]); err != nil {
		return fmt.Errorf("wake watcher: %w", err)
	}
	<-w.done
	w.wakeAll()
	_ = syscall.Close(w.wakeFd)
	return syscall.Close(w.epfd)
}
