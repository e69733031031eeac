package blockdev

import "sync"

// Syncer shares one sync among concurrent callers (group commit).
//
// A call to Sync returns once a sync that started after the call began has
// finished, so every write that completed before Sync was called is covered.
// Callers that arrive while a sync is running wait for the next one, which
// then covers all of them: n concurrent callers cost at most two syncs.
type Syncer struct {
	sync func() error

	mu      sync.Mutex
	cond    *sync.Cond
	running bool
	started uint64 // generation of the last sync started
	done    uint64 // generation of the last sync finished
	err     error  // result of generation done
	dirty   bool   // a write may have happened since the last sync started
	waiters int    // callers blocked waiting for a sync (for tests)
}

// NewSyncer returns a Syncer that calls fn to sync.
func NewSyncer(fn func() error) *Syncer {
	s := &Syncer{sync: fn, dirty: true}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// MarkDirty records that a write completed; a Sync after it will sync. A
// Sync with nothing marked dirty since the last sync returns at once.
func (s *Syncer) MarkDirty() {
	s.mu.Lock()
	s.dirty = true
	s.mu.Unlock()
}

// Sync syncs (or joins a sync that covers the caller) and returns its error.
func (s *Syncer) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.dirty && !s.running {
		return s.err
	}
	// The generation that covers us is the next one to start.
	want := s.started + 1
	for s.done < want {
		if !s.running {
			s.running = true
			s.started++
			gen := s.started
			s.dirty = false
			s.mu.Unlock()
			err := s.sync()
			s.mu.Lock()
			s.running = false
			s.done = gen
			s.err = err
			if err != nil {
				s.dirty = true // nothing is known durable; the next Sync retries
			}
			s.cond.Broadcast()
			continue
		}
		s.waiters++
		s.cond.Wait()
		s.waiters--
	}
	return s.err
}
