package mesh_test

import (
	"net/http"
	"strings"
	"testing"
)

// The client proxy continues the trace a request carries with a span of its own.
func TestTraceContextContinuesThroughThePair(t *testing.T) {
	p := newPair(t)
	req, err := http.NewRequest(http.MethodGet, p.client.URL+"/traced", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "reviews"
	req.Header.Set("Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	resp, err := p.client.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	seen := <-p.seen
	parts := strings.Split(seen.Get("Traceparent"), "-")
	if len(parts) != 4 || parts[1] != "4bf92f3577b34da6a3ce929d0e0e4736" || parts[2] == "00f067aa0ba902b7" {
		t.Errorf("the app saw traceparent %q, want the same trace with the proxy's span as parent", seen.Get("Traceparent"))
	}
}
