package flushlater

import (
	"errors"
	"testing"
	"time"
)

// Asked twice before it runs, the Flusher flushes once; it stops on Stop, and on a
// flush that fails.
func TestFlusher(t *testing.T) {
	f := New()
	f.Soon()
	f.Soon() // joins the flush already due
	flushes := make(chan struct{}, 4)
	done := make(chan struct{})
	go func() {
		f.Run(func() error { flushes <- struct{}{}; return nil })
		close(done)
	}()
	<-flushes
	select {
	case <-flushes:
		t.Fatal("two requests before a flush made two flushes")
	case <-time.After(50 * time.Millisecond):
	}
	f.Stop()
	<-done

	failing := New()
	failing.Soon()
	returned := make(chan struct{})
	go func() {
		failing.Run(func() error { return errors.New("broken pipe") })
		close(returned)
	}()
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		t.Fatal("Run went on after a failed flush")
	}
}
