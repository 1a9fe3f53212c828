package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a process the benchmark started: a proxy, the backend, a load run.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
}

// procs keeps every process the benchmark started, so that all of them are stopped
// whatever way the benchmark ends (error, interrupt, panic in the main goroutine).
type procs struct {
	dir  string // where their logs go
	mu   sync.Mutex
	list []*proc
}

// start runs bin with args in its own process group, pinned to core with taskset unless
// core < 0, with env added to the benchmark's environment; its output goes to
// <dir>/<name>.log.
func (ps *procs) start(name string, core int, env []string, bin string, args ...string) (*proc, error) {
	if core >= 0 {
		args = append([]string{"-c", strconv.Itoa(core), bin}, args...)
		bin = "taskset"
	}
	logPath := filepath.Join(ps.dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer func() { _ = logFile.Close() }()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group (a terminal's ^C reaches the benchmark only, which stops the
	// group, workers included); killed if the benchmark dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.exited) }()
	ps.mu.Lock()
	ps.list = append(ps.list, p)
	ps.mu.Unlock()
	return p, nil
}

// stop ends p's process group: SIGTERM, then SIGKILL after 5 s.
func (ps *procs) stop(p *proc) {
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
	}
	// The group may outlive its leader (an nginx worker): kill what is left of it.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	<-p.exited
	ps.mu.Lock()
	for i, q := range ps.list {
		if q == p {
			ps.list = append(ps.list[:i], ps.list[i+1:]...)
			break
		}
	}
	ps.mu.Unlock()
}

// stopAll stops every process still running, the most recent first.
func (ps *procs) stopAll() {
	ps.mu.Lock()
	list := append([]*proc(nil), ps.list...)
	ps.mu.Unlock()
	for i := len(list) - 1; i >= 0; i-- {
		ps.stop(list[i])
	}
}

// logTail returns the last lines of p's output, for error messages.
func (p *proc) logTail() string {
	data, _ := os.ReadFile(p.logPath)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-15):], "\n")
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// startTimeout is how long a process may take to listen.
const startTimeout = 10 * time.Second

// waitTCP waits until addr accepts connections, or p exits, or startTimeout passes.
func waitTCP(p *proc, addr string) error {
	deadline := time.Now().Add(startTimeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited at start:\n%s", p.name, p.logTail())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not listen on %s after %s:\n%s", p.name, addr, startTimeout, p.logTail())
		}
	}
}

// freePorts returns n loopback addresses with ports free at the time of the call.
func freePorts(n int) ([]string, error) {
	var addrs []string
	for range n {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer func() { _ = lis.Close() }()
		addrs = append(addrs, lis.Addr().String())
	}
	return addrs, nil
}

// clockTick is the unit of utime and stime in /proc/<pid>/stat (USER_HZ, 100 on Linux).
const clockTick = 10 * time.Millisecond

// tree is pid and its descendants (an nginx master and its worker).
func tree(pid int) []int {
	parents := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := statFields(child); len(f) > 1 {
			ppid, _ := strconv.Atoi(f[1])
			parents[ppid] = append(parents[ppid], child)
		}
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, parents[out[i]]...)
	}
	return out
}

// statFields are the fields of /proc/<pid>/stat after the command name: [0] is the state
// (field 3 of proc(5)), [1] the parent, [11] utime, [12] stime.
func statFields(pid int) []string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

// cpuTime is the user+system CPU time of pid and its descendants.
func cpuTime(pid int) (time.Duration, error) {
	var total time.Duration
	for _, p := range tree(pid) {
		f := statFields(p)
		if len(f) < 13 {
			if p == pid {
				return 0, fmt.Errorf("reading /proc/%d/stat", pid)
			}
			continue
		}
		u, err1 := strconv.ParseInt(f[11], 10, 64)
		s, err2 := strconv.ParseInt(f[12], 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			return 0, fmt.Errorf("parsing /proc/%d/stat: %w", p, err)
		}
		total += time.Duration(u+s) * clockTick
	}
	return total, nil
}

// runqWait is how long the threads of pid and its descendants have waited in the
// kernel's run queues, runnable but not running (the second field of
// /proc/<pid>/task/<tid>/schedstat): the CPU contention they met. Threads that have
// exited are not counted.
func runqWait(pid int) (time.Duration, error) {
	var total time.Duration
	for _, p := range tree(pid) {
		stats, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", p))
		for _, path := range stats {
			data, err := os.ReadFile(path)
			if err != nil {
				continue // the thread exited
			}
			f := strings.Fields(string(data))
			if len(f) < 2 {
				return 0, fmt.Errorf("unexpected %s: %q", path, data)
			}
			ns, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parsing %s: %w", path, err)
			}
			total += time.Duration(ns)
		}
	}
	return total, nil
}

// peakRSS is the largest VmHWM (peak resident set) among pid and its descendants, in
// bytes: for nginx the worker's, which serves the traffic (the master shares most of
// its pages with it and adds about 1 MB of its own).
func peakRSS(pid int) (int64, error) { return statusField(pid, "VmHWM:") }

// currentRSS is the largest VmRSS (resident set now) among pid and its descendants.
func currentRSS(pid int) (int64, error) { return statusField(pid, "VmRSS:") }

// fileRSS is the largest RssFile (resident pages of mapped files: a Go program's binary)
// among pid and its descendants.
func fileRSS(pid int) (int64, error) { return statusField(pid, "RssFile:") }

func statusField(pid int, field string) (int64, error) {
	var peak int64
	for _, p := range tree(pid) {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(data)) {
			if rest, ok := strings.CutPrefix(line, field); ok {
				kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				if err != nil {
					return 0, fmt.Errorf("parsing %s of %d: %w", field, p, err)
				}
				peak = max(peak, kb*1024)
			}
		}
	}
	if peak == 0 {
		return 0, fmt.Errorf("no %s for %d", field, pid)
	}
	return peak, nil
}

// loadAvg is the 1-minute load average.
func loadAvg() float64 {
	data, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return -1
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// machineBusy is the CPU time the machine's processes have used since boot, plus what
// the hypervisor stole: user, nice, system and steal of /proc/stat. Interrupts are left
// out, as they are from processes' times: loopback traffic, the benchmark's own, is
// mostly softirq work.
func machineBusy() (time.Duration, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("unexpected /proc/stat: %q", line)
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 8} {
		v, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parsing /proc/stat: %w", err)
		}
		ticks += v
	}
	return time.Duration(ticks) * clockTick, nil
}
