package pool

import (
	"sort"
	"sync"
)

// Set holds one Pool per route key, created on first use.
type Set struct {
	mu     sync.Mutex
	pools  map[string]*Pool
	closed bool
}

// NewSet returns an empty Set.
func NewSet() *Set {
	return &Set{pools: make(map[string]*Pool)}
}

// Get returns the pool for cfg.Key, creating it from cfg if it does not exist yet. It returns
// nil after Close.
func (s *Set) Get(cfg Config) *Pool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	if p, ok := s.pools[cfg.Key]; ok {
		return p
	}
	p := New(cfg)
	s.pools[cfg.Key] = p
	return p
}

// Lookup returns the pool for key if it exists.
func (s *Set) Lookup(key string) (*Pool, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pools[key]
	return p, ok
}

// Stats returns a snapshot of every pool, ordered by key.
func (s *Set) Stats() []Stat {
	s.mu.Lock()
	pools := make([]*Pool, 0, len(s.pools))
	for _, p := range s.pools {
		pools = append(pools, p)
	}
	s.mu.Unlock()
	stats := make([]Stat, 0, len(pools))
	for _, p := range pools {
		stats = append(stats, p.Stat())
	}
	sort.Slice(stats, func(i, j int) bool { return stats[i].Key < stats[j].Key })
	return stats
}

// Close closes every pool.
func (s *Set) Close() {
	s.mu.Lock()
	s.closed = true
	pools := s.pools
	s.pools = map[string]*Pool{}
	s.mu.Unlock()
	for _, p := range pools {
		p.Close()
	}
}
