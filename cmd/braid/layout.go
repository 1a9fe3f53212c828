package main

import "path/filepath"

// The cluster's network. The bridge's address is the node's IP and the API server's
// address, so nothing of the cluster listens on the host's own interfaces.
const (
	bridgeName   = "rc0"
	nodeIP       = "10.244.0.1"
	podCIDR      = "10.244.0.0/24"
	clusterCIDR  = "10.244.0.0/16"
	serviceCIDR  = "10.96.0.0/16"
	apiServiceIP = "10.96.0.1"
	dnsServiceIP = "10.96.0.10"
	nodeName     = "braid-node"
	guardTable   = "braidguard"
	clusterName  = "braid"
	// pauseImage is the sandbox image; make images builds it, up imports it.
	pauseImage = "braid.local/pause:dev"
)

// layout names every file of the cluster under its state folder.
type layout struct{ dir string }

func newLayout(dir string) layout { return layout{dir: dir} }

func (l layout) path(elem ...string) string {
	return filepath.Join(append([]string{l.dir}, elem...)...)
}

func (l layout) pki(name string) string     { return l.path("pki", name) }
func (l layout) log(name string) string     { return l.path("logs", name+".log") }
func (l layout) pidFile(name string) string { return l.path("run", name+".pid") }
func (l layout) kubeconfig() string         { return l.path("admin.kubeconfig") }
func (l layout) containerdSock() string     { return l.path("containerd", "containerd.sock") }
func (l layout) sysctlFile() string         { return l.path("sysctl-before.json") }
func (l layout) hostPathsFile() string      { return l.path("host-paths-created.json") }
func (l layout) binDirFile() string         { return l.path("bin-dir") }
func (l layout) nftTablesFile() string      { return l.path("nft-tables-before.json") }

// hostPaths are written by the kubelet, containerd and the CNI plugins outside the
// configured folders. up records which of them it creates, and down removes only those.
var hostPaths = []string{
	"/var/lib/kubelet",
	"/var/lib/cni",
	"/var/log/containers",
	"/var/log/pods",
	"/run/containerd",
	"/etc/cni",
	"/opt/cni",
}

// sysctls are every kernel setting up or the kubelet and kube-proxy change; down puts
// back the values up recorded before it started.
var sysctls = []string{
	"net/ipv4/ip_forward",
	"net/bridge/bridge-nf-call-iptables",
	"net/bridge/bridge-nf-call-ip6tables",
	"net/ipv4/conf/all/route_localnet",
	// set by the kubelet (setupKernelTunables)
	"vm/overcommit_memory",
	"vm/panic_on_oom",
	"kernel/panic",
	"kernel/panic_on_oops",
	"kernel/keys/root_maxkeys",
	"kernel/keys/root_maxbytes",
	// kube-proxy leaves these alone with conntrack.maxPerCore 0 and zero timeouts, but a
	// changed configuration would not.
	"net/netfilter/nf_conntrack_max",
	"net/netfilter/nf_conntrack_tcp_timeout_established",
	"net/netfilter/nf_conntrack_tcp_timeout_close_wait",
}
