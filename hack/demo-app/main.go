// Command demo-app is the workload of the cluster demo and e2e: a small HTTP server that
// says which service, version and pod answered, and can call another URL (a frontend
// calling reviews) and count the versions that answered.
//
//	GET /                     {"service":"reviews","version":"v1","pod":"reviews-v1-...",
//	                           "client":"spiffe://cluster.local/ns/demo/sa/frontend"}
//	GET /call?url=URL&n=N     calls URL (default $UPSTREAM) N times (default 1) and returns
//	                          {"counts":{"v1":90,"v2":10},"errors":0,"last":{...}}
//	GET /healthz              ok
//
// `demo-app get URL` fetches URL once, prints the body and exits non-zero unless it got
// a 200: a client for Jobs and `kubectl exec` (the image has no shell and no curl).
//
// Environment: SERVICE, VERSION, POD_NAME, UPSTREAM, LISTEN (default :8080).
package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strconv"
	"time"
)

type reply struct {
	Service string `json:"service"`
	Version string `json:"version"`
	Pod     string `json:"pod"`
	// Client is the caller's SPIFFE ID, as the inbound sidecar verified it from the
	// caller's mTLS certificate (its Braid-Client-Id header); empty without a mesh peer.
	Client string `json:"client,omitempty"`
}

type callResult struct {
	URL    string         `json:"url"`
	Counts map[string]int `json:"counts"`
	Errors int            `json:"errors"`
	Error  string         `json:"error,omitempty"`
	Last   *reply         `json:"last,omitempty"`
}

func main() {
	if len(os.Args) == 3 && os.Args[1] == "get" {
		os.Exit(get(os.Args[2]))
	}
	me := reply{
		Service: cmp.Or(os.Getenv("SERVICE"), "demo"),
		Version: cmp.Or(os.Getenv("VERSION"), "v1"),
		Pod:     cmp.Or(os.Getenv("POD_NAME"), hostname()),
	}
	upstream := os.Getenv("UPSTREAM")
	client := &http.Client{Timeout: 5 * time.Second}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /call", func(w http.ResponseWriter, r *http.Request) {
		url := cmp.Or(r.URL.Query().Get("url"), upstream)
		if url == "" {
			http.Error(w, "no url and no $UPSTREAM", http.StatusBadRequest)
			return
		}
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		n = min(max(n, 1), 10000)
		res := callResult{URL: url, Counts: map[string]int{}}
		for range n {
			got, err := call(client, url)
			if err != nil {
				res.Errors++
				res.Error = err.Error()
				continue
			}
			res.Counts[got.Version]++
			res.Last = got
		}
		writeJSON(w, res)
	})
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
		answer := me
		answer.Client = r.Header.Get("Braid-Client-Id")
		writeJSON(w, answer)
	})
	addr := cmp.Or(os.Getenv("LISTEN"), ":8080")
	log.Printf("demo-app %s %s (pod %s) listening on %s, upstream %q", me.Service, me.Version, me.Pod, addr, upstream)
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	log.Fatal(srv.ListenAndServe())
}

func get(url string) int {
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Get(url)
	if err != nil {
		_, _ = fmt.Fprintln(os.Stderr, "demo-app get:", err)
		return 1
	}
	defer func() { _ = resp.Body.Close() }()
	_, _ = io.Copy(os.Stdout, resp.Body)
	if resp.StatusCode != http.StatusOK {
		_, _ = fmt.Fprintln(os.Stderr, "demo-app get:", resp.Status)
		return 1
	}
	return 0
}

func call(c *http.Client, url string) (*reply, error) {
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("%s: %s: %s", url, resp.Status, b)
	}
	var got reply
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		return nil, fmt.Errorf("%s: %w", url, err)
	}
	return &got, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}
