package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/braidmesh/braid/proxy/api"
)

// Backend is an HTTP server that answers every request with its own name.
type Backend struct {
	Name string
	Addr netip.AddrPort
	srv  *http.Server
}

// StartBackend starts a backend named name on ip (a loopback address such as 127.0.0.2).
func StartBackend(name, ip string) (*Backend, error) {
	lis, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", name, err)
	}
	b := &Backend{Name: name, Addr: netip.MustParseAddrPort(lis.Addr().String())}
	b.srv = &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			_, _ = io.WriteString(w, name+"\n")
		}),
	}
	go func() { _ = b.srv.Serve(lis) }()
	return b, nil
}

// Close stops the backend.
func (b *Backend) Close() error { return b.srv.Close() }

// BuildProxy builds braid-proxy into dir and returns the binary's path.
func BuildProxy(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "braid-proxy")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/braid-proxy")
	cmd.Dir = RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building braid-proxy: %w\n%s", err, out)
	}
	return bin, nil
}

// Proxy is a braid-proxy process.
type Proxy struct {
	OutboundAddr string
	AdminAddr    string
	cmd          *exec.Cmd
	exited       chan struct{}
	client       *http.Client
}

// StartProxy starts the braid-proxy binary bin for a workload in namespace, streaming
// config from controlPlane; its logs go to logs. It returns once the admin port answers.
func StartProxy(ctx context.Context, bin, controlPlane, namespace string, logs io.Writer) (*Proxy, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	p := &Proxy{
		OutboundAddr: ports[0], AdminAddr: ports[1], exited: make(chan struct{}),
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}},
	}
	p.cmd = exec.Command(bin, "--control-plane", controlPlane, "--namespace", namespace,
		"--outbound-listen", p.OutboundAddr, "--admin-listen", p.AdminAddr, "--proxy-id", "harness-proxy",
		"--drain-timeout", "5s", "-v", "1")
	p.cmd.Stdout, p.cmd.Stderr = logs, logs
	// The proxy dies with the process that started it, even if that one is killed.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting braid-proxy: %w", err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	if err := p.waitLive(ctx); err != nil {
		_ = p.Stop()
		return nil, err
	}
	return p, nil
}

func (p *Proxy) waitLive(ctx context.Context) error {
	for {
		resp, err := p.client.Get("http://" + p.AdminAddr + "/live")
		if err == nil {
			_ = resp.Body.Close()
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("braid-proxy exited at start: %v", p.cmd.ProcessState)
		case <-ctx.Done():
			return fmt.Errorf("waiting for braid-proxy's admin port: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Stop asks the proxy to stop (SIGTERM) and waits for it; it kills it after 10 s.
func (p *Proxy) Stop() error {
	if p.cmd.Process == nil {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return errors.New("braid-proxy did not stop within 10s of SIGTERM")
	}
	return nil
}

// Snapshot returns the configuration the proxy runs now, from its admin /config.
func (p *Proxy) Snapshot(ctx context.Context) (*api.Snapshot, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.AdminAddr+"/config", nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reading the proxy's config: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("reading the proxy's config: %w", err)
	}
	snap := &api.Snapshot{}
	if err := protojson.Unmarshal(body, snap); err != nil {
		return nil, fmt.Errorf("decoding the proxy's config: %w", err)
	}
	return snap, nil
}

// WaitForConfig polls the proxy's /config until cond holds, and returns that snapshot.
func (p *Proxy) WaitForConfig(ctx context.Context, cond func(*api.Snapshot) bool) (*api.Snapshot, error) {
	for {
		snap, err := p.Snapshot(ctx)
		if err == nil && cond(snap) {
			return snap, nil
		}
		select {
		case <-ctx.Done():
			return snap, waitFailed("waiting for the proxy's config", err, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Result is one request's outcome through the proxy.
type Result struct {
	Status int
	Body   string
}

// Get sends one request through the proxy's outbound listener for host.
func (p *Proxy) Get(ctx context.Context, host string) (Result, error) {
	return p.Do(ctx, host, nil)
}

// Do sends one GET / through the proxy's outbound listener for host, with header.
func (p *Proxy) Do(ctx context.Context, host string, header http.Header) (Result, error) {
	return p.Request(ctx, host, "/", header)
}

// Request sends one GET for path through the proxy's outbound listener for host, with header.
func (p *Proxy) Request(ctx context.Context, host, path string, header http.Header) (Result, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.OutboundAddr+path, nil)
	if err != nil {
		return Result{}, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Host = host
	resp, err := p.client.Do(req)
	if err != nil {
		return Result{}, fmt.Errorf("request for %s: %w", host, err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return Result{}, fmt.Errorf("reading the answer for %s: %w", host, err)
	}
	return Result{Status: resp.StatusCode, Body: strings.TrimSpace(string(body))}, nil
}

// Spread sends n requests for host over 8 concurrent connections and counts the answers
// by backend name; an answer other than 200 counts under "HTTP <status>".
func (p *Proxy) Spread(ctx context.Context, host string, n int) (map[string]int, error) {
	var (
		mu     sync.Mutex
		counts = map[string]int{}
		wg     sync.WaitGroup
		errs   = make(chan error, 8)
		next   = make(chan struct{}, n)
	)
	for range n {
		next <- struct{}{}
	}
	close(next)
	for range 8 {
		wg.Go(func() {
			for range next {
				res, err := p.Get(ctx, host)
				if err != nil {
					errs <- err
					return
				}
				key := res.Body
				if res.Status != http.StatusOK {
					key = fmt.Sprintf("HTTP %d", res.Status)
				}
				mu.Lock()
				counts[key]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	return counts, <-errs
}

// freePorts reserves n loopback ports and releases them for a child process to bind.
func freePorts(n int) ([]string, error) {
	out := make([]string, 0, n)
	for range n {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		defer func() { _ = lis.Close() }()
		out = append(out, lis.Addr().String())
	}
	return out, nil
}
