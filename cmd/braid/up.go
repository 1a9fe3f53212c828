package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
)

// up starts the cluster, or reuses it when it already runs.
func up(ctx context.Context, o *options) error {
	out := os.Stdout
	l := newLayout(o.stateDir)
	begin := time.Now()
	if err := o.resolveDirs(); err != nil {
		return err
	}
	if healthy(ctx, l) == nil {
		// Reuse it, with the images as they are now: a new build replaces the old one.
		n, err := importImages(ctx, l, o.imagesDir)
		if err != nil {
			return err
		}
		_, _ = fmt.Fprintf(out, "The cluster is already up; reusing it (%d images imported again).\n", n)
		printUsage(out, l)
		return nil
	}
	// Whatever is left of an earlier cluster (a killed up, a crashed component) goes first.
	if leftovers(l) {
		_, _ = fmt.Fprintln(out, "Cleaning up what an earlier cluster left behind...")
		if err := down(ctx, l, out); err != nil {
			return fmt.Errorf("cleaning up the earlier cluster: %w", err)
		}
	}
	if err := installPackages(ctx, out); err != nil {
		return err
	}
	_, _ = fmt.Fprintf(out, "Starting a single-node Kubernetes cluster in %s (binaries from %s)\n", l.dir, o.binDir)
	if err := os.MkdirAll(l.dir, 0o711); err != nil {
		return err
	}
	if err := os.WriteFile(l.binDirFile(), []byte(o.binDir+"\n"), 0o644); err != nil {
		return err
	}
	if err := recordSysctls(l); err != nil {
		return fmt.Errorf("recording sysctls: %w", err)
	}
	if err := recordNftTables(l); err != nil {
		return fmt.Errorf("recording nftables tables: %w", err)
	}
	if err := recordHostPaths(l); err != nil {
		return fmt.Errorf("recording host paths: %w", err)
	}
	steps := []struct {
		name string
		fn   func() error
	}{
		{"network (bridge " + bridgeName + ", route, sysctls, guard)", setupNetwork},
		{"certificates and kubeconfig", func() error { return errors.Join(writePKI(l), writeFrontProxyPKI(l)) }},
		{"configuration", func() error { return writeConfigs(l) }},
	}
	for _, s := range steps {
		t := time.Now()
		if err := s.fn(); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		_, _ = fmt.Fprintf(out, "  %-48s %6s\n", s.name, since(t))
	}
	if err := startComponents(ctx, l, o, out); err != nil {
		return err
	}
	_, _ = fmt.Fprintf(out, "Node %s is Ready: the cluster came up in %s.\n", nodeName, since(begin))
	printUsage(out, l)
	return nil
}

func since(t time.Time) string { return time.Since(t).Round(10 * time.Millisecond).String() }

func startComponents(ctx context.Context, l layout, o *options, out io.Writer) error {
	comps := components(l, o.binDir)
	var cs *kubernetes.Clientset
	for _, name := range startOrder {
		if err := ctx.Err(); err != nil {
			return err
		}
		t := time.Now()
		c := comps[name]
		if name == "coredns" {
			if err := dnsService(ctx, cs); err != nil {
				return err
			}
		}
		exited, err := start(l, c)
		if err != nil {
			return err
		}
		ready, err := readiness(l, name)
		if err != nil {
			return err
		}
		detail := ""
		if err := waitFor(name, 90*time.Second, exited, l.log(name), ready); err != nil {
			return err
		}
		switch name {
		case "containerd":
			n, err := importImages(ctx, l, o.imagesDir)
			if err != nil {
				return err
			}
			detail = fmt.Sprintf("(%d images imported)", n)
		case "kube-apiserver":
			if cs, err = clientset(l); err != nil {
				return err
			}
		}
		_, _ = fmt.Fprintf(out, "  %-48s %6s %s\n", name, since(t), detail)
	}
	t := time.Now()
	if err := waitNodeReady(ctx, cs, o.timeout); err != nil {
		return fmt.Errorf("%w; the end of %s:\n%s", err, l.log("kubelet"), tail(l.log("kubelet"), 20))
	}
	_, _ = fmt.Fprintf(out, "  %-48s %6s\n", "node Ready", since(t))
	t = time.Now()
	if err := waitDefaultServiceAccount(ctx, cs); err != nil {
		return err
	}
	_, _ = fmt.Fprintf(out, "  %-48s %6s\n", "default ServiceAccount", since(t))
	return nil
}

// importImages loads every image tarball of dir into containerd's k8s.io namespace.
func importImages(ctx context.Context, l layout, dir string) (int, error) {
	tars, _ := filepath.Glob(filepath.Join(dir, "*.tar"))
	sort.Strings(tars)
	hasPause := false
	for _, t := range tars {
		if filepath.Base(t) == "pause.tar" {
			hasPause = true
		}
		cmd := exec.CommandContext(ctx, "/usr/bin/ctr", "--address", l.containerdSock(), "-n", "k8s.io", "images", "import", t)
		if b, err := cmd.CombinedOutput(); err != nil {
			return 0, fmt.Errorf("importing %s: %w\n%s", t, err, b)
		}
	}
	if !hasPause {
		return 0, fmt.Errorf("no pause.tar in %s: run `make images` first (pods need %s, and nothing can be pulled)", dir, pauseImage)
	}
	return len(tars), nil
}

// dnsService points the kube-dns Service (10.96.0.10) at CoreDNS, which runs on the host
// and listens on the node's IP, through an EndpointSlice of its own.
func dnsService(ctx context.Context, cs *kubernetes.Clientset) error {
	ports := []corev1.ServicePort{
		{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(53)},
		{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(53)},
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Namespace: "kube-system", Labels: map[string]string{"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
		Spec:       corev1.ServiceSpec{ClusterIP: dnsServiceIP, Ports: ports},
	}
	if _, err := cs.CoreV1().Services("kube-system").Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating the kube-dns Service: %w", err)
	}
	eps := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns-host", Namespace: "kube-system", Labels: map[string]string{
			discoveryv1.LabelServiceName: "kube-dns", discoveryv1.LabelManagedBy: "braid.dev",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{nodeIP}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}, NodeName: ptr.To(nodeName)}},
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("dns"), Port: ptr.To[int32](53), Protocol: ptr.To(corev1.ProtocolUDP)},
			{Name: ptr.To("dns-tcp"), Port: ptr.To[int32](53), Protocol: ptr.To(corev1.ProtocolTCP)},
		},
	}
	if _, err := cs.DiscoveryV1().EndpointSlices("kube-system").Create(ctx, eps, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating the kube-dns EndpointSlice: %w", err)
	}
	return nil
}

func waitNodeReady(ctx context.Context, cs *kubernetes.Clientset, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if n, err := cs.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{}); err == nil && nodeReady(n) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s not Ready after %s", nodeName, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func waitDefaultServiceAccount(ctx context.Context, cs *kubernetes.Clientset) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("the default ServiceAccount did not appear: is kube-controller-manager running?")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func clientset(l layout) (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", l.kubeconfig())
	if err != nil {
		return nil, err
	}
	cfg.Timeout = 10 * time.Second
	return kubernetes.NewForConfig(cfg)
}

// adminHTTP is an HTTP client that trusts the cluster's CA and presents the admin certificate.
func adminHTTP(l layout) (*http.Client, error) {
	caPEM, err := os.ReadFile(l.pki("ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(l.pki("admin.crt"), l.pki("admin.key"))
	if err != nil {
		return nil, err
	}
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	}}, nil
}

// insecureHTTP checks the health of the controller manager and scheduler, which serve it
// over a self-signed certificate on the loopback address.
func insecureHTTP() *http.Client {
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // loopback health check of a self-signed server
	}}
}

func httpOK(c *http.Client, url string) func() bool {
	if c == nil {
		c = &http.Client{Timeout: 2 * time.Second}
	}
	return func() bool {
		resp, err := c.Get(url)
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
}

func printUsage(out io.Writer, l layout) {
	binDir, _ := os.ReadFile(l.binDirFile())
	_, _ = fmt.Fprintf(out, `
Use it:
  export KUBECONFIG=%s
  export PATH=%s:$PATH    # for kubectl v1.36.3
  kubectl get nodes
Logs of every component are in %s; stop it with: braid down (or make down)
`, l.kubeconfig(), strings.TrimSpace(string(binDir)), l.path("logs"))
}

// leftovers says whether anything of an earlier cluster is still around.
func leftovers(l layout) bool {
	if _, err := os.Stat(l.dir); err == nil {
		return true
	}
	if _, err := net.InterfaceByName(bridgeName); err == nil {
		return true
	}
	return len(cgroupRoots()) > 0
}

// components are the cluster's processes and their command lines.
func components(l layout, binDir string) map[string]component {
	bin := func(name string) string { return filepath.Join(binDir, name) }
	kc := l.kubeconfig()
	pki := l.pki
	comps := map[string]component{
		"containerd": {name: "containerd", bin: "/usr/bin/containerd", args: []string{"--config", l.path("containerd", "config.toml")}},
		"etcd": {name: "etcd", bin: bin("etcd"), args: []string{
			"--name=braid", "--data-dir=" + l.path("etcd"),
			"--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
			"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
			"--initial-cluster=braid=http://127.0.0.1:2380", "--listen-metrics-urls=http://127.0.0.1:2381",
			"--unsafe-no-fsync", "--quota-backend-bytes=2147483648",
		}},
		"kube-apiserver": {name: "kube-apiserver", bin: bin("kube-apiserver"), args: []string{
			"--etcd-servers=http://127.0.0.1:2379",
			"--bind-address=" + nodeIP, "--advertise-address=" + nodeIP, "--secure-port=6443",
			"--tls-cert-file=" + pki("apiserver.crt"), "--tls-private-key-file=" + pki("apiserver.key"),
			"--client-ca-file=" + pki("ca.crt"),
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + pki("sa.pub"), "--service-account-signing-key-file=" + pki("sa.key"),
			"--service-cluster-ip-range=" + serviceCIDR, "--authorization-mode=Node,RBAC",
			"--kubelet-client-certificate=" + pki("admin.crt"), "--kubelet-client-key=" + pki("admin.key"),
			"--kubelet-certificate-authority=" + pki("ca.crt"),
			// The node's name is not in the host's resolver: logs and exec go to its IP.
			"--kubelet-preferred-address-types=InternalIP",
			"--allow-privileged=true", "--profiling=false",
			// The front proxy, for aggregated APIs (SMI TrafficMetrics), reaching their
			// servers at their endpoints rather than through the Service's cluster IP.
			"--requestheader-client-ca-file=" + pki("front-proxy-ca.crt"),
			"--requestheader-allowed-names=" + frontProxyClientName,
			"--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
			"--requestheader-extra-headers-prefix=X-Remote-Extra-",
			"--proxy-client-cert-file=" + pki("front-proxy-client.crt"), "--proxy-client-key-file=" + pki("front-proxy-client.key"),
			"--enable-aggregator-routing=true",
		}},
		"kube-controller-manager": {name: "kube-controller-manager", bin: bin("kube-controller-manager"), args: []string{
			"--kubeconfig=" + kc, "--authentication-kubeconfig=" + kc, "--authorization-kubeconfig=" + kc,
			"--service-account-private-key-file=" + pki("sa.key"), "--root-ca-file=" + pki("ca.crt"),
			"--leader-elect=false", "--bind-address=127.0.0.1", "--use-service-account-credentials=false",
			"--profiling=false",
		}},
		"kube-scheduler": {name: "kube-scheduler", bin: bin("kube-scheduler"), args: []string{
			"--kubeconfig=" + kc, "--authentication-kubeconfig=" + kc, "--authorization-kubeconfig=" + kc,
			"--leader-elect=false", "--bind-address=127.0.0.1", "--profiling=false",
		}},
		"kubelet": {name: "kubelet", bin: bin("kubelet"), args: []string{
			"--config=" + l.path("kubelet", "config.yaml"), "--kubeconfig=" + kc,
			"--root-dir=" + l.path("kubelet", "root"), "--cert-dir=" + l.path("kubelet", "pki"),
			"--hostname-override=" + nodeName, "--node-ip=" + nodeIP,
		}},
		"kube-proxy": {name: "kube-proxy", bin: bin("kube-proxy"), args: []string{"--config=" + l.path("kube-proxy", "config.yaml")}},
		"coredns":    {name: "coredns", bin: bin("coredns"), args: []string{"-conf", l.path("coredns", "Corefile")}},
	}
	return comps
}

// readiness is the check that says a component is ready.
func readiness(l layout, name string) (func() bool, error) {
	switch name {
	case "containerd":
		return func() bool {
			return exec.Command("/usr/bin/ctr", "--address", l.containerdSock(), "version").Run() == nil
		}, nil
	case "etcd":
		return httpOK(nil, "http://127.0.0.1:2379/health"), nil
	case "kube-apiserver":
		client, err := adminHTTP(l)
		if err != nil {
			return nil, err
		}
		return httpOK(client, "https://"+nodeIP+":6443/readyz"), nil
	case "kube-controller-manager":
		return httpOK(insecureHTTP(), "https://127.0.0.1:10257/healthz"), nil
	case "kube-scheduler":
		return httpOK(insecureHTTP(), "https://127.0.0.1:10259/healthz"), nil
	case "kubelet":
		return httpOK(nil, "http://127.0.0.1:10248/healthz"), nil
	case "kube-proxy":
		return func() bool { return exec.Command("nft", "list", "table", "ip", "kube-proxy").Run() == nil }, nil
	case "coredns":
		return httpOK(nil, "http://127.0.0.1:10055/ready"), nil
	}
	return nil, fmt.Errorf("no readiness check for %s", name)
}
