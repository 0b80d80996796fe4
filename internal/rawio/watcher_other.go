//go:build !linux

package rawio

import "errors"

// Watcher is available on Linux only (epoll); elsewhere NewWatcher fails and connections
// wait on goroutines of their own.
type Watcher struct{}

// Waker is woken by a Watcher.
type Waker interface {
	Wake()
}

// ErrWatcherClosed is returned by Watch after Close.
var ErrWatcherClosed = errors.New("rawio: watcher closed")

// NewWatcher fails: there is no epoll here.
func NewWatcher() (*Watcher, error) { return nil, errors.New("rawio: no watcher on this system") }

// Watch is never called: there is no Watcher.
func (w *Watcher) Watch(c *Conn, key uint64, wk Waker) error { return ErrWatcherClosed }

// Forget is never called: there is no Watcher.
func (w *Watcher) Forget(key uint64) {}

// Len is never called: there is no Watcher.
func (w *Watcher) Len() int { return 0 }

// Close is never called: there is no Watcher.
func (w *Watcher) Close() error { return nil }
