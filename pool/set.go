package pool

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"
)

// ErrTooManyPools is returned by Set.Join when a new pool would exceed SetOptions.MaxPools.
var ErrTooManyPools = errors.New("too many pools")

// SetOptions configures a Set.
type SetOptions struct {
	// MaxPools caps the pools whose Config.Keep is false: clients choose their (database, user)
	// pairs, and each pool costs a goroutine, metric series and memory. 0 = no limit.
	MaxPools int
	// SweepInterval is how often pools that nobody uses are checked for removal; 0 = 1s.
	SweepInterval time.Duration
	// OnRemove, when set, is called (without the Set's lock) when the last pool of a database
	// and user leaves the Set, so that their metric series can go too.
	OnRemove func(database, user string)
}

// Set holds one Pool per route key, created on first use. Pools of configured routes
// (Config.Keep) stay until Close. Any other pool stays while a client uses it (between Join and
// Leave) and, once unused, for as long as its upstream has accepted a login and is not failing:
// a pool that never connected, or whose last dial failed and that holds no connection, is closed
// and forgotten (with its goroutine and metric series) as soon as its last user leaves or the
// sweep finds it.
type Set struct {
	opts SetOptions

	mu      sync.Mutex
	pools   map[string]*Pool
	dynamic int // pools with Keep false
	closed  bool

	stop chan struct{}
	wg   sync.WaitGroup
}

// NewSet returns an empty Set and starts its sweep goroutine, which Close stops.
func NewSet(opts SetOptions) *Set {
	if opts.SweepInterval <= 0 {
		opts.SweepInterval = time.Second
	}
	s := &Set{opts: opts, pools: make(map[string]*Pool), stop: make(chan struct{})}
	s.wg.Go(s.sweepLoop)
	return s
}

// Join returns the pool for key, creating it with newCfg() when there is none, and counts the
// caller as its user until Leave. newCfg is called without the Set's lock (parsing a connection
// string is not free) and only when the pool is missing; its Config's Key must be key. Join
// fails with ErrTooManyPools when the pool would be one more than MaxPools, with ErrClosed after
// Close, and with newCfg's error.
func (s *Set) Join(key string, newCfg func() (Config, error)) (*Pool, error) {
	s.mu.Lock()
	if p, err := s.joinLocked(key); p != nil || err != nil {
		s.mu.Unlock()
		return p, err
	}
	s.mu.Unlock()
	cfg, err := newCfg()
	if err != nil {
		return nil, err
	}
	cfg.Key = key
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, err := s.joinLocked(key); p != nil || err != nil {
		return p, err // another caller created it meanwhile
	}
	if !cfg.Keep {
		if s.opts.MaxPools > 0 && s.dynamic >= s.opts.MaxPools {
			return nil, fmt.Errorf("%w (max_pools=%d)", ErrTooManyPools, s.opts.MaxPools)
		}
		s.dynamic++
	}
	p := New(cfg)
	p.users, p.keep = 1, cfg.Keep
	s.pools[key] = p
	return p, nil
}

// joinLocked counts a user of the existing pool for key; nil, nil when there is none.
func (s *Set) joinLocked(key string) (*Pool, error) {
	if s.closed {
		return nil, ErrClosed
	}
	p, ok := s.pools[key]
	if !ok {
		return nil, nil
	}
	p.users++
	return p, nil
}

// Leave ends a use that Join began. The pool is closed and forgotten if it was the last user
// and the pool is not worth keeping (see Set), or was dropped by Drop. The caller must hold none
// of its connections.
func (s *Set) Leave(p *Pool) {
	s.mu.Lock()
	p.users--
	gone := s.removeIfUnwantedLocked(p) || p.dropped && p.users == 0
	s.mu.Unlock()
	if gone {
		p.Close()
		s.removed(p)
	}
}

// removed tells OnRemove that p left, if no other pool has its labels.
func (s *Set) removed(p *Pool) {
	if s.opts.OnRemove == nil {
		return
	}
	s.mu.Lock()
	for _, q := range s.pools {
		if q.cfg.Database == p.cfg.Database && q.cfg.User == p.cfg.User {
			s.mu.Unlock()
			return
		}
	}
	s.mu.Unlock()
	s.opts.OnRemove(p.cfg.Database, p.cfg.User)
}

// Each calls fn for every pool, without the Set's lock.
func (s *Set) Each(fn func(*Pool)) {
	s.mu.Lock()
	pools := make([]*Pool, 0, len(s.pools))
	for _, p := range s.pools {
		pools = append(pools, p)
	}
	s.mu.Unlock()
	for _, p := range pools {
		fn(p)
	}
}

// Reconfigure applies cfg to the pool for its Key, if there is one: Pool.Reconfigure, and Keep.
func (s *Set) Reconfigure(cfg Config) {
	s.mu.Lock()
	p, ok := s.pools[cfg.Key]
	if ok && p.keep != cfg.Keep {
		p.keep = cfg.Keep
		if cfg.Keep {
			s.dynamic--
		} else {
			s.dynamic++
		}
	}
	s.mu.Unlock()
	if ok {
		p.Reconfigure(cfg)
	}
}

// SetMaxPools changes SetOptions.MaxPools; pools beyond a lower limit stay.
func (s *Set) SetMaxPools(n int) {
	s.mu.Lock()
	s.opts.MaxPools = n
	s.mu.Unlock()
}

// Drop forgets the pool for key (a route that changed or went): a later Join makes a new one.
// Its users keep it until they Leave; its idle connections are closed now and the others as they
// are released; the last Leave closes it.
func (s *Set) Drop(key string) {
	s.mu.Lock()
	p, ok := s.pools[key]
	if ok {
		delete(s.pools, key)
		if !p.keep {
			s.dynamic--
		}
		p.dropped = true
	}
	unused := ok && p.users == 0
	s.mu.Unlock()
	switch {
	case unused:
		p.Close()
		s.removed(p)
	case ok:
		// No refill either: the pool only serves its remaining users until they move.
		p.stopRefill()
		p.Retire(func(*Conn) bool { return true })
	}
}

// removeIfUnwantedLocked takes p out of the Set if nobody uses it and it is not worth keeping.
func (s *Set) removeIfUnwantedLocked(p *Pool) bool {
	if p.users > 0 || p.keep || s.pools[p.cfg.Key] != p || !p.unwanted() {
		return false
	}
	delete(s.pools, p.cfg.Key)
	s.dynamic--
	return true
}

// sweepLoop removes the unused pools that started failing after their last user left (a
// database dropped under a min_pool_size pool, say).
func (s *Set) sweepLoop() {
	t := time.NewTicker(s.opts.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		var gone []*Pool
		s.mu.Lock()
		for _, p := range s.pools {
			if s.removeIfUnwantedLocked(p) {
				gone = append(gone, p)
			}
		}
		s.mu.Unlock()
		for _, p := range gone {
			p.Close()
			s.removed(p)
		}
	}
}

// Lookup returns the pool for key if it exists, without counting a user: for inspection only.
func (s *Set) Lookup(key string) (*Pool, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pools[key]
	return p, ok
}

// Len returns how many pools the Set holds.
func (s *Set) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pools)
}

// Stats returns a snapshot of every pool, ordered by key.
func (s *Set) Stats() []Stat {
	s.mu.Lock()
	pools := make([]*Pool, 0, len(s.pools))
	for _, p := range s.pools {
		pools = append(pools, p)
	}
	s.mu.Unlock()
	users := make([]int, len(pools))
	s.mu.Lock()
	for i, p := range pools {
		users[i] = p.users
	}
	s.mu.Unlock()
	stats := make([]Stat, 0, len(pools))
	for i, p := range pools {
		st := p.Stat()
		st.Clients = users[i]
		stats = append(stats, st)
	}
	sort.Slice(stats, func(i, j int) bool { return stats[i].Key < stats[j].Key })
	return stats
}

// Close closes every pool and stops the sweep. Join fails afterwards.
func (s *Set) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	pools := s.pools
	s.pools = map[string]*Pool{}
	s.mu.Unlock()
	close(s.stop)
	s.wg.Wait()
	for _, p := range pools {
		p.Close()
	}
}
