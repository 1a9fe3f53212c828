// Command proxy benchmarks a braid-proxy pair (client and server proxy, mTLS between
// them) against an nginx mTLS pair and a haproxy mTLS pair, and against no proxy at all,
// in one run on loopback: fortio at a fixed rate (1000 qps, 16 connections) and at its
// maximum, through each case to the same backend (a fortio server). Each proxy is pinned
// to one core (client proxy core 0, server proxy core 1); it reports latency percentiles,
// the latency added over direct, max requests per second, the proxies' CPU time per 1000
// requests and their peak RSS, with ratios braid/nginx and braid/haproxy, and checks the
// performance budget of DESIGN.md.
//
// Run it with `make bench-proxy` (BENCH_FLAGS="-short" for a smoke run). It installs nginx
// and haproxy from Debian with apt-get when they are missing, so it runs as root.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// options are the command-line flags.
type options struct {
	duration, warmup time.Duration
	qps              float64
	conns            int
	services         int
	configFormat     string
	rounds           int
	cases            []string
	fortio, proxy    string
	profileDir       string
	keep, noInstall  bool
}

func main() {
	var o options
	var cases string
	short := flag.Bool("short", false, "smoke run: one round, 5 s per measurement, 1 s warm-up (unless those flags are given)")
	flag.DurationVar(&o.duration, "duration", 20*time.Second, "length of each measurement (fixed rate, then max)")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "load at the fixed rate before measuring each case")
	flag.Float64Var(&o.qps, "qps", 1000, "the fixed rate")
	flag.IntVar(&o.conns, "c", 16, "fortio connections")
	flag.IntVar(&o.services, "services", 1000, "Services in the braid client proxy's configuration (one used)")
	flag.StringVar(&o.configFormat, "config-format", "json", "format of the braid client proxy's config file: json (decoded in one pass, as the control plane's protobuf is) or yaml (decoded through JSON: its peak memory is the file format's)")
	flag.IntVar(&o.rounds, "rounds", 3, "measure every case this many times, interleaved; each figure is the median")
	flag.StringVar(&cases, "cases", "direct,braid,nginx,haproxy", "cases to run, in this order (direct is the baseline)")
	flag.StringVar(&o.fortio, "fortio", "bin/fortio-v1.68.2", "the fortio binary")
	flag.StringVar(&o.proxy, "proxy", "bin/braid-proxy", "the braid-proxy binary")
	flag.StringVar(&o.profileDir, "profile", "", "write CPU profiles of both braid proxies (fixed rate and max), the client's heap and both proxies' allocations into this folder")
	flag.BoolVar(&o.keep, "keep", false, "keep the work folder (configs, certificates, logs, fortio JSON)")
	flag.BoolVar(&o.noInstall, "no-install", false, "never apt-get install nginx and haproxy; skip the cases whose proxy is missing")
	flag.Parse()
	if *short {
		o.smoke()
	}
	o.cases = strings.Split(cases, ",")
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// smoke shortens the run (-short), except for the flags given explicitly.
func (o *options) smoke() {
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if !set["duration"] {
		o.duration = 5 * time.Second
	}
	if !set["warmup"] {
		o.warmup = time.Second
	}
	if !set["rounds"] {
		o.rounds = 1
	}
}

// caseResult is what one case measured in one round.
type caseResult struct {
	fixed, max loadResult
	// cpuFixed and cpuMax are CPU milliseconds per 1000 requests, client and server proxy.
	cpuFixed, cpuMax [2]float64
	// rssFixed and rssMax are peak RSS (VmHWM) in MB after the fixed-rate run and at
	// the end, client and server proxy.
	rssFixed, rssMax [2]float64
	// waitFixed and waitMax are the milliseconds per 1000 requests the client and server
	// proxy spent runnable in a run queue, waiting for their core.
	waitFixed, waitMax [2]float64
	// rssNow is the resident set (VmRSS) in MB at the end of the fixed-rate run, and
	// fileNow the part of it that is the pages of files mapped (RssFile: for braid, its
	// binary's).
	rssNow, fileNow [2]float64
	// othersFixed and othersMax are the CPU that processes other than the benchmark's
	// used during each run, in cores: the noise from the rest of the machine.
	othersFixed, othersMax float64
}

// floats lists r's figures, for medians across rounds.
func (r *caseResult) floats() []*float64 {
	return []*float64{&r.fixed.qps, &r.fixed.p50, &r.fixed.p90, &r.fixed.p99, &r.fixed.p999,
		&r.max.qps, &r.max.p50, &r.max.p90, &r.max.p99, &r.max.p999,
		&r.cpuFixed[0], &r.cpuFixed[1], &r.cpuMax[0], &r.cpuMax[1],
		&r.waitFixed[0], &r.waitFixed[1], &r.waitMax[0], &r.waitMax[1],
		&r.rssFixed[0], &r.rssFixed[1], &r.rssMax[0], &r.rssMax[1], &r.rssNow[0], &r.rssNow[1], &r.fileNow[0], &r.fileNow[1], &r.othersFixed, &r.othersMax}
}

// median is, figure by figure, the median of rs; errors and requests add up.
func median(rs []caseResult) caseResult {
	var m caseResult
	for i, f := range m.floats() {
		var vs []float64
		for k := range rs {
			vs = append(vs, *rs[k].floats()[i])
		}
		slices.Sort(vs)
		*f = vs[len(vs)/2]
	}
	for _, r := range rs {
		m.fixed.errors += r.fixed.errors
		m.max.errors += r.max.errors
		m.fixed.requests += r.fixed.requests
		m.max.requests += r.max.requests
		m.fixed.connections = max(m.fixed.connections, r.fixed.connections)
		m.max.connections = max(m.max.connections, r.max.connections)
	}
	return m
}

// machine is what the report says about the conditions of the run.
type machine struct {
	start          time.Time
	loadStart      float64
	loadEnd        float64
	loadMax        float64
	cpu, kernel    string
	commit         string
	nginx, haproxy string
	fortio         string
}

func run(o options) (err error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := o.check(); err != nil {
		return err
	}
	if o.cases, err = ensureProxies(o.cases, o.noInstall); err != nil {
		return err
	}
	m := describeMachine(o)
	dir, err := os.MkdirTemp("", "braid-bench-proxy-")
	if err != nil {
		return err
	}
	ps := &procs{dir: dir}
	defer func() {
		ps.stopAll()
		if o.keep || err != nil {
			fmt.Fprintf(os.Stderr, "work folder (configs, logs, fortio JSON): %s\n", dir)
		} else {
			_ = os.RemoveAll(dir)
		}
	}()
	e, err := setUp(dir, ps, o)
	if err != nil {
		return err
	}
	l := &loader{fortio: o.fortio, dir: dir, ps: ps, conns: o.conns}
	results := map[string][]caseResult{}
	m.loadStart, m.loadMax = loadAvg(), loadAvg()
	fmt.Fprintf(os.Stderr, "load average (1 min) at start: %.2f\n", m.loadStart)
	for round := range o.rounds {
		for _, name := range o.cases {
			fmt.Fprintf(os.Stderr, "round %d/%d: %s (load average %.2f)\n", round+1, o.rounds, name, loadAvg())
			profile := ""
			if name == "braid" && round == 0 {
				profile = o.profileDir
			}
			r, err := measureCase(ctx, e, l, name, o, profile)
			if err != nil {
				return err
			}
			results[name] = append(results[name], r)
			m.loadMax = max(m.loadMax, loadAvg())
		}
	}
	m.loadEnd = loadAvg()
	final := map[string]caseResult{}
	for name, rs := range results {
		final[name] = median(rs)
		if r := final[name]; r.fixed.errors+r.max.errors > 0 {
			err = errors.Join(err, fmt.Errorf("%s: %d requests failed at the fixed rate, %d at max", name, r.fixed.errors, r.max.errors))
		}
	}
	fmt.Print(report(o, m, final, results))
	return err
}

// check validates the options and makes the binaries' paths absolute.
func (o *options) check() error {
	for _, c := range o.cases {
		if !slices.Contains([]string{"direct", "braid", "nginx", "haproxy"}, c) {
			return fmt.Errorf("unknown case %q (direct, braid, nginx, haproxy)", c)
		}
	}
	if o.configFormat != "json" && o.configFormat != "yaml" {
		return fmt.Errorf("unknown -config-format %q (json, yaml)", o.configFormat)
	}
	if !slices.Contains(o.cases, "direct") {
		return errors.New("the cases must include direct, the baseline")
	}
	for _, bin := range []*string{&o.fortio, &o.proxy} {
		abs, err := filepath.Abs(*bin)
		if err != nil {
			return err
		}
		if _, err := os.Stat(abs); err != nil {
			return fmt.Errorf("%w (make bench-proxy builds it)", err)
		}
		*bin = abs
	}
	return nil
}

// setUp writes the certificates into dir and starts the backend, a fortio server that
// every case reaches (unpinned).
func setUp(dir string, ps *procs, o options) (*env, error) {
	c, err := writeCerts(dir)
	if err != nil {
		return nil, err
	}
	addrs, err := freePorts(1)
	if err != nil {
		return nil, err
	}
	backend, err := ps.start("backend", -1, nil, o.fortio, "server", "-http-port", addrs[0],
		"-grpc-port", "disabled", "-redirect-port", "disabled", "-udp-port", "disabled", "-ui-path", "", "-loglevel", "Warning")
	if err != nil {
		return nil, err
	}
	if err := waitTCP(backend, addrs[0]); err != nil {
		return nil, err
	}
	return &env{dir: dir, ps: ps, certs: c, proxyBin: o.proxy, backend: addrs[0], backendP: backend, services: o.services, configFormat: o.configFormat}, nil
}

// measureCase starts the case, warms it up, runs the fixed rate then the max, and
// measures its proxies around each run.
func measureCase(ctx context.Context, e *env, l *loader, name string, o options, profileDir string) (caseResult, error) {
	var r caseResult
	p, err := e.startCase(ctx, name)
	if err != nil {
		return r, err
	}
	defer e.stopCase(p)
	if _, err := l.run(ctx, name+"-warmup", p.addr, o.qps, o.warmup); err != nil {
		return r, err
	}
	if p.clientAdmin == "" { // not braid
		profileDir = ""
	}
	var before, mid, after sample
	if err := before.take(e, p); err != nil {
		return r, err
	}
	wait := profile(ctx, p, profileDir, "fixed", o.duration)
	r.fixed, err = l.run(ctx, name+"-fixed", p.addr, o.qps, o.duration)
	if err := errors.Join(err, wait()); err != nil {
		return r, err
	}
	fortioFixed := l.cpu
	if err := mid.take(e, p); err != nil {
		return r, err
	}
	if err := r.memoryAfterFixed(p); err != nil {
		return r, err
	}
	if err := heapProfile(ctx, p, profileDir); err != nil {
		return r, err
	}
	wait = profile(ctx, p, profileDir, "max", o.duration)
	r.max, err = l.run(ctx, name+"-max", p.addr, 0, o.duration)
	if err := errors.Join(err, wait()); err != nil {
		return r, err
	}
	if err := after.take(e, p); err != nil {
		return r, err
	}
	if err := allocProfiles(ctx, p, profileDir); err != nil {
		return r, err
	}
	if r.rssMax, err = rss(p, peakRSS); err != nil {
		return r, err
	}
	for i := range 2 {
		r.cpuFixed[i] = perThousand(mid.proxies[i]-before.proxies[i], r.fixed.requests)
		r.cpuMax[i] = perThousand(after.proxies[i]-mid.proxies[i], r.max.requests)
		r.waitFixed[i] = perThousand(mid.waits[i]-before.waits[i], r.fixed.requests)
		r.waitMax[i] = perThousand(after.waits[i]-mid.waits[i], r.max.requests)
	}
	r.othersFixed = mid.others(before, fortioFixed)
	r.othersMax = after.others(mid, l.cpu)
	return r, nil
}

// memoryAfterFixed records the proxies' peak and current RSS after the fixed-rate run,
// and the part of the current one that is the binary's own pages.
func (r *caseResult) memoryAfterFixed(p *pair) error {
	var err error
	if r.rssFixed, err = rss(p, peakRSS); err != nil {
		return err
	}
	if r.rssNow, err = rss(p, currentRSS); err != nil {
		return err
	}
	r.fileNow, err = rss(p, fileRSS)
	return err
}

// heapProfile saves the client proxy's heap profile into dir, unless dir is empty.
func heapProfile(ctx context.Context, p *pair, dir string) error {
	if dir == "" {
		return nil
	}
	return fetch(ctx, p.clientAdmin, "/debug/pprof/heap", filepath.Join(dir, "braid-client-heap.pprof"))
}

// allocProfiles saves both proxies' allocation profiles (everything allocated since they
// started) into dir, unless dir is empty.
func allocProfiles(ctx context.Context, p *pair, dir string) error {
	if dir == "" {
		return nil
	}
	return errors.Join(fetch(ctx, p.clientAdmin, "/debug/pprof/allocs", filepath.Join(dir, "braid-client-allocs.pprof")),
		fetch(ctx, p.serverAdmin, "/debug/pprof/allocs", filepath.Join(dir, "braid-server-allocs.pprof")))
}

// profile takes CPU profiles of both braid proxies of p over most of a run of length d,
// into dir as braid-{client,server}-cpu-<run>.pprof; the function returned waits for
// them. Nothing happens when dir is empty.
func profile(ctx context.Context, p *pair, dir, run string, d time.Duration) (wait func() error) {
	if dir == "" {
		return func() error { return nil }
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	secs := max(1, int(d.Seconds())-2)
	for i, admin := range []string{p.clientAdmin, p.serverAdmin} {
		side := []string{"client", "server"}[i]
		wg.Go(func() {
			errs[i] = fetch(ctx, admin, fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs),
				filepath.Join(dir, fmt.Sprintf("braid-%s-cpu-%s.pprof", side, run)))
		})
	}
	return func() error {
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return fmt.Errorf("profiling braid-proxy: %w", err)
		}
		return nil
	}
}

// sample is the CPU time used so far: by the machine, the proxies of a case, the backend.
type sample struct {
	at            time.Time
	busy, backend time.Duration
	proxies       [2]time.Duration
	waits         [2]time.Duration // run-queue waits of the proxies
}

func (s *sample) take(e *env, p *pair) error {
	var err1, err2, err3 error
	s.at = time.Now()
	s.busy, err1 = machineBusy()
	s.backend, err2 = cpuTime(e.backendP.pid())
	s.proxies, err3 = cpus(p)
	for i, q := range p.procs() {
		var err error
		if s.waits[i], err = runqWait(q.pid()); err != nil {
			err3 = errors.Join(err3, err)
		}
	}
	return errors.Join(err1, err2, err3)
}

// others is the CPU, in cores, that processes other than the benchmark's (the proxies,
// the backend, fortio, whose run used fortio) used between prev and s.
func (s *sample) others(prev sample, fortio time.Duration) float64 {
	ours := s.backend - prev.backend + fortio
	for i := range 2 {
		ours += s.proxies[i] - prev.proxies[i]
	}
	return max(0, (s.busy-prev.busy-ours).Seconds()/s.at.Sub(prev.at).Seconds())
}

func perThousand(d time.Duration, requests int) float64 {
	if requests == 0 {
		return 0
	}
	return float64(d.Microseconds()) / float64(requests)
}

// cpus is the CPU time of the client and server proxy of p (zero for direct).
func cpus(p *pair) ([2]time.Duration, error) {
	var out [2]time.Duration
	for i, q := range p.procs() {
		d, err := cpuTime(q.pid())
		if err != nil {
			return out, err
		}
		out[i] = d
	}
	return out, nil
}

// rss is the RSS in MB of the client and server proxy of p (zero for direct), as
// measure (peakRSS, currentRSS or fileRSS) reads it.
func rss(p *pair, measure func(int) (int64, error)) ([2]float64, error) {
	var out [2]float64
	for i, q := range p.procs() {
		b, err := measure(q.pid())
		if err != nil {
			return out, err
		}
		out[i] = float64(b) / (1 << 20)
	}
	return out, nil
}

// fetch saves the admin endpoint path of a braid-proxy into file.
func fetch(ctx context.Context, admin, path, file string) error {
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// ensureProxies installs nginx and haproxy from Debian when a case needs them and they
// are missing, and returns the cases that can run.
func ensureProxies(cases []string, noInstall bool) ([]string, error) {
	var missing []string
	for _, c := range cases {
		if (c == "nginx" || c == "haproxy") && !onPath(c) {
			missing = append(missing, c)
		}
	}
	if len(missing) == 0 {
		return cases, nil
	}
	if noInstall {
		fmt.Fprintf(os.Stderr, "skipping %s: not installed (-no-install)\n", strings.Join(missing, ", "))
		return slices.DeleteFunc(cases, func(c string) bool { return slices.Contains(missing, c) }), nil
	}
	fmt.Fprintf(os.Stderr, "installing %s from Debian with apt-get (the benchmark's reference proxies)\n", strings.Join(missing, " and "))
	// Debian's postinst scripts would start them as services, on port 80 for nginx: a
	// policy-rc.d that forbids it, unless the machine has one already.
	const policy = "/usr/sbin/policy-rc.d"
	if _, err := os.Stat(policy); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(policy, []byte("#!/bin/sh\n# written by hack/bench/proxy while it installs nginx and haproxy\nexit 101\n"), 0o755); err != nil {
			return nil, fmt.Errorf("installing %v needs root: %w", missing, err)
		}
		defer func() { _ = os.Remove(policy) }()
	}
	install := func() error {
		cmd := exec.Command("apt-get", append([]string{"install", "-y", "-q", "--no-install-recommends"}, missing...)...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		return cmd.Run()
	}
	if err := install(); err != nil {
		update := exec.Command("apt-get", "update", "-q")
		update.Stdout, update.Stderr = os.Stderr, os.Stderr
		if err := errors.Join(update.Run(), install()); err != nil {
			return nil, fmt.Errorf("apt-get install %s: %w", strings.Join(missing, " "), err)
		}
	}
	return cases, nil
}

func onPath(name string) bool {
	_, err := exec.LookPath(name)
	return err == nil
}

func describeMachine(o options) machine {
	m := machine{start: time.Now()}
	out := func(name string, args ...string) string {
		b, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return "?"
		}
		return strings.TrimSpace(string(b))
	}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(data)) {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				m.cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	m.kernel = out("uname", "-r")
	m.commit = out("git", "rev-parse", "--short", "HEAD")
	if onPath("nginx") {
		m.nginx = strings.TrimPrefix(out("nginx", "-v"), "nginx version: ")
	}
	if onPath("haproxy") {
		m.haproxy, _, _ = strings.Cut(out("haproxy", "-v"), "\n")
	}
	m.fortio = out(o.fortio, "version")
	return m
}
