package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// packages are what the cluster needs from Debian, each with a file that proves it is
// installed. iptables is not among them: kube-proxy runs in nftables mode and the CNI
// configuration needs no iptables.
var packages = []struct{ name, file string }{
	{"containerd", "/usr/bin/containerd"},
	{"runc", "/usr/sbin/runc"},
	{"containernetworking-plugins", "/usr/lib/cni/bridge"},
	{"nftables", "/usr/sbin/nft"},
	{"conntrack", "/usr/sbin/conntrack"},
}

// installPackages installs the missing packages with apt-get. The package scripts must
// not start a system containerd (policy-rc.d stays as the host has it: Debian's images
// forbid starting services).
func installPackages(ctx context.Context, out io.Writer) error {
	var missing []string
	for _, p := range packages {
		if _, err := os.Stat(p.file); err != nil {
			missing = append(missing, p.name)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	_, _ = fmt.Fprintf(out, "Installing %s from apt...\n", strings.Join(missing, " "))
	install := func() error {
		cmd := exec.CommandContext(ctx, "apt-get", append([]string{"install", "-y", "-q", "--no-install-recommends"}, missing...)...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		b, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-get install %s: %w\n%s", strings.Join(missing, " "), err, b)
		}
		return nil
	}
	if err := install(); err == nil {
		return nil
	}
	if b, err := exec.CommandContext(ctx, "apt-get", "update", "-q").CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get update: %w\n%s", err, b)
	}
	return install()
}

// recordSysctls saves the current value of every sysctl the cluster may change, unless a
// previous, unfinished up already saved the true originals.
func recordSysctls(l layout) error {
	if _, err := os.Stat(l.sysctlFile()); err == nil {
		return nil
	}
	vals := map[string]string{}
	for _, k := range sysctls {
		if b, err := os.ReadFile("/proc/sys/" + k); err == nil {
			vals[k] = strings.TrimSpace(string(b))
		}
	}
	return writeJSON(l.sysctlFile(), vals)
}

func setSysctl(key, value string) error {
	if err := os.WriteFile("/proc/sys/"+key, []byte(value), 0o644); err != nil {
		return fmt.Errorf("setting %s=%s: %w", strings.ReplaceAll(key, "/", "."), value, err)
	}
	return nil
}

// restoreSysctls puts back the recorded values and reports the ones it changed.
func restoreSysctls(l layout, out io.Writer) error {
	var vals map[string]string
	if err := readJSON(l.sysctlFile(), &vals); errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	keys := make([]string, 0, len(vals))
	for k := range vals {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var errs []error
	for _, k := range keys {
		b, err := os.ReadFile("/proc/sys/" + k)
		if err != nil || strings.TrimSpace(string(b)) == vals[k] {
			continue
		}
		if err := setSysctl(k, vals[k]); err != nil {
			errs = append(errs, err)
			continue
		}
		_, _ = fmt.Fprintf(out, "  restored %s = %s (was %s)\n", strings.ReplaceAll(k, "/", "."), vals[k], strings.TrimSpace(string(b)))
	}
	if len(errs) == 0 {
		return os.Remove(l.sysctlFile())
	}
	return errors.Join(errs...)
}

// recordHostPaths notes which of hostPaths do not exist yet: down removes those.
func recordHostPaths(l layout) error {
	if _, err := os.Stat(l.hostPathsFile()); err == nil {
		return nil
	}
	var created []string
	for _, p := range hostPaths {
		if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
			created = append(created, p)
		}
	}
	return writeJSON(l.hostPathsFile(), created)
}

// setupNetwork creates the bridge with the node's address, the route to Services, the
// forwarding sysctls and the guard table.
func setupNetwork() error {
	br, err := netlink.LinkByName(bridgeName)
	if err != nil {
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridgeName}}); err != nil {
			return fmt.Errorf("creating bridge %s: %w", bridgeName, err)
		}
		if br, err = netlink.LinkByName(bridgeName); err != nil {
			return err
		}
	}
	addr, err := netlink.ParseAddr(nodeIP + "/24")
	if err != nil {
		return err
	}
	if err := netlink.AddrReplace(br, addr); err != nil {
		return fmt.Errorf("adding %s to %s: %w", addr, bridgeName, err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("bringing %s up: %w", bridgeName, err)
	}
	_, svc, _ := net.ParseCIDR(serviceCIDR)
	if err := netlink.RouteReplace(&netlink.Route{LinkIndex: br.Attrs().Index, Dst: svc}); err != nil {
		return fmt.Errorf("adding the route %s dev %s: %w", serviceCIDR, bridgeName, err)
	}
	for k, v := range map[string]string{
		"net/ipv4/ip_forward":                 "1",
		"net/bridge/bridge-nf-call-iptables":  "1",
		"net/bridge/bridge-nf-call-ip6tables": "1",
	} {
		if err := setSysctl(k, v); err != nil {
			return err
		}
	}
	return nft(guardRuleset())
}

// guardRuleset keeps the cluster's traffic on the machine: nothing leaves for the pod or
// Service networks through another interface than the bridge, and nothing forwarded from
// the bridge goes anywhere else (ipMasq is off too; this is the belt to its braces).
func guardRuleset() string {
	return fmt.Sprintf(`table inet %[1]s
delete table inet %[1]s
table inet %[1]s {
	chain output {
		type filter hook output priority 0; policy accept;
		ip daddr { %[2]s, %[3]s } oifname != { "%[4]s", "lo" } counter drop
	}
	chain forward {
		type filter hook forward priority 0; policy accept;
		iifname "%[4]s" oifname != "%[4]s" counter drop
		oifname "%[4]s" iifname != "%[4]s" ip saddr != { %[3]s } counter drop
	}
}
`, guardTable, serviceCIDR, clusterCIDR, bridgeName)
}

func nft(ruleset string) error {
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft: %w: %s", err, b)
	}
	return nil
}

// teardownNetwork removes the bridge, the pods' veths and the nftables tables of the
// guard and kube-proxy.
func teardownNetwork(l layout, out io.Writer) error {
	var errs []error
	if br, err := netlink.LinkByName(bridgeName); err == nil {
		links, _ := netlink.LinkList()
		for _, ln := range links {
			if ln.Attrs().MasterIndex == br.Attrs().Index {
				_ = netlink.LinkDel(ln)
			}
		}
		if err := netlink.LinkDel(br); err != nil {
			errs = append(errs, fmt.Errorf("deleting %s: %w", bridgeName, err))
		} else {
			_, _ = fmt.Fprintf(out, "  deleted bridge %s\n", bridgeName)
		}
	}
	if _, err := exec.LookPath("nft"); err == nil {
		if err := removeKubeletChains(l, out); err != nil {
			errs = append(errs, err)
		}
		for _, t := range []string{"inet " + guardTable, "ip kube-proxy", "ip6 kube-proxy"} {
			if exec.Command("nft", "list", "table", strings.Fields(t)[0], strings.Fields(t)[1]).Run() != nil {
				continue
			}
			if b, err := exec.Command("nft", "delete", "table", strings.Fields(t)[0], strings.Fields(t)[1]).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("nft delete table %s: %w: %s", t, err, b))
			} else {
				_, _ = fmt.Fprintf(out, "  deleted nftables table %s\n", t)
			}
		}
	}
	return errors.Join(errs...)
}

// unmountUnder detaches every mount at or below one of the prefixes, deepest first.
func unmountUnder(prefixes []string, out io.Writer) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		for _, p := range prefixes {
			if mp == p || strings.HasPrefix(mp, strings.TrimSuffix(p, "/")+"/") {
				points = append(points, mp)
				break
			}
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var errs []error
	n := 0
	for _, mp := range points {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", mp, err))
			continue
		}
		n++
	}
	if n > 0 {
		_, _ = fmt.Fprintf(out, "  unmounted %d mounts\n", n)
	}
	return errors.Join(errs...)
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

// podNetnsMounts are the pods' network namespaces that the CRI pins under /run/netns.
func podNetnsMounts() []string {
	ms, _ := filepath.Glob("/run/netns/cni-*")
	return ms
}

// cgroupRoots are the kubelet's pod cgroups (cgroupfs driver) in every hierarchy.
func cgroupRoots() []string {
	var roots []string
	hier, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, h := range hier {
		if st, err := os.Stat(filepath.Join(h, "kubepods")); err == nil && st.IsDir() {
			roots = append(roots, filepath.Join(h, "kubepods"))
		}
	}
	if st, err := os.Stat("/sys/fs/cgroup/kubepods"); err == nil && st.IsDir() {
		roots = append(roots, "/sys/fs/cgroup/kubepods")
	}
	return roots
}

// podProcesses lists the processes in the kubelet's pod cgroups.
func podProcesses() []int {
	seen := map[int]bool{}
	for _, root := range cgroupRoots() {
		_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
				return nil //nolint:nilerr // a cgroup removed during the walk is skipped, not fatal
			}
			b, _ := os.ReadFile(path)
			for _, f := range strings.Fields(string(b)) {
				var pid int
				if _, err := fmt.Sscan(f, &pid); err == nil && pid > 1 {
					seen[pid] = true
				}
			}
			return nil
		})
	}
	pids := make([]int, 0, len(seen))
	for p := range seen {
		pids = append(pids, p)
	}
	return pids
}

// removeCgroups removes the kubelet's pod cgroups, deepest first.
func removeCgroups(out io.Writer) error {
	var errs []error
	n := 0
	for _, root := range cgroupRoots() {
		var dirs []string
		_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			if err := unix.Rmdir(d); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", d, err))
				continue
			}
			n++
		}
	}
	if n > 0 {
		_, _ = fmt.Fprintf(out, "  removed %d pod cgroups\n", n)
	}
	return errors.Join(errs...)
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// nftTables lists the host's nftables tables as "family name".
func nftTables() []string {
	b, err := exec.Command("nft", "list", "tables").Output()
	if err != nil {
		return nil
	}
	var tables []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "table" {
			tables = append(tables, f[1]+" "+f[2])
		}
	}
	return tables
}

// recordNftTables notes the tables that exist before the cluster starts.
func recordNftTables(l layout) error {
	if _, err := os.Stat(l.nftTablesFile()); err == nil {
		return nil
	}
	tables := nftTables()
	if tables == nil {
		tables = []string{}
	}
	return writeJSON(l.nftTablesFile(), tables)
}

// removeKubeletChains undoes what the kubelet writes through iptables (iptables-nft, so
// nftables tables ip/ip6 mangle, nat and filter): its KUBE-* chains and the rules that
// jump to them. A table that did not exist before up is then deleted whole.
func removeKubeletChains(l layout, out io.Writer) error {
	var before []string
	known := readJSON(l.nftTablesFile(), &before) == nil
	var errs []error
	for _, t := range nftTables() {
		family, name, _ := strings.Cut(t, " ")
		if family != "ip" && family != "ip6" || name != "mangle" && name != "nat" && name != "filter" {
			continue
		}
		b, err := exec.Command("nft", "-a", "list", "table", family, name).Output()
		if err != nil {
			continue
		}
		chains, script := kubeletChainsScript(family, name, string(b))
		ours := known && !slices.Contains(before, t)
		if ours {
			script = fmt.Sprintf("delete table %s %s\n", family, name)
		}
		if script == "" {
			continue
		}
		if err := nft(script); err != nil {
			errs = append(errs, fmt.Errorf("removing the kubelet's chains from table %s: %w", t, err))
			continue
		}
		if ours {
			_, _ = fmt.Fprintf(out, "  deleted nftables table %s (the kubelet's, through iptables)\n", t)
		} else if len(chains) > 0 {
			_, _ = fmt.Fprintf(out, "  removed the kubelet's chains %s from table %s\n", strings.Join(chains, " "), t)
		}
	}
	return errors.Join(errs...)
}

// kubeletChainsScript reads `nft -a list table` of one table and returns the kubelet's
// KUBE-* chains in it and the nft script that removes them and the rules jumping to them.
func kubeletChainsScript(family, name, listing string) (chains []string, script string) {
	var jumps [][2]string // chain, handle
	chain := ""
	for _, line := range strings.Split(listing, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 2 && f[0] == "chain":
			chain = f[1]
			if strings.HasPrefix(chain, "KUBE-") {
				chains = append(chains, chain)
			}
		case strings.Contains(line, "jump KUBE-") || strings.Contains(line, "goto KUBE-"):
			if i := strings.LastIndex(line, "# handle "); i >= 0 && !strings.HasPrefix(chain, "KUBE-") {
				jumps = append(jumps, [2]string{chain, strings.TrimSpace(line[i+len("# handle "):])})
			}
		}
	}
	var b strings.Builder
	for _, j := range jumps {
		_, _ = fmt.Fprintf(&b, "delete rule %s %s %s handle %s\n", family, name, j[0], j[1])
	}
	for _, c := range chains {
		_, _ = fmt.Fprintf(&b, "flush chain %s %s %s\n", family, name, c)
	}
	for _, c := range chains {
		_, _ = fmt.Fprintf(&b, "delete chain %s %s %s\n", family, name, c)
	}
	return chains, b.String()
}
