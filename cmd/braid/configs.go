package main

import (
	"fmt"
	"os"
	"path/filepath"
)

// writeConfigs writes the configuration files of containerd, the CNI plugins, the kubelet,
// kube-proxy and CoreDNS.
func writeConfigs(l layout) error {
	files := map[string]string{
		l.path("containerd", "config.toml"):         containerdConfig(l),
		l.path("cni", "net.d", "10-braid.conflist"): cniConfig(l),
		l.path("kubelet", "config.yaml"):            kubeletConfig(l),
		l.path("kube-proxy", "config.yaml"):         kubeProxyConfig(l),
		l.path("coredns", "Corefile"):               corefile(l),
	}
	for path, content := range files {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			return err
		}
	}
	for _, d := range []string{"logs", "run", "etcd", "pod-logs", "containerd/opt", "cni/ipam"} {
		if err := os.MkdirAll(l.path(d), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// containerdConfig: containerd 1.6 (config version 2) with all its state under the state
// folder. restrict_oom_score_adj: the VM's bounding set lacks CAP_SYS_RESOURCE, so even
// root cannot lower oom_score_adj, and runc fails to start the pause container with -998
// ("can't get final child's PID from pipe: EOF").
func containerdConfig(l layout) string {
	return fmt.Sprintf(`version = 2
root = %q
state = %q

[grpc]
  address = %q

[plugins."io.containerd.internal.v1.opt"]
  path = %q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %q
`, l.path("containerd", "root"), l.path("containerd", "state"), l.containerdSock(),
		l.path("containerd", "opt"), pauseImage, l.path("cni", "net.d"))
}

// cniConfig: pods on the bridge, addresses from host-local. ipMasq is off: pods reach
// nothing beyond the machine. No portmap plugin: nothing uses hostPort, and its DEL needs
// iptables, which this cluster does without.
func cniConfig(l layout) string {
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "braid",
  "plugins": [
    {
      "type": "bridge",
      "bridge": %q,
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": %q,
        "ranges": [[{"subnet": %q, "gateway": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
`, bridgeName, l.path("cni", "ipam"), podCIDR, nodeIP)
}

// kubeletConfig: cgroup v1 with the cgroupfs driver (containerd 1.6 cannot tell the
// kubelet its driver), x509 authentication only, clusterDNS from the start (a pod created
// without it gets the host's resolver, which the guard blocks), relaxed eviction.
func kubeletConfig(l layout) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://%s
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
podCIDR: %s
podLogsDir: %s
tlsCertFile: %s
tlsPrivateKeyFile: %s
rotateCertificates: false
serverTLSBootstrap: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %s}
authorization:
  mode: AlwaysAllow
clusterDomain: cluster.local
clusterDNS: [%s]
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%%
  nodefs.inodesFree: 1%%
  imagefs.available: 1%%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 110
serializeImagePulls: false
`, l.containerdSock(), nodeIP, podCIDR, l.path("pod-logs"), l.pki("kubelet.crt"), l.pki("kubelet.key"),
		l.pki("ca.crt"), dnsServiceIP)
}

// kubeProxyConfig: nftables mode, bound to the bridge; conntrack settings of zero leave
// the host's conntrack sysctls alone.
func kubeProxyConfig(l layout) string {
	return fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
mode: nftables
clusterCIDR: %s
bindAddress: %s
nodePortAddresses: ["%s/32"]
hostnameOverride: %s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`, l.kubeconfig(), clusterCIDR, nodeIP, nodeIP, nodeName)
}

// corefile: CoreDNS answers for cluster.local only. It has no forward: pods never reach
// a resolver outside the machine.
func corefile(l layout) string {
	return fmt.Sprintf(`.:53 {
    bind %s
    errors
    health 127.0.0.1:10054
    ready 127.0.0.1:10055
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig %s %s
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
}
`, nodeIP, l.kubeconfig(), clusterName)
}
