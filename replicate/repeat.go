package replicate

import "sync"

// repeatLog tracks one kind of failure that a loop retries, so it is
// logged when it starts or changes, not on every retry; the repeats are
// counted and reported when it ends or changes.
type repeatLog struct {
	mu      sync.Mutex
	last    string
	repeats int
}

// changed reports whether msg differs from the failure logged last (and
// makes it the one to compare with); otherwise it counts a repeat.
func (r *repeatLog) changed(msg string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if msg == r.last {
		r.repeats++
		return false
	}
	r.last, r.repeats = msg, 0
	return true
}

// clear ends the failure and returns it with its repeat count ("" when
// there was none).
func (r *repeatLog) clear() (last string, repeats int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	last, repeats = r.last, r.repeats
	r.last, r.repeats = "", 0
	return last, repeats
}
