package outbound

import (
	"net/http"
	"strings"
	"testing"
)

func TestContinueTraceW3C(t *testing.T) {
	h := http.Header{}
	h.Set("Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	h.Set("Tracestate", "vendor=opaque")
	continueTrace(h)
	parts := strings.Split(h.Get("Traceparent"), "-")
	if len(parts) != 4 || parts[1] != "4bf92f3577b34da6a3ce929d0e0e4736" || parts[3] != "01" {
		t.Fatalf("traceparent = %q: the trace id and flags must carry through", h.Get("Traceparent"))
	}
	if parts[2] == "00f067aa0ba902b7" || !isHex(parts[2], 16) || parts[2] == strings.Repeat("0", 16) {
		t.Errorf("parent id %q: want a new, valid span id", parts[2])
	}
	if h.Get("Tracestate") != "vendor=opaque" {
		t.Errorf("tracestate changed: %q", h.Get("Tracestate"))
	}
	for _, bad := range []string{"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "00-xyz-00f067aa0ba902b7-01",
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01", "garbage"} {
		h := http.Header{"Traceparent": {bad}}
		continueTrace(h)
		if h.Get("Traceparent") != bad {
			t.Errorf("malformed traceparent %q was rewritten to %q", bad, h.Get("Traceparent"))
		}
	}
}

func TestContinueTraceB3(t *testing.T) {
	h := http.Header{}
	h.Set("X-B3-TraceId", "463ac35c9f6413ad48485a3953bb6124")
	h.Set("X-B3-SpanId", "a2fb4a1d1a96d312")
	h.Set("X-B3-Sampled", "1")
	continueTrace(h)
	if h.Get("X-B3-ParentSpanId") != "a2fb4a1d1a96d312" || h.Get("X-B3-SpanId") == "a2fb4a1d1a96d312" || h.Get("X-B3-TraceId") != "463ac35c9f6413ad48485a3953bb6124" {
		t.Errorf("B3 multi headers = %v: want the app's span as parent and a new span", h)
	}

	single := http.Header{"B3": {"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"}}
	continueTrace(single)
	parts := strings.Split(single.Get("B3"), "-")
	if len(parts) != 4 || parts[0] != "80f198ee56343ba864fe8b2a57d3eff7" || parts[3] != "e457b5a2e4d86bd1" || parts[2] != "1" || parts[1] == "e457b5a2e4d86bd1" {
		t.Errorf("b3 = %q: want trace-newspan-1-e457b5a2e4d86bd1", single.Get("B3"))
	}
	for _, keep := range []string{"0", "1", "d"} {
		h := http.Header{"B3": {keep}}
		continueTrace(h)
		if h.Get("B3") != keep {
			t.Errorf("the sampling-only b3 %q was rewritten to %q", keep, h.Get("B3"))
		}
	}
}

func TestNoTraceIsStarted(t *testing.T) {
	h := http.Header{}
	continueTrace(h)
	if len(h) != 0 {
		t.Errorf("a request without trace headers got %v", h)
	}
}
