package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/braidmesh/braid/hack/clusterkit"
)

// headerCanary checks SMI's A/B rule: a split with matches sends what its HTTPRouteGroup
// matches (x-canary: true) to its backends (reviews-v2 at 100) and every other request
// to the root Service reviews, which selects both versions.
func (s *suite) headerCanary(ctx context.Context) error {
	if s.frontendIP == "" {
		return errors.New("no frontend pod (injection check failed)")
	}
	const n = 200
	if err := s.kit.Apply(ctx, clusterkit.HeaderCanary(ns)); err != nil {
		return err
	}
	t := time.Now()
	groups := []struct {
		what    string
		headers []string
		ok      func(r clusterkit.Result) error
	}{
		// The rest follows the root Service: both versions answer. First, since the
		// previous split (0/100) already sent everything to v2.
		{"no x-canary", nil, bothVersions},
		{"x-canary: truex (the regex matches the whole value)", []string{"x-canary:truex"}, bothVersions},
		{"x-canary: true", []string{"x-canary:true"}, func(r clusterkit.Result) error {
			if r.Counts["v2"] != n {
				return fmt.Errorf("want all %d on v2", n)
			}
			return nil
		}},
	}
	for _, g := range groups {
		var r clusterkit.Result
		var earlier []string
		err := clusterkit.Eventually(ctx, 30*time.Second, 300*time.Millisecond, func() error {
			var err error
			if r, err = clusterkit.CallWithHeaders(ctx, s.frontendIP, "http://reviews:8080/", n, g.headers...); err != nil {
				return err
			}
			earlier = append(earlier, fmt.Sprintf("%d/%d", r.Counts["v1"], r.Counts["v2"]))
			if r.Errors > 0 {
				return fmt.Errorf("%s: %d errors: %s", g.what, r.Errors, r.Error)
			}
			if err := g.ok(r); err != nil {
				return fmt.Errorf("%s: measured v1 %d, v2 %d: %w", g.what, r.Counts["v1"], r.Counts["v2"], err)
			}
			return nil
		})
		if err != nil {
			return err
		}
		fmt.Printf("      %-52s v1 %3d  v2 %3d of %d (%s after apply)\n", g.what, r.Counts["v1"], r.Counts["v2"], n,
			time.Since(t).Round(10*time.Millisecond))
		if len(earlier) > 1 {
			fmt.Printf("        earlier attempts (v1/v2): %s\n", strings.Join(earlier[:len(earlier)-1], " "))
		}
	}
	return nil
}

func bothVersions(r clusterkit.Result) error {
	if r.Share("v1") < 0.1 || r.Share("v2") < 0.1 {
		return errors.New("want both versions (the root Service), each at least 10%")
	}
	return nil
}

// optedOut checks that a pod annotated braid.dev/inject: disabled in the injected
// namespace is admitted unchanged and runs, and that its ReplicaSet got the Event.
func (s *suite) optedOut(ctx context.Context) error {
	if err := s.kit.Apply(ctx, clusterkit.OptedOut(ns)); err != nil {
		return err
	}
	pods, err := s.kit.ReadyPods(ctx, ns, "app=opted-out", 1, 120*time.Second)
	if err != nil {
		return err
	}
	if err := untouched(&pods[0]); err != nil {
		return err
	}
	// The injector says why on the pod's owner.
	return clusterkit.Eventually(ctx, 15*time.Second, 500*time.Millisecond, func() error {
		evs, err := s.kit.CS.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "reason=InjectionSkipped"})
		if err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.InvolvedObject.Kind == "ReplicaSet" && strings.HasPrefix(e.InvolvedObject.Name, "opted-out-") && strings.Contains(e.Message, "Disabled") {
				return nil
			}
		}
		return errors.New("no InjectionSkipped Event with Disabled on the opted-out ReplicaSet")
	})
}

// untouched checks that the injector changed nothing of the pod.
func untouched(p *corev1.Pod) error {
	if len(p.Spec.InitContainers) != 0 || len(p.Spec.Containers) != 1 || p.Spec.Containers[0].Name != "app" {
		var names []string
		for _, c := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
			names = append(names, c.Name)
		}
		return fmt.Errorf("pod %s has containers %v, want [app]", p.Name, names)
	}
	for _, v := range p.Spec.Volumes {
		if strings.HasPrefix(v.Name, "braid-") {
			return fmt.Errorf("pod %s has volume %s", p.Name, v.Name)
		}
	}
	for k := range p.Annotations {
		if strings.HasPrefix(k, "braid.dev/") && k != "braid.dev/inject" {
			return fmt.Errorf("pod %s has annotation %s", p.Name, k)
		}
	}
	if rp := p.Spec.Containers[0].ReadinessProbe; rp == nil || rp.HTTPGet == nil || rp.HTTPGet.Port.IntValue() != 8080 {
		return fmt.Errorf("pod %s: its readiness probe was changed", p.Name)
	}
	return nil
}

// probes checks a meshed pod with an httpGet readiness, a tcpSocket liveness and a grpc
// startup probe: all three are rewritten to the proxy's admin port, the original ones
// are in braid.dev/original-probes, the pod becomes Ready and stays Ready without a
// restart, and the kubelet's readiness really follows the application through the proxy.
func (s *suite) probes(ctx context.Context) error {
	if err := s.kit.Apply(ctx, clusterkit.Probes(ns)); err != nil {
		return err
	}
	pods, err := s.kit.ReadyPods(ctx, ns, "app=probes", 1, 120*time.Second)
	if err != nil {
		return err
	}
	p := pods[0]
	if err := meshed(&p); err != nil {
		return err
	}
	if err := probesRewritten(&p); err != nil {
		return err
	}
	admin := "http://" + p.Status.PodIP + ":15000/app-probe/app/"
	for _, kind := range []string{"readiness", "liveness", "startup"} {
		if code, body := status(ctx, admin+kind); code != http.StatusOK {
			return fmt.Errorf("the proxy answered %d to %s: %s", code, admin+kind, body)
		}
	}
	const stable = 20 * time.Second
	if err := s.staysReady(ctx, p.Name, stable); err != nil {
		return err
	}
	if err := s.unhealthyAndBack(ctx, &p, admin); err != nil {
		return err
	}
	fmt.Printf("      Ready with no restart for %s; unhealthy app -> NotReady -> Ready again, still no restart\n", stable)
	return nil
}

// unhealthyAndBack turns the application unhealthy: the proxy's gRPC and HTTP probes say
// so, and the kubelet, which only asks the proxy, takes the pod out of Ready; then back,
// with no restart.
func (s *suite) unhealthyAndBack(ctx context.Context, p *corev1.Pod, admin string) error {
	if err := post(ctx, "http://"+p.Status.PodIP+":8080/health?state=down"); err != nil {
		return err
	}
	if code, body := status(ctx, admin+"startup"); code != http.StatusServiceUnavailable || !strings.Contains(body, "NOT_SERVING") {
		return fmt.Errorf("with the app's gRPC health NOT_SERVING the proxy answered %d to the startup probe: %s", code, body)
	}
	if code, body := status(ctx, admin+"readiness"); code != http.StatusServiceUnavailable {
		return fmt.Errorf("with the app's /healthz at 503 the proxy answered %d to the readiness probe: %s", code, body)
	}
	if err := s.waitReady(ctx, p.Name, false); err != nil {
		return err
	}
	if err := post(ctx, "http://"+p.Status.PodIP+":8080/health?state=up"); err != nil {
		return err
	}
	if err := s.waitReady(ctx, p.Name, true); err != nil {
		return err
	}
	return s.staysReady(ctx, p.Name, 0)
}

// probesRewritten checks the app container's probes point at the proxy's admin port and
// the annotation keeps the originals (the named port resolved to its number).
func probesRewritten(p *corev1.Pod) error {
	app := p.Spec.Containers[0]
	for kind, probe := range map[string]*corev1.Probe{"liveness": app.LivenessProbe, "readiness": app.ReadinessProbe, "startup": app.StartupProbe} {
		want := "/app-probe/app/" + kind
		if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != want || probe.HTTPGet.Port.IntValue() != 15000 ||
			probe.TCPSocket != nil || probe.GRPC != nil {
			b, _ := json.Marshal(probe)
			return fmt.Errorf("the %s probe is %s, want httpGet %s on port 15000", kind, b, want)
		}
	}
	return originalProbes(p.Annotations["braid.dev/original-probes"])
}

// originalProbes checks the braid.dev/original-probes annotation holds the app's probes.
func originalProbes(raw string) error {
	type port struct {
		Path string `json:"path"`
		Port int32  `json:"port"`
	}
	var orig map[string]map[string]struct {
		HTTPGet   *port `json:"httpGet"`
		TCPSocket *port `json:"tcpSocket"`
		GRPC      *port `json:"grpc"`
	}
	if err := json.Unmarshal([]byte(raw), &orig); err != nil {
		return fmt.Errorf("braid.dev/original-probes %q: %w", raw, err)
	}
	a := orig["app"]
	if h := a["readiness"].HTTPGet; h == nil || h.Path != "/healthz" || h.Port != 8080 {
		return fmt.Errorf("braid.dev/original-probes has no readiness httpGet /healthz on 8080 (the named port resolved): %s", raw)
	}
	if t := a["liveness"].TCPSocket; t == nil || t.Port != 8080 {
		return fmt.Errorf("braid.dev/original-probes has no liveness tcpSocket on 8080: %s", raw)
	}
	if g := a["startup"].GRPC; g == nil || g.Port != 9090 {
		return fmt.Errorf("braid.dev/original-probes has no startup grpc on 9090: %s", raw)
	}
	return nil
}

// staysReady checks every second for d (once when d is 0) that the pod is Ready and no
// container of it restarted.
func (s *suite) staysReady(ctx context.Context, pod string, d time.Duration) error {
	t := time.Now()
	for {
		cur, err := s.kit.CS.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !clusterkit.PodReady(cur) {
			return fmt.Errorf("pod %s lost Ready %s after it became Ready", pod, time.Since(t).Round(time.Second))
		}
		for _, cs := range append(append([]corev1.ContainerStatus{}, cur.Status.InitContainerStatuses...), cur.Status.ContainerStatuses...) {
			if cs.RestartCount > 0 {
				return fmt.Errorf("pod %s: container %s restarted %d times", pod, cs.Name, cs.RestartCount)
			}
		}
		if time.Since(t) >= d {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

func (s *suite) waitReady(ctx context.Context, pod string, ready bool) error {
	return clusterkit.Eventually(ctx, 20*time.Second, 250*time.Millisecond, func() error {
		cur, err := s.kit.CS.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if clusterkit.PodReady(cur) != ready {
			return fmt.Errorf("pod %s: Ready is %v, want %v", pod, !ready, ready)
		}
		return nil
	})
}

func status(ctx context.Context, url string) (int, string) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, strings.TrimSpace(string(b))
}

func post(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s: %s", url, resp.Status)
	}
	return nil
}

var tcpOpened = regexp.MustCompile(`(?m)^braid_proxy_tcp_connections_opened_total\{([^}]*)\} (\d+)`)

// tcpConnections sums the frontend proxy's opaque connections to tcp-echo.
func (s *suite) tcpConnections(ctx context.Context) (int, error) {
	m, err := get(ctx, "http://"+s.frontendIP+":15000/metrics")
	if err != nil {
		return 0, err
	}
	n := 0
	for _, l := range tcpOpened.FindAllStringSubmatch(m, -1) {
		if strings.Contains(l[1], `dst_service="`) && strings.Contains(l[1], "tcp-echo") {
			v, _ := strconv.Atoi(l[2])
			n += v
		}
	}
	return n, nil
}

const tcpAddr, tcpConns = "tcp-echo:9000", 5

// tcpExpect waits until all of frontend's tcpConns connections to tcp-echo succeed (allowed)
// or all fail (denied), and returns the last result.
func (s *suite) tcpExpect(ctx context.Context, allowed bool, what string) (clusterkit.TCPResult, error) {
	var r clusterkit.TCPResult
	err := clusterkit.Eventually(ctx, 20*time.Second, 500*time.Millisecond, func() error {
		var err error
		if r, err = clusterkit.TCPCall(ctx, s.frontendIP, tcpAddr, tcpConns); err != nil {
			return err
		}
		if allowed && r.OK != tcpConns {
			return fmt.Errorf("%s: %d of %d connections to %s failed: %s", what, r.Errors, tcpConns, tcpAddr, r.Error)
		}
		if !allowed && r.Errors != tcpConns {
			return fmt.Errorf("%s: %d of %d connections to %s got through", what, r.OK, tcpConns, tcpAddr)
		}
		return nil
	})
	return r, err
}

// tcp checks opaque TCP between meshed pods: frontend's app talks to a server that
// speaks first (tcp-echo:9000, no declared protocol) through both proxies; a TrafficTarget
// with a TCPRoute that lists another source closes frontend's connections, and one that
// lists frontend lets them through.
func (s *suite) tcp(ctx context.Context) error {
	if s.frontendIP == "" {
		return errors.New("no frontend pod (injection check failed)")
	}
	if err := s.kit.Apply(ctx, clusterkit.TCPEcho(ns)); err != nil {
		return err
	}
	pods, err := s.kit.ReadyPods(ctx, ns, "app=tcp-echo", 1, 120*time.Second)
	if err != nil {
		return err
	}
	if err := meshed(&pods[0]); err != nil {
		return err
	}
	before, err := s.tcpConnections(ctx)
	if err != nil {
		return err
	}
	r, err := s.tcpExpect(ctx, true, "no TrafficTarget")
	if err != nil {
		return err
	}
	if want := "tcp-echo v1 " + pods[0].Name; r.Banner != want {
		return fmt.Errorf("banner %q, want %q", r.Banner, want)
	}
	after, err := s.tcpConnections(ctx)
	if err != nil {
		return err
	}
	if after-before < tcpConns {
		return fmt.Errorf("the frontend proxy counted %d opaque connections to tcp-echo for %d made: not carried by the mesh", after-before, tcpConns)
	}
	defer func() { _ = s.kit.Delete(context.WithoutCancel(ctx), clusterkit.TCPAccess(ns, "nobody")) }()
	if err := s.kit.Apply(ctx, clusterkit.TCPAccess(ns, "nobody")); err != nil {
		return err
	}
	if _, err := s.tcpExpect(ctx, false, "TrafficTarget for nobody"); err != nil {
		return err
	}
	if err := s.kit.Apply(ctx, clusterkit.TCPAccess(ns, "frontend")); err != nil {
		return err
	}
	if _, err := s.tcpExpect(ctx, true, "TrafficTarget for frontend"); err != nil {
		return err
	}
	fmt.Printf("      banner %q first; %d opaque connections counted by frontend's proxy; denied for nobody, allowed for frontend\n",
		r.Banner, after-before)
	return nil
}

// load calls reviews through frontend (and its proxy) without pause, 10 requests per
// call, counting requests and failures, and those made while outage is set.
type load struct {
	s                              *suite
	mu                             sync.Mutex
	requests, failed, duringOutage int
	lastErr                        string
	outage                         bool
	stop, done                     chan struct{}
}

func (s *suite) startLoad(ctx context.Context) *load {
	l := &load{s: s, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			r, err := clusterkit.Call(ctx, s.frontendIP, "http://reviews:8080/", 10)
			l.record(r, err)
		}
	}()
	return l
}

func (l *load) record(r clusterkit.Result, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	got := r.Errors
	for _, c := range r.Counts {
		got += c
	}
	if err != nil {
		got, r.Errors, r.Error = 10, 10, err.Error()
	}
	l.requests += got
	l.failed += r.Errors
	if r.Errors > 0 {
		l.lastErr = r.Error
	}
	if l.outage {
		l.duringOutage += got
	}
}

func (l *load) setOutage(on bool) {
	l.mu.Lock()
	l.outage = on
	l.mu.Unlock()
}

func (l *load) finish() {
	close(l.stop)
	<-l.done
}

// operatorRestart deletes the operator pod while frontend calls reviews without pause
// (through frontend's proxy): the proxies keep their last configuration, so no request
// may fail; afterwards every proxy is connected to the new operator and a configuration
// change reaches frontend's proxy.
func (s *suite) operatorRestart(ctx context.Context) error {
	if s.frontendIP == "" {
		return errors.New("no frontend pod (injection check failed)")
	}
	if err := s.splitReaches(ctx, 50, 50); err != nil {
		return fmt.Errorf("before the restart: %w", err)
	}
	old, err := s.kit.ReadyPods(ctx, "braid-system", "app.kubernetes.io/name=braid-operator", 1, 10*time.Second)
	if err != nil {
		return err
	}
	begin := time.Now()
	l := s.startLoad(ctx)
	time.Sleep(3 * time.Second)
	l.setOutage(true)
	deleted := time.Now()
	if err := s.kit.CS.CoreV1().Pods("braid-system").Delete(ctx, old[0].Name, metav1.DeleteOptions{}); err != nil {
		l.finish()
		return err
	}
	readyAfter, synced, err := s.operatorBack(ctx, old[0].UID, deleted)
	outage := time.Since(deleted)
	l.setOutage(false)
	if err != nil {
		l.finish()
		return err
	}
	// Keep the load on a little longer, 20 s in all and 3 s at least after the outage.
	time.Sleep(max(3*time.Second, 20*time.Second-time.Since(begin)))
	l.finish()
	if l.failed > 0 || l.requests < 100 {
		return fmt.Errorf("%d of %d requests failed (%d during the outage): %s", l.failed, l.requests, l.duringOutage, l.lastErr)
	}
	if l.duringOutage == 0 {
		return errors.New("no request ran while the operator was away")
	}
	fmt.Printf("      %d requests in %s, 0 failed; %d of them during the %s from deleting the operator pod to\n"+
		"      all %d proxies SYNCED with the new one (new pod Ready after %s)\n",
		l.requests, time.Since(begin).Round(100*time.Millisecond), l.duringOutage, outage.Round(100*time.Millisecond),
		synced, readyAfter.Round(100*time.Millisecond))
	t := time.Now()
	if err := s.splitReaches(ctx, 100, 0); err != nil {
		return fmt.Errorf("frontend's proxy did not get configuration from the new operator: %w", err)
	}
	fmt.Printf("      a split change (50/50 -> 100/0) reached frontend's proxy %s after apply\n", time.Since(t).Round(10*time.Millisecond))
	return nil
}

// operatorBack waits for the Deployment's new operator pod to be Ready and for every
// running meshed pod's proxy to be SYNCED with it; it returns when the pod was Ready
// (since deleted) and how many proxies are SYNCED.
func (s *suite) operatorBack(ctx context.Context, oldUID types.UID, deleted time.Time) (time.Duration, int, error) {
	err := clusterkit.Eventually(ctx, 120*time.Second, 250*time.Millisecond, func() error {
		list, err := s.kit.CS.CoreV1().Pods("braid-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=braid-operator"})
		if err != nil {
			return err
		}
		for _, p := range list.Items {
			if p.UID != oldUID && p.DeletionTimestamp == nil && clusterkit.PodReady(&p) {
				return nil
			}
		}
		return errors.New("no new operator pod Ready")
	})
	if err != nil {
		return 0, 0, err
	}
	readyAfter := time.Since(deleted)
	var synced int
	err = clusterkit.Eventually(ctx, 90*time.Second, 500*time.Millisecond, func() error {
		want, err := s.meshedRunning(ctx)
		if err != nil {
			return err
		}
		m, err := s.operatorMetrics(ctx)
		if err != nil {
			return err
		}
		g := syncedProxies.FindStringSubmatch(m)
		if g == nil {
			return errors.New(`the operator exports no braid_config_proxies{state="SYNCED"}`)
		}
		if synced, _ = strconv.Atoi(g[1]); synced < want {
			return fmt.Errorf("%d proxies SYNCED with the new operator, %d meshed pods run", synced, want)
		}
		return nil
	})
	return readyAfter, synced, err
}

// splitReaches applies reviews' split with weights v1/v2 and waits until frontend's
// calls follow it (a weight of 0 gets nothing, both get some otherwise).
func (s *suite) splitReaches(ctx context.Context, v1, v2 int) error {
	if err := s.kit.Apply(ctx, clusterkit.TrafficSplit(ns, v1, v2)); err != nil {
		return err
	}
	return clusterkit.Eventually(ctx, 60*time.Second, 300*time.Millisecond, func() error {
		r, err := clusterkit.Call(ctx, s.frontendIP, "http://reviews:8080/", 50)
		if err != nil {
			return err
		}
		if r.Errors > 0 || (r.Counts["v1"] > 0) != (v1 > 0) || (r.Counts["v2"] > 0) != (v2 > 0) {
			return fmt.Errorf("weights %d/%d: measured v1 %d, v2 %d, %d errors %s", v1, v2, r.Counts["v1"], r.Counts["v2"], r.Errors, r.Error)
		}
		return nil
	})
}

var syncedProxies = regexp.MustCompile(`(?m)^braid_config_proxies\{state="SYNCED"\} (\d+)`)

// meshedRunning counts the running injected pods of the test namespace.
func (s *suite) meshedRunning(ctx context.Context) (int, error) {
	list, err := s.kit.CS.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, p := range list.Items {
		if p.Annotations["braid.dev/injected"] == "true" && p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
			n++
		}
	}
	return n, nil
}
