// Package rotation tests certificate rotation end to end, under load: a real API server
// (envtest) with the operator's certificate controller, its identity service over TLS
// with real TokenReview, its config server carrying the trust bundle, and two braid-proxy
// processes getting their certificates from it and carrying continuous traffic over
// mTLS while (a) their certificates renew, (b) the intermediate rotates, (c) the root
// rotates. Not one request may fail, and at the end every certificate chains to the new
// root alone. Half the requests share the proxies' one multiplexed HTTP/2 connection,
// established before the rotations; the other half are upgrades (101 Switching
// Protocols), which take a connection of their own, so every one of them is a new mTLS
// handshake between the proxies with the certificates and bundles of that moment.
package rotation

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	braidv1alpha1 "github.com/braidmesh/braid/api/v1alpha1"
	"github.com/braidmesh/braid/controllers"
	"github.com/braidmesh/braid/internal/ca"
	"github.com/braidmesh/braid/internal/configserver"
	"github.com/braidmesh/braid/internal/identity"
	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/test/harness"
)

const (
	operatorNS  = "braid-system"
	appNS       = "shop"
	trustDomain = "cluster.local"
	// workloadLifetime is the proxies' certificate lifetime here, far below the API's
	// minimum (10m), so that they renew every few seconds during the test.
	workloadLifetime = 20 * time.Second
	workers          = 8
)

// operator is the operator's identity side: the CA controller, the identity server and
// the config server, with the Holder the controller loads the CA into.
type operator struct {
	holder       *ca.Holder
	config       *configserver.Server
	configAddr   string
	identityAddr string
}

func startOperator(ctx context.Context, t *testing.T, cp *harness.ControlPlane) *operator {
	t.Helper()
	scheme, err := controllers.NewScheme()
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := ctrl.NewManager(cp.RestConfig, ctrl.Options{Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0"})
	if err != nil {
		t.Fatal(err)
	}
	log := mgr.GetLogger()
	op := &operator{config: configserver.New(log.WithName("configserver"), configserver.Options{Debounce: 5 * time.Millisecond})}
	op.holder, err = controllers.SetupIdentity(mgr, controllers.IdentityOptions{Namespace: operatorNS, Proxies: op.config})
	if err != nil {
		t.Fatal(err)
	}
	// The identity service signs from a copy of the CA with a short workload lifetime.
	// Its serving certificate (of the same lifetime, so it renews too) also names
	// localhost, which the proxies dial.
	short := &ca.Holder{}
	serving := &ca.ServingCert{
		Holder: short, Namespace: operatorNS, ServiceAccount: "braid-operator",
		DNSNames: append(ca.ServingDNSNames(operatorNS), "localhost"), Clock: clock.RealClock{}, Log: log.WithName("serving-cert"),
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	op.identityAddr = fmt.Sprintf("localhost:%d", lis.Addr().(*net.TCPAddr).Port)
	if _, err := ca.AddServer(mgr, short, ca.ServerOptions{Namespace: operatorNS, ServiceAccount: "braid-operator", Listener: lis, Serving: serving}); err != nil {
		t.Fatal(err)
	}
	cfgLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	op.configAddr = cfgLis.Addr().String()
	mctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Go(func() { errs <- mgr.Start(mctx) })
	wg.Go(func() { errs <- op.config.Serve(mctx, cfgLis) })
	wg.Go(func() {
		follow(mctx, op.holder, func(st *ca.State) { c := *st; c.WorkloadLifetime = workloadLifetime; short.Store(&c) })
	})
	wg.Go(func() { follow(mctx, op.holder, func(st *ca.State) { op.config.SetTrustBundle(string(st.Bundle)) }) }) // as main.go's feedTrustBundle
	wg.Go(func() { serving.Start(mctx) })                                                                         //nolint:errcheck // returns nil
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Errorf("the operator: %v", err)
			}
		}
	})
	return op
}

// follow calls f with every State the holder puts in force until ctx ends.
func follow(ctx context.Context, h *ca.Holder, f func(*ca.State)) {
	changed := h.Subscribe()
	for {
		if st := h.Load(); st != nil {
			f(st)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// pod is what the kubelet gives an injected proxy: a projected token and the trust
// bundle ConfigMap, mounted as files and kept current.
type pod struct {
	sa                string
	tokenFile, caFile string
	inboundPort       int
	proxy             *harness.Proxy
	logs              *harness.LogBuffer
}

func newPod(ctx context.Context, t *testing.T, cp *harness.ControlPlane, sa string) *pod {
	t.Helper()
	dir := t.TempDir()
	p := &pod{sa: sa, tokenFile: filepath.Join(dir, "token"), caFile: filepath.Join(dir, "ca.crt"), logs: &harness.LogBuffer{}}
	if err := cp.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: appNS, Name: sa}}); err != nil {
		t.Fatal(err)
	}
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: []string{"braid"}}}
	if err := cp.Client.SubResource("token").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: appNS, Name: sa}}, tr); err != nil {
		t.Fatalf("requesting a token: %v", err)
	}
	if err := harness.WriteFileAtomically(p.tokenFile, []byte(tr.Status.Token)); err != nil {
		t.Fatal(err)
	}
	return p
}

// kubelet copies the trust bundle ConfigMap into every pod's file whenever it changes,
// as the kubelet does for a mounted ConfigMap (here within 100 ms rather than a minute).
func kubelet(ctx context.Context, t *testing.T, c client.Client, pods ...*pod) {
	t.Helper()
	var last string
	sync := func() bool {
		var cm corev1.ConfigMap
		if err := c.Get(ctx, client.ObjectKey{Namespace: appNS, Name: controllers.TrustBundleConfigMapName}, &cm); err != nil {
			return false
		}
		b := cm.Data[controllers.TrustBundleKey]
		if b == last || b == "" {
			return b != ""
		}
		for _, p := range pods {
			if err := harness.WriteFileAtomically(p.caFile, []byte(b)); err != nil {
				t.Error(err)
			}
		}
		last = b
		return true
	}
	for !sync() {
		select {
		case <-ctx.Done():
			t.Fatal("the trust bundle ConfigMap never appeared")
		case <-time.After(50 * time.Millisecond):
		}
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
				sync()
			}
		}
	}()
}

func (p *pod) start(ctx context.Context, t *testing.T, bin string, op *operator) {
	t.Helper()
	p.inboundPort = freePort(t)
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	var err error
	p.proxy, err = harness.StartProxy(sctx, bin, op.configAddr, appNS, p.logs,
		"--proxy-id", p.sa, "--service-account", p.sa, "--trust-domain", trustDomain,
		"--identity-address", op.identityAddr, "--token-file", p.tokenFile, "--trust-bundle-file", p.caFile,
		"--inbound-listen", fmt.Sprintf("127.0.0.1:%d", p.inboundPort))
	if err != nil {
		t.Fatalf("%v\nlogs:\n%s", err, p.logs.String())
	}
	t.Cleanup(func() {
		if err := p.proxy.Stop(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("braid-proxy %s logs:\n%s", p.sa, p.logs.String())
		}
	})
}

// certificate returns the chain the proxy's inbound listener presents now.
func (p *pod) certificate(t *testing.T) []*x509.Certificate {
	t.Helper()
	var chain []*x509.Certificate
	cfg := &tls.Config{
		InsecureSkipVerify: true, // #nosec G402 -- the chain is only read, and checked by the caller
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{"http/1.1"},
		VerifyConnection: func(cs tls.ConnectionState) error {
			chain = cs.PeerCertificates
			return nil
		},
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", fmt.Sprintf("127.0.0.1:%d", p.inboundPort), cfg)
	if err == nil {
		_ = conn.Close()
	}
	if len(chain) == 0 {
		t.Fatalf("proxy %s presented no certificate: %v", p.sa, err)
	}
	return chain
}

func freePort(t *testing.T) int {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lis.Close() }()
	return lis.Addr().(*net.TCPAddr).Port
}

// load sends requests through the client proxy from workers goroutines until stop:
// half plain requests, half upgrades.
type load struct {
	ok, upgrades, failed atomic.Int64
	mu                   sync.Mutex
	failures             []string
}

func (l *load) run(ctx context.Context, p *harness.Proxy) {
	var wg sync.WaitGroup
	for i := range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				var err error
				if i%2 == 0 {
					var res harness.Result
					if res, err = p.Get(ctx, "reviews"); err == nil && (res.Status != http.StatusOK || res.Body != "reviews") {
						err = fmt.Errorf("answered %+v", res)
					}
				} else if err = upgrade(ctx, p.OutboundAddr); err == nil {
					l.upgrades.Add(1)
				}
				switch {
				case ctx.Err() != nil:
					return
				case err == nil:
					l.ok.Add(1)
				default:
					l.failed.Add(1)
					l.mu.Lock()
					if len(l.failures) < 20 {
						l.failures = append(l.failures, fmt.Sprintf("%s: %v", time.Now().Format(time.StampMilli), err))
					}
					l.mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
}

// upgrade sends an upgrade request through the proxy at addr and reads the app's
// answer on the upgraded connection.
func upgrade(ctx context.Context, addr string) error {
	d := net.Dialer{Timeout: 5 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET /up HTTP/1.1\r\nHost: reviews\r\nConnection: Upgrade\r\nUpgrade: rotation-test\r\n\r\n"); err != nil {
		return fmt.Errorf("upgrade: %w", err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return fmt.Errorf("upgrade: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("upgrade answered %d %q", resp.StatusCode, body)
	}
	line, err := br.ReadString('\n')
	if err != nil {
		return fmt.Errorf("upgraded connection: %w", err)
	}
	if line != "reviews upgraded\n" {
		return fmt.Errorf("upgraded connection: %q", line)
	}
	return nil
}

func TestRotationUnderLoadLosesNoRequest(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	sc := newScenario(ctx, t)
	oldRoot := secret(ctx, t, sc.cp, controllers.RootSecretName)
	sc.logf("the pair carries requests over mTLS; starting the load")

	lctx, stopLoad := context.WithCancel(ctx)
	loadDone := make(chan struct{})
	go func() { sc.traffic.run(lctx, sc.web.proxy); close(loadDone) }()
	stop := func() {
		stopLoad()
		<-loadDone
	}
	defer stop()

	sc.leavesRenew(ctx)
	sc.logf("(a) both proxies renewed their certificates")
	sc.issuerRotates(ctx)
	sc.logf("(b) the intermediate rotated and both proxies hold certificates from it")
	phases := sc.rootRotates(ctx)
	sc.logf("(c) the root rotation completed (phases seen: %v)", phases)
	// A few more seconds of traffic on the new root alone.
	select {
	case <-time.After(3 * time.Second):
	case <-ctx.Done():
	}
	stop()

	sc.onlyNewRoot(ctx, oldRoot)
	sc.eventsRecorded(ctx)
	ok, failed, upgrades := sc.traffic.ok.Load(), sc.traffic.failed.Load(), sc.traffic.upgrades.Load()
	sc.logf("the end (%d upgrades, each on a new mTLS connection)", upgrades)
	if failed != 0 {
		t.Errorf("%d requests failed during the rotations; the first: %s", failed, strings.Join(sc.traffic.failures, "\n"))
	}
	if ok < 100 || upgrades < 50 {
		t.Errorf("only %d requests (%d upgrades) went through: the load did not run", ok, upgrades)
	}
}

// scenario is the operator, the two proxy pods (web calls reviews) and the load.
type scenario struct {
	t            *testing.T
	start        time.Time
	cp           *harness.ControlPlane
	op           *operator
	web, reviews *pod
	traffic      load
}

func (sc *scenario) logf(format string, args ...any) {
	sc.t.Helper()
	sc.t.Logf("%v: %s; %d requests so far, %d failed", time.Since(sc.start).Round(time.Millisecond), fmt.Sprintf(format, args...),
		sc.traffic.ok.Load(), sc.traffic.failed.Load())
}

func (sc *scenario) pods() []*pod { return []*pod{sc.web, sc.reviews} }

// newScenario starts everything and returns once a request crosses the pair.
func newScenario(ctx context.Context, t *testing.T) *scenario {
	t.Helper()
	sc := &scenario{t: t, start: time.Now()}
	bin, err := harness.BuildProxy(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	sc.cp, err = harness.StartControlPlane(ctx, zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sc.cp.Stop() })
	mesh := harness.Namespace(appNS)
	mesh.Labels = map[string]string{"braid.dev/inject": "enabled"}
	for _, o := range []client.Object{harness.Namespace(operatorNS), mesh, &braidv1alpha1.MeshConfig{ObjectMeta: metav1.ObjectMeta{Name: braidv1alpha1.MeshConfigName}}} {
		if err := sc.cp.Client.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	sc.op = startOperator(ctx, t, sc.cp)
	appPort := startApp(t)
	sc.web, sc.reviews = newPod(ctx, t, sc.cp, "web"), newPod(ctx, t, sc.cp, "reviews")
	kubelet(ctx, t, sc.cp.Client, sc.web, sc.reviews)
	sc.reviews.start(ctx, t, bin, sc.op)
	sc.web.start(ctx, t, bin, sc.op)
	sc.op.config.SetPolicy(appNS, &configserver.Policy{Default: &api.Inbound{Mode: "Permissive", AllowAll: true}})
	sc.op.config.SetService(appNS, "reviews", &api.Service{Namespace: appNS, Name: "reviews", Ports: []*api.ServicePort{{
		Port: 80, Protocol: api.Protocol_PROTOCOL_HTTP1,
		Routes: []*api.Route{{Backends: []*api.Backend{{Service: "reviews", Weight: 1, Endpoints: []*api.Endpoint{{
			Ip: "127.0.0.1", Port: uint32(appPort),
			Identity: "spiffe://cluster.local/ns/shop/sa/reviews", ProxyPort: uint32(sc.reviews.inboundPort),
		}}}}}},
	}}})
	sc.op.config.MarkReady()
	waitFor(ctx, t, "a first request through the pair", func() error {
		res, err := sc.web.proxy.Get(ctx, "reviews")
		if err == nil && res.Status != http.StatusOK {
			err = fmt.Errorf("HTTP %d %q", res.Status, res.Body)
		}
		return err
	})
	return sc
}

// startApp starts the application behind the server proxy: it answers "reviews", and
// upgrades (101) the requests that ask for it, answering "reviews upgraded" on the
// upgraded connection. It returns its port.
func startApp(t *testing.T) int {
	t.Helper()
	app := &http.Server{ReadHeaderTimeout: time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "" {
			_, _ = io.WriteString(w, "reviews")
			return
		}
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer func() { _ = conn.Close() }()
		_, _ = rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: rotation-test\r\n\r\nreviews upgraded\n")
		_ = rw.Flush()
	})}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = app.Serve(lis) }()
	t.Cleanup(func() { _ = app.Close() })
	return lis.Addr().(*net.TCPAddr).Port
}

// leavesRenew waits until every proxy presents a new certificate (the workload lifetime
// is 20 s: they renew at about 14 s).
func (sc *scenario) leavesRenew(ctx context.Context) {
	t := sc.t
	t.Helper()
	first := map[*pod]*x509.Certificate{}
	for _, p := range sc.pods() {
		first[p] = p.certificate(t)[0]
	}
	for _, p := range sc.pods() {
		waitFor(ctx, t, "proxy "+p.sa+" to renew its certificate", func() error {
			if c := p.certificate(t)[0]; c.Equal(first[p]) {
				return errors.New("still the first certificate")
			}
			return nil
		})
	}
}

// issuerRotates asks for a new intermediate and waits until both proxies present
// certificates it signed.
func (sc *scenario) issuerRotates(ctx context.Context) {
	t := sc.t
	t.Helper()
	oldInter := secret(ctx, t, sc.cp, controllers.IssuerSecretName)
	annotate(ctx, t, sc.cp, controllers.RotateIssuer)
	var newInter *identity.KeyPair
	waitFor(ctx, t, "a new intermediate", func() error {
		if newInter = secret(ctx, t, sc.cp, controllers.IssuerSecretName); newInter.Cert.Equal(oldInter.Cert) {
			return errors.New("still the old intermediate")
		}
		return nil
	})
	for _, p := range sc.pods() {
		waitFor(ctx, t, "proxy "+p.sa+" to present a certificate from the new intermediate", func() error {
			if c := p.certificate(t)[0]; c.CheckSignatureFrom(newInter.Cert) != nil {
				return errors.New("not signed by the new intermediate yet")
			}
			return nil
		})
	}
}

// rootRotates asks for a root rotation and waits for it to complete; it returns the
// phases it saw.
func (sc *scenario) rootRotates(ctx context.Context) map[string]bool {
	t := sc.t
	t.Helper()
	annotate(ctx, t, sc.cp, controllers.RotateRoot)
	phases := map[string]bool{}
	waitFor(ctx, t, "the root rotation to complete", func() error {
		var mc braidv1alpha1.MeshConfig
		if err := sc.cp.Client.Get(ctx, client.ObjectKey{Name: braidv1alpha1.MeshConfigName}, &mc); err != nil {
			return err
		}
		c := meta.FindStatusCondition(mc.Status.Conditions, controllers.ConditionRootRotation)
		if c == nil {
			return errors.New("no RootRotation condition yet")
		}
		phases[c.Reason] = true
		if c.Reason != controllers.ReasonRotationComplete {
			return fmt.Errorf("at %s: %s", c.Reason, c.Message)
		}
		return nil
	})
	return phases
}

// onlyNewRoot checks that, after the root rotation, both proxies present certificates
// chaining to the new root and not to oldRoot, say so to the config server, and run a
// trust bundle of the new root alone.
func (sc *scenario) onlyNewRoot(ctx context.Context, oldRoot *identity.KeyPair) {
	t := sc.t
	t.Helper()
	newRoot := secret(ctx, t, sc.cp, controllers.RootSecretName)
	if newRoot.Cert.Equal(oldRoot.Cert) {
		t.Fatal("the root in Secret braid-ca-root did not change")
	}
	onlyNew, onlyOld := x509.NewCertPool(), x509.NewCertPool()
	onlyNew.AddCert(newRoot.Cert)
	onlyOld.AddCert(oldRoot.Cert)
	for _, p := range sc.pods() {
		chain := p.certificate(t)
		inter := x509.NewCertPool()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		opts := x509.VerifyOptions{Roots: onlyNew, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		if _, err := chain[0].Verify(opts); err != nil {
			t.Errorf("proxy %s's certificate does not chain to the new root: %v", p.sa, err)
		}
		opts.Roots = onlyOld
		if _, err := chain[0].Verify(opts); err == nil {
			t.Errorf("proxy %s's certificate still chains to the old root", p.sa)
		}
	}
	for _, ps := range sc.op.config.Proxies() {
		if ps.CertificateRoot != identity.Fingerprint(newRoot.Cert) {
			t.Errorf("proxy %s reports its certificate root as %q, want the new root", ps.ID, ps.CertificateRoot)
		}
	}
	bundle := string(identity.BundlePEM(newRoot.Cert))
	if got := string(sc.op.holder.TrustBundle()); got != bundle {
		t.Error("the trust bundle in force is not the new root alone")
	}
	if acked, _, connected, current := sc.op.config.TrustBundleStatus(bundle); !current || acked != connected || connected != 2 {
		t.Errorf("the config server: bundle current %v, acked by %d of %d proxies; want the new root alone, acked by both", current, acked, connected)
	}
	for _, p := range sc.pods() {
		snap, err := p.proxy.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(snap.GetTrustBundle()) != strings.TrimSpace(bundle) {
			t.Errorf("proxy %s runs a trust bundle other than the new root alone", p.sa)
		}
	}
}

// eventsRecorded waits for the Events of every rotation step on the MeshConfig.
func (sc *scenario) eventsRecorded(ctx context.Context) {
	t := sc.t
	t.Helper()
	want := []string{"IssuerRotated", "RootRotationStarted", "RootAdded", "TrustBundleDistributed", "IssuerSwitched",
		"ProxiesRecertified", "RootRotationComplete"}
	waitFor(ctx, t, "the Events of the rotations", func() error {
		var list eventsv1.EventList
		if err := sc.cp.Client.List(ctx, &list); err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, ev := range list.Items {
			if ev.Regarding.Kind == "MeshConfig" && ev.Type == corev1.EventTypeNormal {
				seen[ev.Reason] = true
			}
		}
		for _, r := range want {
			if !seen[r] {
				return fmt.Errorf("no Event %s (seen: %v)", r, seen)
			}
		}
		return nil
	})
}

func secret(ctx context.Context, t *testing.T, cp *harness.ControlPlane, name string) *identity.KeyPair {
	t.Helper()
	var s corev1.Secret
	if err := cp.Client.Get(ctx, client.ObjectKey{Namespace: operatorNS, Name: name}, &s); err != nil {
		t.Fatalf("reading Secret %s: %v", name, err)
	}
	kp, err := identity.ParseKeyPair(s.Data[corev1.TLSCertKey], s.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		t.Fatalf("Secret %s: %v", name, err)
	}
	return kp
}

func annotate(ctx context.Context, t *testing.T, cp *harness.ControlPlane, value string) {
	t.Helper()
	var mc braidv1alpha1.MeshConfig
	if err := cp.Client.Get(ctx, client.ObjectKey{Name: braidv1alpha1.MeshConfigName}, &mc); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(mc.DeepCopy())
	mc.Annotations = map[string]string{braidv1alpha1.RotateAnnotation: value}
	if err := cp.Client.Patch(ctx, &mc, patch); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls check until it returns nil, failing the test when ctx ends.
func waitFor(ctx context.Context, t *testing.T, what string, check func() error) {
	t.Helper()
	var err error
	for {
		if err = check(); err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
