package netns

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// namespace is a named network namespace (ip netns), which the test enters thread by
// thread: a goroutine locks its thread, moves it into the namespace and never unlocks
// it, so the thread dies with the goroutine and nothing else ever runs there by accident.
// Sockets and processes made on that thread stay in the namespace.
type namespace struct{ name string }

// requireNetns skips the test unless it can create network namespaces with ip netns.
func requireNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("interception tests need root: they create network namespaces and nftables rules (run them as root, e.g. sudo go test ./test/netns/)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("interception tests need the ip command (iproute2) for ip netns")
	}
}

// newNamespace creates a network namespace with loopback up; it is deleted when the test
// ends, however it ends.
func newNamespace(t *testing.T, name string) namespace {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Skipf("ip netns add %s failed, so network namespaces are unavailable here: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ns := namespace{name}
	ns.ip(t, "link", "set", "lo", "up")
	return ns
}

// ip runs ip -n <namespace> args.
func (n namespace) ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", append([]string{"-n", n.name}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s %s: %v: %s", n.name, strings.Join(args, " "), err, out)
	}
}

// do runs fn on a thread inside the namespace and returns its error.
func (n namespace) do(fn func() error) error {
	errs := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		if err := n.enter(); err != nil {
			errs <- err
			return
		}
		errs <- fn()
	}()
	return <-errs
}

func (n namespace) enter() error {
	f, err := os.Open(filepath.Join("/run/netns", n.name))
	if err != nil {
		return fmt.Errorf("opening network namespace %s: %w", n.name, err)
	}
	defer func() { _ = f.Close() }()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("entering network namespace %s: %w", n.name, err)
	}
	return nil
}

// listen listens on addr inside the namespace; the listener closes when the test ends.
func (n namespace) listen(t *testing.T, addr string) net.Listener {
	t.Helper()
	var lis net.Listener
	err := n.do(func() (err error) {
		lis, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listening on %s in %s: %v", addr, n.name, err)
	}
	t.Cleanup(func() { _ = lis.Close() })
	return lis
}

// dial connects to addr from inside the namespace, as an application there would.
func (n namespace) dial(ctx context.Context, addr string) (*net.TCPConn, error) {
	var c net.Conn
	err := n.do(func() (err error) {
		d := net.Dialer{Timeout: 5 * time.Second}
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// process is a program started inside a namespace.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

// start starts cmd inside the namespace. The starting thread stays in the namespace
// until the process exits, so that the process, which the kernel kills when that thread
// ends (Pdeathsig), lives as long as it should and no longer than the test binary.
func (n namespace) start(cmd *exec.Cmd) (*process, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	p := &process{cmd: cmd, exited: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		defer close(p.exited)
		if err := n.enter(); err != nil {
			started <- err
			return
		}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("starting %s in %s: %w", cmd.Path, n.name, err)
	}
	return p, nil
}

// stop asks the process to stop (SIGTERM) and kills it after 5 s.
func (p *process) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// run runs cmd inside the namespace to its end and returns its combined output.
func (n namespace) run(cmd *exec.Cmd) (string, error) {
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	p, err := n.start(cmd)
	if err != nil {
		return "", err
	}
	<-p.exited
	if !cmd.ProcessState.Success() {
		return out.String(), fmt.Errorf("%s: %s", cmd.Path, cmd.ProcessState)
	}
	return out.String(), nil
}
