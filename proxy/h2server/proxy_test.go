package h2server

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
)

// TestReverseProxyHandler serves httputil.ReverseProxy, as the inbound server does: a
// streamed upstream response with trailers goes through, and an upstream dying mid-body
// (ReverseProxy panics with http.ErrAbortHandler) resets the client's stream.
func TestReverseProxyHandler(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/die" { // no Content-Length: only the reset tells the body is cut
			_, _ = io.WriteString(w, "partial")
			w.(http.Flusher).Flush()
			c, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				_ = c.Close()
			}
			return
		}
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Trailer", "X-Up-Trailer")
		_, _ = io.WriteString(w, "upstream got "+string(body))
		w.(http.Flusher).Flush()
		w.Header().Set("X-Up-Trailer", "t")
	}))
	defer upstream.Close()
	target, _ := url.Parse(upstream.URL)
	h := startServer(t, &Server{Handler: httputil.NewSingleHostReverseProxy(target)}, nil)
	client := h.client(t, nil)

	req, _ := http.NewRequest(http.MethodPost, h.url+"/echo", strings.NewReader("hello"))
	res := fetch(t, client, req)
	check(t, res, http.StatusOK, nil, "upstream got hello")
	if res.trailer.Get("X-Up-Trailer") != "t" {
		t.Errorf("trailers %v, want X-Up-Trailer: t", res.trailer)
	}

	resp, err := client.Get(h.url + "/die")
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		_ = resp.Body.Close()
	}
	if err == nil {
		t.Fatal("a response whose upstream died mid-body read without error")
	}
	check(t, fetch(t, client, getRequest(t, h.url+"/echo")), http.StatusOK, nil, "upstream got ")
}
