package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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
	return StartBackendPort(name, ip, 0)
}

// StartBackendPort is StartBackend on a given port (0 picks a free one). A meshed
// application on its own address uses a fixed port below the ephemeral range: in a pod the
// application and its proxy share one network namespace, so their ports never collide, but
// here the proxy's listeners sit on 127.0.0.1 and a random application port could carry the
// same number as one of them, which the inbound proxy rightly refuses as its own.
func StartBackendPort(name, ip string, port int) (*Backend, error) {
	lis, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
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
	return build(ctx, dir, "braid-proxy")
}

// BuildInit builds braid-init, the pod's init container, into dir and returns the
// binary's path.
func BuildInit(ctx context.Context, dir string) (string, error) {
	return build(ctx, dir, "braid-init")
}

// build builds the command cmd/name into dir.
func build(ctx context.Context, dir, name string) (string, error) {
	bin := filepath.Join(dir, name)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/"+name)
	cmd.Dir = RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building %s: %w\n%s", name, err, out)
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
// config from controlPlane; extraArgs are added to its command line (a later flag overrides
// an earlier one); its logs go to logs. It returns once the admin port answers.
func StartProxy(ctx context.Context, bin, controlPlane, namespace string, logs io.Writer, extraArgs ...string) (*Proxy, error) {
	args := append([]string{"--control-plane", controlPlane, "--namespace", namespace, "--proxy-id", "harness-proxy"}, extraArgs...)
	return startProxy(ctx, bin, logs, "", args...)
}

// StartStandaloneProxy starts the braid-proxy binary bin without a control plane
// (braid-proxy run), configured by configFile, for a workload in namespace; it checks the
// file for changes every 50 ms. extraArgs are added to its command line (a later flag
// overrides an earlier one); its logs go to logs. It returns once the admin port answers.
func StartStandaloneProxy(ctx context.Context, bin, configFile, namespace string, logs io.Writer, extraArgs ...string) (*Proxy, error) {
	args := append([]string{"--config", configFile, "--config-poll", "50ms", "--namespace", namespace}, extraArgs...)
	return startProxy(ctx, bin, logs, "run", args...)
}

// startProxy starts bin with its subcommand (none when empty), the harness's listen
// addresses and defaults, then args.
func startProxy(ctx context.Context, bin string, logs io.Writer, subcommand string, args ...string) (*Proxy, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	p := &Proxy{
		OutboundAddr: ports[0], AdminAddr: ports[1], exited: make(chan struct{}),
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}},
	}
	// The harness's listen addresses and defaults come first, so that args can override them.
	args = append([]string{"--outbound-listen", p.OutboundAddr, "--admin-listen", p.AdminAddr,
		"--drain-timeout", "5s", "-v", "1"}, args...)
	if subcommand != "" {
		args = append([]string{subcommand}, args...)
	}
	p.cmd = exec.Command(bin, args...)
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

// Signal sends sig to the proxy process.
func (p *Proxy) Signal(sig os.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signalling braid-proxy: %w", err)
	}
	return nil
}

// Pid is the proxy process's ID.
func (p *Proxy) Pid() int { return p.cmd.Process.Pid }

// Exited is closed when the proxy process has exited; ExitCode then tells how.
func (p *Proxy) Exited() <-chan struct{} { return p.exited }

// ExitCode is the proxy's exit code once Exited is closed (-1 when a signal killed it).
func (p *Proxy) ExitCode() int {
	<-p.exited
	return p.cmd.ProcessState.ExitCode()
}

// Snapshot returns the configuration the proxy runs now, from its admin /config.
func (p *Proxy) Snapshot(ctx context.Context) (*api.Snapshot, error) {
	body, err := p.Admin(ctx, "/config")
	if err != nil {
		return nil, fmt.Errorf("reading the proxy's config: %w", err)
	}
	snap := &api.Snapshot{}
	if err := protojson.Unmarshal([]byte(body), snap); err != nil {
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
	return p.Send(ctx, http.MethodGet, host, path, header)
}

// Send is Request with another method.
func (p *Proxy) Send(ctx context.Context, method, host, path string, header http.Header) (Result, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+p.OutboundAddr+path, nil)
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

// Sample is one sample of a Prometheus text exposition.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Samples are the samples of one scrape.
type Samples []Sample

// Value returns the value of the sample named name whose labels are exactly labels, and
// whether there is one.
func (s Samples) Value(name string, labels map[string]string) (float64, bool) {
	for _, m := range s {
		if m.Name == name && maps.Equal(m.Labels, labels) {
			return m.Value, true
		}
	}
	return 0, false
}

// Named returns the samples named name.
func (s Samples) Named(name string) Samples {
	var out Samples
	for _, m := range s {
		if m.Name == name {
			out = append(out, m)
		}
	}
	return out
}

// ParseMetrics parses the Prometheus text exposition format (version 0.0.4).
func ParseMetrics(text string) (Samples, error) {
	var out Samples
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s, err := parseSample(line)
		if err != nil {
			return nil, fmt.Errorf("metrics line %d %q: %w", i+1, line, err)
		}
		out = append(out, s)
	}
	return out, nil
}

func parseSample(line string) (Sample, error) {
	s := Sample{Labels: map[string]string{}}
	end := strings.IndexAny(line, "{ ")
	if end <= 0 {
		return s, fmt.Errorf("no metric name")
	}
	s.Name, line = line[:end], line[end:]
	if strings.HasPrefix(line, "{") {
		rest, err := parseLabels(line[1:], s.Labels)
		if err != nil {
			return s, err
		}
		line = rest
	}
	fields := strings.Fields(line) // value, then an optional timestamp
	if len(fields) == 0 {
		return s, fmt.Errorf("no value")
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return s, fmt.Errorf("value: %w", err)
	}
	s.Value = v
	return s, nil
}

// parseLabels reads name="value" pairs up to the closing brace into labels, and returns
// what follows the brace.
func parseLabels(line string, labels map[string]string) (string, error) {
	for {
		line = strings.TrimLeft(line, ", ")
		if strings.HasPrefix(line, "}") {
			return line[1:], nil
		}
		eq := strings.Index(line, `="`)
		if eq <= 0 {
			return "", fmt.Errorf("malformed labels")
		}
		name := line[:eq]
		line = line[eq+2:]
		var value strings.Builder
		for {
			if line == "" {
				return "", fmt.Errorf("unterminated value of label %s", name)
			}
			c := line[0]
			line = line[1:]
			if c == '"' {
				break
			}
			if c == '\\' && line != "" {
				c, line = line[0], line[1:]
				if c == 'n' {
					c = '\n'
				}
			}
			value.WriteByte(c)
		}
		labels[name] = value.String()
	}
}

// Metrics scrapes the proxy's admin /metrics.
func (p *Proxy) Metrics(ctx context.Context) (Samples, error) {
	text, err := p.Admin(ctx, "/metrics")
	if err != nil {
		return nil, err
	}
	return ParseMetrics(text)
}

// Admin GETs path from the proxy's admin port and returns the body; an answer other than
// 200 is an error.
func (p *Proxy) Admin(ctx context.Context, path string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.AdminAddr+path, nil)
	if err != nil {
		return "", err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("GET %s from the proxy's admin port: %w", path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("reading %s from the proxy's admin port: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return string(body), fmt.Errorf("GET %s from the proxy's admin port: HTTP %d", path, resp.StatusCode)
	}
	return string(body), nil
}

// WriteFileAtomically replaces the file at path with data by a rename, so that a reader
// sees the old content or the new, never a part of it.
func WriteFileAtomically(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer func() { _ = os.Remove(tmp.Name()) }() // fails harmlessly once renamed
	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
