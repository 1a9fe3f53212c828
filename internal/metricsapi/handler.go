package metricsapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/go-logr/logr"
	metricsv1alpha2 "github.com/servicemeshinterface/smi-sdk-go/pkg/apis/metrics/v1alpha2"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/braidmesh/braid/internal/smi"
)

// The API group and version served, and its path.
const (
	Group      = "metrics.smi-spec.io"
	Version    = "v1alpha1"
	APIVersion = Group + "/" + Version
	groupPath  = "/apis/" + Group
	basePath   = groupPath + "/" + Version
)

// Windows: the default (the SDK's) and the longest a proxy keeps.
const (
	DefaultWindow = 30 * time.Second
	MaxWindow     = 5 * time.Minute
)

// Options configure a Handler.
type Options struct {
	// Reader reads pods, workloads, EndpointSlices and TrafficSplits (the manager's cache).
	Reader client.Reader
	// AdminAddr finds a pod's proxy admin server (PodAdminAddr when nil).
	AdminAddr AdminAddrFunc
	// HTTPClient asks the proxies (a plain client without environment proxies when nil).
	HTTPClient *http.Client
	// Authenticator and Authorizer guard every request; nil admits everyone (tests of the
	// answers only).
	Authenticator Authenticator
	Authorizer    Authorizer
	Clock         clock.PassiveClock
	Log           logr.Logger
}

// Handler serves the TrafficMetrics API.
type Handler struct {
	o     Options
	fetch *fetcher
}

// NewHandler returns the API's HTTP handler.
func NewHandler(o Options) *Handler {
	if o.AdminAddr == nil {
		o.AdminAddr = PodAdminAddr
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 2, IdleConnTimeout: 30 * time.Second}}
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	return &Handler{o: o, fetch: &fetcher{log: o.Log, client: o.HTTPClient, addr: o.AdminAddr}}
}

// request is a parsed API request.
type request struct {
	kind      kindInfo
	namespace string
	name      string // "" for list
	edges     bool
	window    time.Duration
	selector  labels.Selector
}

// attributes are what the request does, as kube-apiserver reads its path: edges are the
// subresource "edges" of the kind's resource, so RBAC grants them as <kind>/edges.
func (q request) attributes() Attributes {
	a := Attributes{Verb: q.verb(), Resource: q.kind.resource, Namespace: q.namespace, Name: q.name}
	if q.edges {
		a.Subresource = "edges"
	}
	return a
}

func (q request) verb() string {
	if q.name == "" {
		return "list"
	}
	return "get"
}

// ServeHTTP authenticates, parses, authorizes and answers one request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var user *UserInfo
	if h.o.Authenticator != nil {
		u, err := h.o.Authenticator.Authenticate(r)
		if err != nil {
			h.o.Log.V(1).Info("Metrics API request refused", "reason", err.Error(), "remote", r.RemoteAddr)
			writeStatus(w, apierrors.NewUnauthorized(err.Error()))
			return
		}
		user = u
	}
	if r.Method != http.MethodGet {
		writeStatus(w, apierrors.NewMethodNotSupported(schema.GroupResource{Group: Group, Resource: "trafficmetrics"}, r.Method))
		return
	}
	switch strings.TrimSuffix(r.URL.Path, "/") {
	case groupPath:
		writeJSON(w, apiGroup())
		return
	case basePath:
		writeJSON(w, apiResources()) // discovery: every authenticated user, as system:discovery grants
		return
	case "/openapi/v2":
		// The aggregator merges every APIService's OpenAPI and logs a failure per retry
		// without one; TrafficMetrics has no schema to publish (no write, no explain).
		writeJSON(w, map[string]any{"swagger": "2.0", "info": map[string]string{"title": Group, "version": Version}, "paths": map[string]any{}})
		return
	case "/openapi/v3":
		writeJSON(w, map[string]any{"paths": map[string]any{}})
		return
	}
	q, serr := parse(r)
	if serr != nil {
		writeStatus(w, serr)
		return
	}
	if h.o.Authorizer != nil {
		if serr := h.authorize(r.Context(), user, q); serr != nil {
			writeStatus(w, serr)
			return
		}
	}
	out, err := h.answer(r.Context(), q)
	if err != nil {
		var se *apierrors.StatusError
		if !errors.As(err, &se) {
			h.o.Log.Error(err, "Metrics API request failed", "path", r.URL.Path)
			se = apierrors.NewInternalError(err)
		}
		writeStatus(w, se)
		return
	}
	writeJSON(w, out)
}

func (h *Handler) authorize(ctx context.Context, user *UserInfo, q request) *apierrors.StatusError {
	gr := schema.GroupResource{Group: Group, Resource: q.kind.resource}
	allowed, reason, err := h.o.Authorizer.Authorize(ctx, user, q.attributes())
	switch {
	case err != nil:
		h.o.Log.Error(err, "Metrics API authorization failed", "user", user.Name)
		return apierrors.NewInternalError(fmt.Errorf("authorizing the request: %w", err))
	case !allowed:
		if reason == "" {
			reason = "RBAC denies it"
		}
		return apierrors.NewForbidden(gr, q.name, fmt.Errorf("user %q may not %s %s in %s: %s", user.Name, q.verb(), gr.String(), orCluster(q.namespace), reason))
	}
	return nil
}

func orCluster(ns string) string {
	if ns == "" {
		return "the cluster"
	}
	return "namespace " + ns
}

// parse reads the path (…/namespaces/{ns}/{kind}[/{name}[/edges]], or …/namespaces[/{name}[/edges]])
// and the window and labelSelector parameters.
func parse(r *http.Request) (request, *apierrors.StatusError) {
	q, ok := parsePath(strings.TrimSuffix(r.URL.Path, "/"))
	if !ok {
		return request{}, apierrors.NewNotFound(schema.GroupResource{Group: Group, Resource: "trafficmetrics"}, r.URL.Path)
	}
	if q.name == "" && (!q.kind.list || q.edges) {
		return request{}, apierrors.NewMethodNotSupported(schema.GroupResource{Group: Group, Resource: q.kind.resource}, "list")
	}
	var serr *apierrors.StatusError
	if q.window, serr = parseWindow(r.URL.Query().Get("window")); serr != nil {
		return request{}, serr
	}
	sel, err := labels.Parse(r.URL.Query().Get("labelSelector"))
	if err != nil {
		return request{}, apierrors.NewBadRequest(fmt.Sprintf("labelSelector: %v", err))
	}
	q.selector = sel
	return q, nil
}

// parsePath reads the kind, namespace, name and edges of a path; false: no such resource.
func parsePath(path string) (request, bool) {
	rest, ok := strings.CutPrefix(path, basePath+"/")
	if !ok {
		return request{}, false
	}
	seg := strings.Split(rest, "/")
	if seg[0] != "namespaces" || len(seg) > 5 {
		return request{}, false
	}
	var q request
	if len(seg) <= 2 || (len(seg) == 3 && seg[2] == "edges") { // the namespaces themselves
		q.kind, _ = kindByResource("namespaces")
		if len(seg) >= 2 {
			q.name = seg[1]
		}
		q.edges = len(seg) == 3
		return q, true
	}
	k, ok := kindByResource(seg[2])
	if !ok || !k.namespaced || (len(seg) == 5 && seg[4] != "edges") {
		return request{}, false
	}
	q.kind, q.namespace = k, seg[1]
	if len(seg) >= 4 {
		q.name = seg[3]
	}
	q.edges = len(seg) == 5
	return q, true
}

func parseWindow(raw string) (time.Duration, *apierrors.StatusError) {
	if raw == "" {
		return DefaultWindow, nil
	}
	d, err := time.ParseDuration(raw)
	if err != nil || d <= 0 || d > MaxWindow {
		return 0, apierrors.NewBadRequest(fmt.Sprintf("window %q: want a duration above 0 and up to %s, e.g. 30s or 1m", raw, MaxWindow))
	}
	return d, nil
}

// answer resolves and computes the object the request asks for.
func (h *Handler) answer(ctx context.Context, q request) (any, error) {
	if q.name == "" {
		return h.list(ctx, q)
	}
	obj, _ := q.kind.newObject()
	if err := h.o.Reader.Get(ctx, client.ObjectKey{Namespace: q.namespace, Name: q.name}, obj); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, apierrors.NewNotFound(schema.GroupResource{Group: Group, Resource: q.kind.resource}, q.name)
		}
		return nil, fmt.Errorf("reading %s %s/%s: %w", q.kind.kind, q.namespace, q.name, err)
	}
	c, err := readCluster(ctx, h.o.Reader)
	if err != nil {
		return nil, err
	}
	if split, ok := obj.(*smi.TrafficSplit); ok {
		return h.splitMetrics(ctx, c, q, split)
	}
	stats := h.fetch.fetchAll(ctx, c.podsOf(q.kind, q.namespace, q.name), q.window)
	ref := q.kind.ref(q.namespace, q.name)
	if q.edges {
		list := h.newList(ref)
		list.Items = h.edgeItems(c, q, ref, nil, stats)
		return list, nil
	}
	return h.item(q, ref, nil, nil, inboundTotals(stats)), nil
}

// list answers the TrafficMetrics of every object of a kind in a namespace.
func (h *Handler) list(ctx context.Context, q request) (any, error) {
	_, objs := q.kind.newObject()
	opts := []client.ListOption{client.MatchingLabelsSelector{Selector: q.selector}}
	if q.kind.namespaced {
		opts = append(opts, client.InNamespace(q.namespace))
	}
	if err := h.o.Reader.List(ctx, objs, opts...); err != nil {
		return nil, fmt.Errorf("listing %s: %w", q.kind.resource, err)
	}
	items, err := meta.ExtractList(objs)
	if err != nil {
		return nil, fmt.Errorf("reading the list of %s: %w", q.kind.resource, err)
	}
	c, err := readCluster(ctx, h.o.Reader)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(items))
	var pods []*corev1.Pod
	for _, it := range items {
		o, err := meta.Accessor(it)
		if err != nil {
			return nil, fmt.Errorf("reading a %s: %w", q.kind.kind, err)
		}
		names = append(names, o.GetName())
		pods = append(pods, c.podsOf(q.kind, q.namespace, o.GetName())...)
	}
	sort.Strings(names)
	stats := h.fetch.fetchAll(ctx, pods, q.window)
	list := h.newList(&corev1.ObjectReference{Kind: q.kind.kind, APIVersion: q.kind.apiVersion, Namespace: q.namespace})
	for _, name := range names {
		var mine []podStats
		for _, s := range stats {
			if c.ownerName(s.pod, q.kind) == name {
				mine = append(mine, s)
			}
		}
		list.Items = append(list.Items, h.item(q, q.kind.ref(q.namespace, name), nil, nil, inboundTotals(mine)))
	}
	return list, nil
}

// splitMetrics answers a TrafficSplit: one item per backend, with its apex, name and
// weight, counting what the backend Service's pods served (or, for edges, one item per
// backend and peer).
func (h *Handler) splitMetrics(ctx context.Context, c *cluster, q request, split *smi.TrafficSplit) (any, error) {
	list := h.newList(q.kind.ref(q.namespace, q.name))
	weights := splitWeights(split)
	for i, b := range split.Spec.Backends {
		pods, err := c.servicePods(ctx, h.o.Reader, q.namespace, b.Service)
		if err != nil {
			return nil, err
		}
		stats := h.fetch.fetchAll(ctx, pods, q.window)
		svc := &corev1.ObjectReference{Kind: "Service", APIVersion: "v1", Namespace: q.namespace, Name: b.Service}
		backend := &metricsv1alpha2.Backend{Apex: split.Spec.Service, Name: b.Service, Weight: weights[i]}
		if q.edges {
			list.Items = append(list.Items, h.edgeItems(c, q, svc, backend, stats)...)
			continue
		}
		list.Items = append(list.Items, h.item(q, svc, nil, backend, inboundTotals(stats)))
	}
	return list, nil
}

// splitWeights returns the backends' weights as integers: v1alpha1 weights are
// quantities ("500m"), so when any has a fraction all are given in thousandths, which
// keeps their ratios.
func splitWeights(split *smi.TrafficSplit) []int {
	milli := false
	for _, b := range split.Spec.Backends {
		if b.Weight != nil && b.Weight.MilliValue()%1000 != 0 {
			milli = true
		}
	}
	out := make([]int, len(split.Spec.Backends))
	for i, b := range split.Spec.Backends {
		switch {
		case b.Weight == nil:
		case milli:
			out[i] = int(b.Weight.MilliValue())
		default:
			out[i] = int(b.Weight.Value())
		}
	}
	return out
}

// inboundTotals merges what the pods' proxies served.
func inboundTotals(stats []podStats) *totals {
	t := newTotals()
	for _, s := range stats {
		for _, e := range s.stats.Edges {
			if e.Direction == directionInbound {
				t.add(e, s.stats.LatencyBoundsMs)
			}
		}
	}
	return t
}

// edgeKey is one edge of the answer: a direction and a peer resource.
type edgeKey struct {
	direction string
	peer      corev1.ObjectReference
}

// edgeItems merges the pods' proxy edges by direction and peer resource, one item each.
func (h *Handler) edgeItems(c *cluster, q request, ref *corev1.ObjectReference, backend *metricsv1alpha2.Backend, stats []podStats) []*metricsv1alpha2.TrafficMetrics {
	merged := map[edgeKey]*totals{}
	for _, s := range stats {
		for _, e := range s.stats.Edges {
			peer := c.peerRef(e, q.kind)
			if peer == nil || (e.Direction != directionInbound && e.Direction != directionOutbound) {
				continue
			}
			k := edgeKey{direction: e.Direction, peer: *peer}
			if merged[k] == nil {
				merged[k] = newTotals()
			}
			merged[k].add(e, s.stats.LatencyBoundsMs)
		}
	}
	keys := make([]edgeKey, 0, len(merged))
	for k := range merged {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.direction != b.direction {
			return a.direction < b.direction
		}
		return a.peer.Kind+"/"+a.peer.Namespace+"/"+a.peer.Name < b.peer.Kind+"/"+b.peer.Namespace+"/"+b.peer.Name
	})
	items := make([]*metricsv1alpha2.TrafficMetrics, 0, len(keys))
	for _, k := range keys {
		edge := &metricsv1alpha2.Edge{Direction: metricsv1alpha2.From, Side: metricsv1alpha2.Server, Resource: &k.peer}
		if k.direction == directionOutbound {
			edge.Direction, edge.Side = metricsv1alpha2.To, metricsv1alpha2.Client
		}
		items = append(items, h.item(q, ref, edge, backend, merged[k]))
	}
	return items
}

func (h *Handler) newList(ref *corev1.ObjectReference) *metricsv1alpha2.TrafficMetricsList {
	return &metricsv1alpha2.TrafficMetricsList{
		TypeMeta: metav1.TypeMeta{Kind: "TrafficMetricsList", APIVersion: APIVersion},
		Resource: ref,
		Items:    []*metricsv1alpha2.TrafficMetrics{},
	}
}

func (h *Handler) item(q request, ref *corev1.ObjectReference, edge *metricsv1alpha2.Edge, backend *metricsv1alpha2.Backend, t *totals) *metricsv1alpha2.TrafficMetrics {
	now := metav1.NewTime(h.o.Clock.Now())
	return &metricsv1alpha2.TrafficMetrics{
		TypeMeta:   metav1.TypeMeta{Kind: "TrafficMetrics", APIVersion: APIVersion},
		ObjectMeta: metav1.ObjectMeta{Name: ref.Name, Namespace: ref.Namespace, CreationTimestamp: now},
		Interval:   &metricsv1alpha2.Interval{Timestamp: now, Window: metav1.Duration{Duration: q.window}},
		Resource:   ref,
		Edge:       edge,
		Backend:    backend,
		Metrics:    metricsOf(t),
	}
}

// The metric names of TrafficMetrics.
const (
	MetricP99     = "p99_response_latency"
	MetricP90     = "p90_response_latency"
	MetricP50     = "p50_response_latency"
	MetricSuccess = "success_count"
	MetricFailure = "failure_count"
)

// metricsOf returns the five SMI metrics: latencies in milliseconds as the SDK gives
// them (unit "ms", a milli-quantity: "1500m" is 1.5 ms), counts as plain quantities.
func metricsOf(t *totals) []*metricsv1alpha2.Metric {
	latency := func(name string, q float64) *metricsv1alpha2.Metric {
		m := &metricsv1alpha2.Metric{Name: name, Unit: metricsv1alpha2.MilliSeconds}
		m.Set(t.percentile(q))
		return m
	}
	count := func(name string, n uint64) *metricsv1alpha2.Metric {
		m := &metricsv1alpha2.Metric{Name: name}
		m.Value = resourceQuantity(n)
		return m
	}
	return []*metricsv1alpha2.Metric{
		latency(MetricP99, 0.99), latency(MetricP90, 0.90), latency(MetricP50, 0.50),
		count(MetricSuccess, t.success), count(MetricFailure, t.failure),
	}
}

func apiGroup() *metav1.APIGroup {
	gv := metav1.GroupVersionForDiscovery{GroupVersion: APIVersion, Version: Version}
	return &metav1.APIGroup{
		TypeMeta: metav1.TypeMeta{Kind: "APIGroup", APIVersion: "v1"},
		Name:     Group, Versions: []metav1.GroupVersionForDiscovery{gv}, PreferredVersion: gv,
	}
}

func apiResources() *metav1.APIResourceList {
	list := &metav1.APIResourceList{TypeMeta: metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"}, GroupVersion: APIVersion}
	for _, k := range kinds {
		verbs := metav1.Verbs{"get"}
		if k.list {
			verbs = append(verbs, "list")
		}
		list.APIResources = append(list.APIResources, metav1.APIResource{Name: k.resource, Namespaced: k.namespaced, Kind: "TrafficMetrics", Verbs: verbs})
	}
	return list
}

func writeJSON(w http.ResponseWriter, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		writeStatus(w, apierrors.NewInternalError(fmt.Errorf("encoding the answer: %w", err)))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
}

// writeStatus writes a Kubernetes Status, as kubectl expects of an API server.
func writeStatus(w http.ResponseWriter, se *apierrors.StatusError) {
	st := se.ErrStatus
	st.TypeMeta = metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}
	body, _ := json.Marshal(st)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(int(st.Code))
	_, _ = w.Write(body)
}
