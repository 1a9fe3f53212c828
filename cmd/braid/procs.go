package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// component is one process of the cluster.
type component struct {
	name string
	bin  string
	args []string
}

// startOrder is the order up starts the components in; down stops them in reverse.
var startOrder = []string{"containerd", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "coredns"}

// start runs c in its own session, detached from braid (it outlives `braid up`), with its
// output in logs/<name>.log, and records its PID in run/<name>.pid. The returned channel
// closes if the process exits while braid still runs.
func start(l layout, c component) (<-chan struct{}, error) {
	logf, err := os.OpenFile(l.log(c.name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer func() { _ = logf.Close() }()
	_, _ = fmt.Fprintf(logf, "\n=== %s %s %s\n", time.Now().Format(time.RFC3339), c.bin, strings.Join(c.args, " "))
	cmd := exec.Command(c.bin, c.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = l.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", c.name, err)
	}
	if err := os.WriteFile(l.pidFile(c.name), []byte(fmt.Sprintf("%d %s\n", cmd.Process.Pid, c.bin)), 0o644); err != nil {
		_ = cmd.Process.Kill()
		return nil, err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	return exited, nil
}

// recorded is the PID and binary of a component that up started, if it still runs as
// that binary: a recycled PID is never signalled.
func recorded(l layout, name string) (pid int, alive bool) {
	b, err := os.ReadFile(l.pidFile(name))
	if err != nil {
		return 0, false
	}
	fields := strings.Fields(string(b))
	if len(fields) != 2 {
		return 0, false
	}
	pid, _ = strconv.Atoi(fields[0])
	return pid, pid > 0 && runsBinary(pid, fields[1])
}

func runsBinary(pid int, bin string) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return false
	}
	exe = strings.TrimSuffix(exe, " (deleted)")
	want, _ := filepath.EvalSymlinks(bin)
	return exe == bin || exe == want || processState(pid) != "Z" && filepath.Base(exe) == filepath.Base(bin) && sameFile(exe, bin)
}

func sameFile(a, b string) bool {
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

// processState is the state letter of /proc/PID/stat ("" when the process is gone).
func processState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

// stopPIDs sends SIGTERM to every pid, waits up to grace for them to go, then kills the rest.
func stopPIDs(pids []int, grace time.Duration) {
	signalAll(pids, syscall.SIGTERM)
	if waitGone(pids, grace) {
		return
	}
	signalAll(pids, syscall.SIGKILL)
	time.Sleep(100 * time.Millisecond)
}

// killAll SIGKILLs pids and waits up to wait for them to be gone.
func killAll(pids []int, wait time.Duration) {
	signalAll(pids, syscall.SIGKILL)
	waitGone(pids, wait)
}

func signalAll(pids []int, sig syscall.Signal) {
	for _, p := range pids {
		_ = syscall.Kill(p, sig)
	}
}

// waitGone waits up to wait for every pid to be gone (or a zombie), and says whether
// they are.
func waitGone(pids []int, wait time.Duration) bool {
	deadline := time.Now().Add(wait)
	for {
		alive := false
		for _, p := range pids {
			if st := processState(p); st != "" && st != "Z" {
				alive = true
			}
		}
		if !alive {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// shimsOf lists the containerd shims serving the containerd at sock: they outlive
// containerd and are recognised by the -address they were given, never by name alone.
func shimsOf(sock string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || len(b) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") {
			continue
		}
		for i, a := range args {
			if a == "-address" && i+1 < len(args) && args[i+1] == sock {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// waitFor polls ok every interval until it returns true, the component exits or the
// timeout passes.
func waitFor(what string, timeout time.Duration, exited <-chan struct{}, logPath string, ok func() bool) error {
	deadline := time.Now().Add(timeout)
	for {
		if ok() {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("%s exited; the end of %s:\n%s", what, logPath, tail(logPath, 20))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s; the end of %s:\n%s", what, timeout, logPath, tail(logPath, 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func tail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

var errNotRunning = errors.New("not running")
