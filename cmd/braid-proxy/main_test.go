package main

import (
	"strings"
	"testing"
)

// A pod spec from before braid-init (an older injector, a mutable image tag) fails with
// the way to the new binary, not a flag error.
func TestInitSaysWhereItWent(t *testing.T) {
	err := run([]string{"init", "--proxy-uid", "2102"})
	if err == nil || !strings.Contains(err.Error(), "/braid-init") {
		t.Errorf("braid-proxy init: %v, want an error naming /braid-init", err)
	}
}
