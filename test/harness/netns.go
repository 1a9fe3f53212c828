package harness

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/vishvananda/netlink"
)

const isolatedEnv = "BRAID_ISOLATED_NETWORK"

// MeshAddr returns the i-th address (1 ≤ i ≤ 32) that backends may listen on inside the
// isolated network: 198.18.0.i, from the range reserved for benchmarking networks.
// Kubernetes refuses loopback addresses (127.0.0.0/8) in EndpointSlices, so backends need
// addresses like these, and the isolated network makes them local to this process tree.
func MeshAddr(i int) string {
	return netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}).String()
}

// InIsolatedNetwork reports whether this process is the re-run started by
// RunInIsolatedNetwork.
func InIsolatedNetwork() bool { return os.Getenv(isolatedEnv) == "1" }

// RunInIsolatedNetwork re-runs the current program, with extraEnv added to its
// environment, in new network and PID namespaces (and a new user namespace when not root,
// so no privilege is needed), and returns its exit code. The re-run program sees
// InIsolatedNetwork() == true and calls SetupIsolatedNetwork. Nothing inside can reach or
// be reached from any other network.
func RunInIsolatedNetwork(extraEnv ...string) (int, error) {
	exe, err := os.Executable()
	if err != nil {
		return 1, fmt.Errorf("finding this program to re-run it in an isolated network: %w", err)
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(append(os.Environ(), isolatedEnv+"=1"), extraEnv...)
	// A new PID namespace too: when the re-run program ends, however it ends, the kernel
	// ends every process it started (etcd, kube-apiserver, proxies), so none is left behind.
	attr := &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET | syscall.CLONE_NEWPID, Pdeathsig: syscall.SIGKILL}
	if uid, gid := os.Geteuid(), os.Getegid(); uid != 0 {
		attr.Cloneflags |= syscall.CLONE_NEWUSER
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: uid, Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: gid, Size: 1}}
		attr.GidMappingsEnableSetgroups = false
	}
	cmd.SysProcAttr = attr
	// The child handles Ctrl-C and SIGTERM itself; this process only passes them on.
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(signals)
	if err := cmd.Start(); err != nil {
		return 1, fmt.Errorf("starting an isolated network namespace (needs root or unprivileged user namespaces): %w", err)
	}
	go func() {
		for s := range signals {
			_ = cmd.Process.Signal(s)
		}
	}()
	err = cmd.Wait()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		return exit.ExitCode(), nil
	case err != nil:
		return 1, fmt.Errorf("running in an isolated network namespace: %w", err)
	}
	return 0, nil
}

// SetupIsolatedNetwork brings up the loopback interface of the isolated network with the
// MeshAddr addresses. Call it first thing in the re-run program.
func SetupIsolatedNetwork() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("finding the loopback interface: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bringing up the loopback interface: %w", err)
	}
	for i := 1; i <= 48; i++ {
		ip := net.ParseIP(MeshAddr(i)).To4()
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)}}
		if err := netlink.AddrAdd(lo, addr); err != nil {
			return fmt.Errorf("adding %s to the loopback interface: %w", ip, err)
		}
	}
	return nil
}
