// Command demo-app is the workload of the cluster demo and e2e: a small HTTP server that
// says which service, version and pod answered, and can call another URL (a frontend
// calling reviews) and count the versions that answered.
//
//	GET /                     {"service":"reviews","version":"v1","pod":"reviews-v1-...",
//	                           "client":"spiffe://cluster.local/ns/demo/sa/frontend"}
//	GET /call?url=URL&n=N     calls URL (default $UPSTREAM) N times (default 1) and returns
//	                          {"counts":{"v1":90,"v2":10},"errors":0,"last":{...}}
//	GET /healthz              ok (503 after POST /health?state=down)
//	POST /health?state=S      S is up or down: sets /healthz and the gRPC health status
//	GET /tcp?addr=A&n=N       opens N TCP connections to A (host:port) and, on each, reads
//	                          the server's banner line, sends a line and reads its echo:
//	                          {"ok":5,"errors":0,"banner":"tcp-echo v1 tcp-echo-..."}
//
// /call takes header=Name:Value parameters (repeatable) and sends those headers.
//
// With GRPC_LISTEN (e.g. :9090) it also serves grpc.health.v1.Health there, SERVING for
// the empty service name (and NOT_SERVING after POST /health?state=down). With TCP_LISTEN
// (e.g. :9000) it also serves a server-speaks-first TCP echo there: on connect it writes
// "<service> <version> <pod>\n", then echoes each line it reads.
//
// `demo-app get URL` fetches URL once, prints the body and exits non-zero unless it got
// a 200: a client for Jobs and `kubectl exec` (the image has no shell and no curl).
//
// Environment: SERVICE, VERSION, POD_NAME, UPSTREAM, LISTEN (default :8080), GRPC_LISTEN,
// TCP_LISTEN.
package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
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
	var down atomic.Bool
	grpcHealth := health.NewServer()
	if addr := os.Getenv("GRPC_LISTEN"); addr != "" {
		go serveGRPCHealth(addr, grpcHealth)
	}
	if addr := os.Getenv("TCP_LISTEN"); addr != "" {
		go serveTCPEcho(addr, fmt.Sprintf("%s %s %s", me.Service, me.Version, me.Pod))
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("POST /health", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Query().Get("state") {
		case "up":
			down.Store(false)
			grpcHealth.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
		case "down":
			down.Store(true)
			grpcHealth.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
		default:
			http.Error(w, "state must be up or down", http.StatusBadRequest)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /tcp", func(w http.ResponseWriter, r *http.Request) {
		addr := r.URL.Query().Get("addr")
		if addr == "" {
			http.Error(w, "no addr", http.StatusBadRequest)
			return
		}
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		writeJSON(w, tcpCalls(addr, min(max(n, 1), 1000)))
	})
	mux.HandleFunc("GET /call", func(w http.ResponseWriter, r *http.Request) {
		url := cmp.Or(r.URL.Query().Get("url"), upstream)
		if url == "" {
			http.Error(w, "no url and no $UPSTREAM", http.StatusBadRequest)
			return
		}
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		n = min(max(n, 1), 10000)
		headers := http.Header{}
		for _, h := range r.URL.Query()["header"] {
			name, value, ok := strings.Cut(h, ":")
			if !ok {
				http.Error(w, "header must be Name:Value", http.StatusBadRequest)
				return
			}
			headers.Add(strings.TrimSpace(name), strings.TrimSpace(value))
		}
		res := callResult{URL: url, Counts: map[string]int{}}
		for range n {
			got, err := call(client, url, headers)
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

func call(c *http.Client, url string, headers http.Header) (*reply, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	for name, values := range headers {
		req.Header[name] = values
	}
	resp, err := c.Do(req)
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

func serveGRPCHealth(addr string, hs *health.Server) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatalf("gRPC health: %v", err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	log.Printf("gRPC health on %s", addr)
	log.Fatal(srv.Serve(l))
}

// serveTCPEcho speaks first: it writes banner and a newline, then echoes every line.
func serveTCPEcho(addr, banner string) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatalf("TCP echo: %v", err)
	}
	log.Printf("TCP echo on %s", addr)
	for {
		c, err := l.Accept()
		if err != nil {
			log.Fatalf("TCP echo: %v", err)
		}
		go func() {
			defer func() { _ = c.Close() }()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.WriteString(c, banner+"\n"); err != nil {
				return
			}
			_, _ = io.Copy(c, c)
		}()
	}
}

type tcpResult struct {
	Addr   string `json:"addr"`
	OK     int    `json:"ok"`
	Errors int    `json:"errors"`
	Error  string `json:"error,omitempty"`
	Banner string `json:"banner,omitempty"`
}

// tcpCalls opens n connections to addr; each must deliver a banner line first and then
// echo the line sent to it.
func tcpCalls(addr string, n int) tcpResult {
	res := tcpResult{Addr: addr}
	for i := range n {
		banner, err := tcpCall(addr, fmt.Sprintf("ping %d", i))
		if err != nil {
			res.Errors++
			res.Error = err.Error()
			continue
		}
		res.OK++
		res.Banner = banner
	}
	return res
}

func tcpCall(addr, line string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	banner, err := r.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("%s: reading the banner: %w", addr, err)
	}
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", fmt.Errorf("%s: writing: %w", addr, err)
	}
	echo, err := r.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("%s: reading the echo: %w", addr, err)
	}
	if got := strings.TrimSuffix(echo, "\n"); got != line {
		return "", fmt.Errorf("%s: echoed %q, sent %q", addr, got, line)
	}
	return strings.TrimSuffix(banner, "\n"), nil
}
