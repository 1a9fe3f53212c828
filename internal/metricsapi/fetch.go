package metricsapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"

	"github.com/braidmesh/braid/internal/inject"
)

// AdminAddrFunc returns the host:port of a pod's proxy admin server, or false when the
// pod has no proxy to ask.
type AdminAddrFunc func(pod *corev1.Pod) (string, bool)

// PodAdminAddr is the default AdminAddrFunc: injected pods with an IP, on the admin port
// the injector gives their proxies.
func PodAdminAddr(pod *corev1.Pod) (string, bool) {
	if pod.Annotations[inject.AnnotationInjected] != "true" || pod.Status.PodIP == "" || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return "", false
	}
	return net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(inject.AdminPort)), true
}

// fetchTimeout bounds one proxy's answer: a slow or gone pod is left out, not waited for.
const fetchTimeout = 2 * time.Second

// maxFetches bounds the proxies asked at once.
const maxFetches = 16

// maxStatsBytes bounds a proxy's answer (256 edges of ~1 KB).
const maxStatsBytes = 1 << 20

// fetcher asks proxies for their edge statistics.
type fetcher struct {
	log    logr.Logger
	client *http.Client
	addr   AdminAddrFunc
}

// podStats are one pod's proxy statistics.
type podStats struct {
	pod   *corev1.Pod
	stats proxyStats
}

// fetchAll asks every pod's proxy for the window, at most maxFetches at once; pods that
// have no proxy, or whose proxy fails to answer, are left out (logged at V(1)).
func (f *fetcher) fetchAll(ctx context.Context, pods []*corev1.Pod, window time.Duration) []podStats {
	var (
		mu  sync.Mutex
		out []podStats
		wg  sync.WaitGroup
		sem = make(chan struct{}, maxFetches)
	)
	for _, p := range pods {
		addr, ok := f.addr(p)
		if !ok {
			continue
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			st, err := f.fetch(ctx, addr, window)
			if err != nil {
				f.log.V(1).Info("Proxy edge statistics left out", "pod", p.Namespace+"/"+p.Name, "address", addr, "error", err.Error())
				return
			}
			mu.Lock()
			out = append(out, podStats{pod: p, stats: st})
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

func (f *fetcher) fetch(ctx context.Context, addr string, window time.Duration) (proxyStats, error) {
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	u := url.URL{Scheme: "http", Host: addr, Path: "/stats/edges", RawQuery: url.Values{"window": {window.String()}}.Encode()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return proxyStats{}, fmt.Errorf("building the request: %w", err)
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return proxyStats{}, fmt.Errorf("asking the proxy: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxStatsBytes))
	if err != nil {
		return proxyStats{}, fmt.Errorf("reading the proxy's answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return proxyStats{}, fmt.Errorf("the proxy answered HTTP %d: %.200s", resp.StatusCode, body)
	}
	var st proxyStats
	if err := json.Unmarshal(body, &st); err != nil {
		return proxyStats{}, fmt.Errorf("decoding the proxy's answer: %w", err)
	}
	return st, nil
}
