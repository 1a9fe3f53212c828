package mesh_test

import (
	"compress/gzip"
	"io"
	"net/http"
	"strings"
	"testing"
)

// Content coding is the client's and the application's business: the client's
// Accept-Encoding reaches the application unchanged (the proxies never ask for a
// compression the client did not ask for, which would make the application compress and
// the proxy decompress every answer), and a compressed answer comes back as the
// application encoded it.
func TestContentEncodingPassesThrough(t *testing.T) {
	p := newPair(t)
	p.appHandler = func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			_, _ = io.WriteString(w, "plain")
			return
		}
		w.Header().Set("Content-Encoding", "gzip")
		gz := gzip.NewWriter(w)
		_, _ = io.WriteString(gz, "compressed")
		_ = gz.Close()
	}
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	defer client.CloseIdleConnections()
	for _, accept := range []string{"", "gzip"} {
		req, err := http.NewRequest(http.MethodGet, p.client.URL+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = "reviews"
		if accept != "" {
			req.Header.Set("Accept-Encoding", accept)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if seen := <-p.seen; seen.Get("Accept-Encoding") != accept {
			t.Errorf("the client sent Accept-Encoding %q, the application saw %q", accept, seen.Get("Accept-Encoding"))
		}
		coding := resp.Header.Get("Content-Encoding")
		switch accept {
		case "":
			if coding != "" || string(body) != "plain" {
				t.Errorf("without Accept-Encoding: Content-Encoding %q, body %q; want none and the plain answer", coding, body)
			}
		default:
			if coding != "gzip" {
				t.Fatalf("with Accept-Encoding gzip: Content-Encoding %q, want the application's gzip", coding)
			}
			gz, err := gzip.NewReader(strings.NewReader(string(body)))
			if err != nil {
				t.Fatalf("the answer is not the application's gzip stream: %v", err)
			}
			if plain, err := io.ReadAll(gz); err != nil || string(plain) != "compressed" {
				t.Errorf("decompressed %q, %v; want the application's answer", plain, err)
			}
		}
	}
}
