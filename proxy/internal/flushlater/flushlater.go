// Package flushlater defers the flush of an HTTP/2 connection's write buffer until the
// goroutines that are ready have run, so that frames written together by several
// streams leave in one write (and one TLS record) rather than one each. h2client and
// h2server use it on busy connections.
package flushlater

import "runtime"

// Flusher runs a connection's deferred flushes. Its zero value is not usable: see New.
type Flusher struct {
	due  chan struct{} // cap 1: a flush is due
	stop chan struct{}
}

// New returns a Flusher; Run must be started for its flushes to happen.
func New() *Flusher {
	return &Flusher{due: make(chan struct{}, 1), stop: make(chan struct{})}
}

// Soon asks for a flush. A flush already due takes the caller's frames too.
func (f *Flusher) Soon() {
	select {
	case f.due <- struct{}{}:
	default:
	}
}

// Stop ends Run. It must be called once.
func (f *Flusher) Stop() { close(f.stop) }

// Run calls flush for each flush asked for, after yielding to the goroutines that are
// ready: they may be about to write too. It returns when stopped, or when flush fails.
func (f *Flusher) Run(flush func() error) {
	for {
		select {
		case <-f.due:
		case <-f.stop:
			return
		}
		runtime.Gosched()
		if flush() != nil {
			return
		}
	}
}
