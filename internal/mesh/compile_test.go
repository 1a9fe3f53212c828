package mesh

import (
	"cmp"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"

	"github.com/braidmesh/braid/internal/golden"
	"github.com/braidmesh/braid/proxy/api"
)

var update = flag.Bool("update", false, "rewrite golden files")

const compileTestdata = "testdata/compile"

// TestCompileService compiles the Service each testdata/compile/<case>.input.yaml names and
// compares the result with <case>.golden.json. Run with -update to rewrite the golden
// files, then read them: a golden file states what the compiler must produce.
//
// An input file is multi-document YAML:
//
//   - one document `compile: <namespace>/<name>` naming the Service to compile;
//   - corev1.Service and discoveryv1.EndpointSlice objects, the slices tied to their
//     Service by the kubernetes.io/service-name label as in a cluster;
//   - TrafficSplits in a short form (see splitDoc): kind, name, namespace, created
//     (RFC3339), root, and backends with either milliWeight (an integer) or weight (a
//     v1alpha1 quantity such as "500m");
//   - HTTPRouteGroups in the form of RouteGroup;
//   - HTTPRoutes (Gateway API) in a short form (see routeDoc): kind, name, namespace,
//     created, parents (Service parentRefs: name, and optional namespace, sectionName,
//     port) and rules (matches, backends, unsupported), with the API server's defaults
//     applied by the decoder (backend kind Service, namespace the route's, weight 1).
//
// The input is assembled as the Service reconciler does: the splits rooted at the Service,
// the HTTPRoutes in its namespace with a parent naming it, and Backends holding every
// Service those splits and routes name (the root included when one names it), absent ones
// mapping to the zero Endpoints.
func TestCompileService(t *testing.T) {
	cases := []struct {
		name  string
		check func(t *testing.T, out *api.Service)
	}{
		{name: "no-split"},
		{name: "protocols-and-cluster-ips"},
		{name: "meshed-endpoints"},
		{name: "httproute-request-mirror"},
		{name: "httproute-header-modifiers"},
		{name: "named-target-port"},
		{name: "dual-stack"},
		{name: "split-80-20"},
		{name: "split-v1alpha1-quantities"},
		{name: "split-zero-weight"},
		{name: "split-missing-backend"},
		{name: "split-backend-lacks-port"},
		{name: "udp-port-skipped"},
		{name: "external-name", check: wantNil},
		{name: "two-splits-older-wins", check: wantSplit("shop/reviews-stable")},
		{name: "two-splits-same-age-name-wins", check: wantSplit("shop/reviews-a")},
		{name: "huge-weights", check: wantWeights(map[string]uint32{"reviews-v1": maxWireWeight, "reviews-v2": 1, "reviews-v3": 0})},
		{name: "flagger-apex", check: wantSplit("shop/podinfo")},
		{name: "argo-apex-is-backend", check: wantSplit("shop/reviews")},
		{name: "split-ab-matches", check: wantSplit("shop/reviews")},
		{name: "split-ab-missing-group", check: wantSplit("shop/reviews")},
		{name: "split-ab-invalid-match", check: wantSplit("shop/reviews")},
		{name: "httproute-weighted-70-30", check: wantWeights(map[string]uint32{"reviews-v1": 7, "reviews-v2": 3})},
		{name: "httproute-path-and-header-matches", check: wantNoCatchAll},
		{name: "httproute-section-name"},
		{name: "httproute-beats-split"},
		{name: "httproute-missing-backend"},
		{name: "httproute-timeouts-and-retry"},
	}
	listed := map[string]bool{}
	for _, tc := range cases {
		listed[tc.name] = true
		t.Run(tc.name, func(t *testing.T) {
			in := loadFixture(t, filepath.Join(compileTestdata, tc.name+".input.yaml")).input(t)
			out := CompileService(in)
			checkWireWeights(t, out)
			if tc.check != nil {
				tc.check(t, out)
			}
			compareGolden(t, filepath.Join(compileTestdata, tc.name+".golden.json"), goldenJSON(t, out))
		})
	}
	inputs, err := filepath.Glob(filepath.Join(compileTestdata, "*.input.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range inputs {
		if name := strings.TrimSuffix(filepath.Base(path), ".input.yaml"); !listed[name] {
			t.Errorf("%s is not in the TestCompileService table", path)
		}
	}
}

func wantNil(t *testing.T, out *api.Service) {
	t.Helper()
	if out != nil {
		t.Errorf("CompileService = %v, want nil", out)
	}
}

// wantNoCatchAll asserts that every route of every port has matches that restrict it: with
// HTTPRoutes attached, requests that no rule matches are refused, not sent to the Service.
func wantNoCatchAll(t *testing.T, out *api.Service) {
	t.Helper()
	for _, p := range out.GetPorts() {
		for i, r := range p.GetRoutes() {
			for _, m := range r.GetMatches() {
				if m.GetPathRegex() == "" && len(m.GetMethods()) == 0 && len(m.GetHeaders()) == 0 {
					t.Errorf("port %d route %d: match %s admits every request", p.Port, i, m.GetName())
				}
			}
			if len(r.GetMatches()) == 0 {
				t.Errorf("port %d route %d has no matches: it admits every request", p.Port, i)
			}
		}
	}
}

// wantSplit asserts that every port was compiled from the named split.
func wantSplit(key string) func(*testing.T, *api.Service) {
	return func(t *testing.T, out *api.Service) {
		t.Helper()
		if out == nil || len(out.Ports) == 0 {
			t.Fatalf("CompileService = %v, want ports compiled from split %s", out, key)
		}
		for _, p := range out.Ports {
			if p.Split != key {
				t.Errorf("port %d: split = %q, want %q", p.Port, p.Split, key)
			}
		}
	}
}

// wantWeights asserts the wire weight of each backend on every port.
func wantWeights(want map[string]uint32) func(*testing.T, *api.Service) {
	return func(t *testing.T, out *api.Service) {
		t.Helper()
		for _, p := range out.GetPorts() {
			for _, b := range allBackends(p) {
				if w, ok := want[b.Service]; !ok || b.Weight != w {
					t.Errorf("port %d: backend %s weight = %d, want %d (listed: %t)", p.Port, b.Service, b.Weight, w, ok)
				}
			}
		}
	}
}

// checkWireWeights checks what holds for every case in the table: no wire weight exceeds
// maxWireWeight, and a port's backends have at least one positive weight (true of these
// inputs, not of every input: a split whose only positive backend lacks a port leaves
// that port with weight-0 backends).
func checkWireWeights(t *testing.T, out *api.Service) {
	t.Helper()
	for _, p := range out.GetPorts() {
		var total uint64
		for _, b := range allBackends(p) {
			if b.Weight > maxWireWeight {
				t.Errorf("port %d: backend %s weight %d exceeds %d", p.Port, b.Service, b.Weight, maxWireWeight)
			}
			total += uint64(b.Weight)
		}
		if len(allBackends(p)) > 0 && total == 0 {
			t.Errorf("port %d: every backend has weight 0", p.Port)
		}
	}
}

// goldenJSON renders a compiled Service deterministically: protojson output is not
// byte-stable, so it is compacted and indented again with encoding/json.
func goldenJSON(t *testing.T, out *api.Service) []byte {
	t.Helper()
	if out == nil {
		return []byte("null\n")
	}
	raw, err := protojson.MarshalOptions{Multiline: true, EmitUnpopulated: true}.Marshal(out)
	if err != nil {
		t.Fatalf("marshaling %v: %v", out, err)
	}
	return normalizeJSON(t, raw)
}

func normalizeJSON(t *testing.T, raw []byte) []byte {
	t.Helper()
	return golden.JSON(t, raw)
}

func compareGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	golden.Compare(t, path, got, *update, "CompileService output", "./internal/mesh/")
}

// fixture is the content of one input file.
type fixture struct {
	namespace, root string
	services        map[string]*corev1.Service // by namespace/name
	slices          []*discoveryv1.EndpointSlice
	splits          []Split
	groups          map[string]*RouteGroup // by name
	routes          []HTTPRoute
	workloads       map[string]Workload // by pod IP
	trustDomain     string
}

// workloadsDoc lists the pods behind endpoints, by IP: which are meshed, under which
// ServiceAccount, and the trust domain of their identities.
type workloadsDoc struct {
	Kind        string              `json:"kind"`
	TrustDomain string              `json:"trustDomain"`
	Pods        map[string]Workload `json:"pods"`
}

// splitDoc is the short form of a TrafficSplit in input files.
type splitDoc struct {
	Kind      string    `json:"kind"`
	Name      string    `json:"name"`
	Namespace string    `json:"namespace"`
	Created   time.Time `json:"created"`
	Root      string    `json:"root"`
	Matches   []string  `json:"matches,omitempty"`
	Backends  []struct {
		Service     string             `json:"service"`
		MilliWeight *int64             `json:"milliWeight,omitempty"`
		Weight      *resource.Quantity `json:"weight,omitempty"`
	} `json:"backends"`
}

func (d splitDoc) split() (Split, error) {
	s := Split{Namespace: d.Namespace, Name: d.Name, Created: d.Created, Root: d.Root, Matches: d.Matches}
	for i, b := range d.Backends {
		var milli int64
		switch {
		case b.MilliWeight != nil && b.Weight == nil:
			milli = *b.MilliWeight
		case b.Weight != nil && b.MilliWeight == nil:
			milli = b.Weight.MilliValue()
		default:
			return Split{}, fmt.Errorf("split %s: backends[%d] needs exactly one of milliWeight and weight", d.Name, i)
		}
		s.Backends = append(s.Backends, SplitBackend{Service: b.Service, MilliWeight: milli})
	}
	return s, nil
}

var documentSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

func loadFixture(t *testing.T, path string) *fixture {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{services: map[string]*corev1.Service{}, groups: map[string]*RouteGroup{}}
	for i, doc := range documentSeparator.Split(string(raw), -1) {
		if err := f.add([]byte(doc)); err != nil {
			t.Fatalf("%s: document %d: %v", path, i, err)
		}
	}
	if f.root == "" {
		t.Fatalf("%s: no `compile: <namespace>/<name>` document", path)
	}
	return f
}

func (f *fixture) add(doc []byte) error {
	var head struct {
		Kind    string `json:"kind"`
		Compile string `json:"compile"`
	}
	if err := yaml.Unmarshal(doc, &head); err != nil {
		return err
	}
	switch {
	case head.Compile != "":
		ns, name, ok := strings.Cut(head.Compile, "/")
		if !ok || f.root != "" {
			return fmt.Errorf("want one compile: <namespace>/<name>, got %q", head.Compile)
		}
		f.namespace, f.root = ns, name
	case head.Kind == "Service":
		svc := &corev1.Service{}
		if err := yaml.UnmarshalStrict(doc, svc); err != nil {
			return err
		}
		f.services[svc.Namespace+"/"+svc.Name] = svc
	case head.Kind == "EndpointSlice":
		slice := &discoveryv1.EndpointSlice{}
		if err := yaml.UnmarshalStrict(doc, slice); err != nil {
			return err
		}
		f.slices = append(f.slices, slice)
	case head.Kind == "TrafficSplit":
		return f.addSplit(doc)
	case head.Kind == "HTTPRouteGroup":
		return f.addGroup(doc)
	case head.Kind == "HTTPRoute":
		return f.addRoute(doc)
	case head.Kind == "Workloads":
		return f.addWorkloads(doc)
	case head.Kind == "" && isBlank(doc):
		// Comments only, such as the description at the top of a file.
	default:
		return fmt.Errorf("unknown document kind %q", head.Kind)
	}
	return nil
}

func (f *fixture) addSplit(doc []byte) error {
	var d splitDoc
	if err := yaml.UnmarshalStrict(doc, &d); err != nil {
		return err
	}
	s, err := d.split()
	if err != nil {
		return err
	}
	f.splits = append(f.splits, s)
	return nil
}

func (f *fixture) addGroup(doc []byte) error {
	var g struct {
		Kind string `json:"kind"`
		RouteGroup
	}
	if err := yaml.UnmarshalStrict(doc, &g); err != nil {
		return err
	}
	f.groups[g.Name] = &g.RouteGroup
	return nil
}

// routeDoc is the short form of an HTTPRoute in input files.
type routeDoc struct {
	Kind      string    `json:"kind"`
	Name      string    `json:"name"`
	Namespace string    `json:"namespace"`
	Created   time.Time `json:"created"`
	Parents   []struct {
		Namespace   string `json:"namespace,omitempty"`
		Name        string `json:"name"`
		SectionName string `json:"sectionName,omitempty"`
		Port        int32  `json:"port,omitempty"`
	} `json:"parents"`
	Rules []struct {
		Name    string `json:"name,omitempty"`
		Matches []struct {
			Path *struct {
				Type  string `json:"type"`
				Value string `json:"value"`
			} `json:"path,omitempty"`
			Method      string            `json:"method,omitempty"`
			Headers     []HTTPHeaderMatch `json:"headers,omitempty"`
			QueryParams int               `json:"queryParams,omitempty"`
		} `json:"matches,omitempty"`
		Backends []struct {
			Group     string `json:"group,omitempty"`
			Kind      string `json:"kind,omitempty"`
			Namespace string `json:"namespace,omitempty"`
			Name      string `json:"name"`
			Port      int32  `json:"port,omitempty"`
			Weight    *int32 `json:"weight,omitempty"`
			// RequestHeaders and ResponseHeaders are the backendRef's header filters.
			RequestHeaders  *HeaderModifier `json:"requestHeaders,omitempty"`
			ResponseHeaders *HeaderModifier `json:"responseHeaders,omitempty"`
		} `json:"backends,omitempty"`
		// RequestHeaders and ResponseHeaders are the rule's header filters.
		RequestHeaders  *HeaderModifier   `json:"requestHeaders,omitempty"`
		ResponseHeaders *HeaderModifier   `json:"responseHeaders,omitempty"`
		Timeouts        HTTPRouteTimeouts `json:"timeouts,omitzero"`
		Retry           *HTTPRouteRetry   `json:"retry,omitempty"`
		Unsupported     []string          `json:"unsupported,omitempty"`
		// Mirrors are RequestMirror filters: a Service name and port, and a percent.
		Mirrors []struct {
			Name    string `json:"name"`
			Port    int32  `json:"port"`
			Percent int32  `json:"percent,omitempty"`
		} `json:"mirrors,omitempty"`
	} `json:"rules"`
}

func (d routeDoc) route() HTTPRoute {
	r := HTTPRoute{Namespace: d.Namespace, Name: d.Name, Created: d.Created}
	for _, p := range d.Parents {
		r.Parents = append(r.Parents, ServiceParent{Namespace: cmp.Or(p.Namespace, d.Namespace), Name: p.Name, SectionName: p.SectionName, Port: p.Port})
	}
	for _, dr := range d.Rules {
		rule := HTTPRouteRule{Name: dr.Name, Timeouts: dr.Timeouts, Retry: dr.Retry, Unsupported: dr.Unsupported,
			RequestHeaders: dr.RequestHeaders, ResponseHeaders: dr.ResponseHeaders}
		for _, m := range dr.Matches {
			rm := HTTPRouteMatch{Method: m.Method, Headers: m.Headers, QueryParams: m.QueryParams}
			if m.Path != nil {
				rm.PathType, rm.PathValue = m.Path.Type, m.Path.Value
			}
			rule.Matches = append(rule.Matches, rm)
		}
		for _, b := range dr.Backends {
			weight := int32(1)
			if b.Weight != nil {
				weight = *b.Weight
			}
			rule.Backends = append(rule.Backends, HTTPBackendRef{Group: b.Group, Kind: cmp.Or(b.Kind, "Service"),
				Namespace: cmp.Or(b.Namespace, d.Namespace), Name: b.Name, Port: b.Port, Weight: weight,
				RequestHeaders: b.RequestHeaders, ResponseHeaders: b.ResponseHeaders})
		}
		for _, m := range dr.Mirrors {
			rule.Mirrors = append(rule.Mirrors, HTTPRouteMirror{Percent: m.Percent,
				Backend: HTTPBackendRef{Kind: "Service", Namespace: d.Namespace, Name: m.Name, Port: m.Port, Weight: 1}})
		}
		r.Rules = append(r.Rules, rule)
	}
	return r
}

func (f *fixture) addRoute(doc []byte) error {
	var d routeDoc
	if err := yaml.UnmarshalStrict(doc, &d); err != nil {
		return err
	}
	f.routes = append(f.routes, d.route())
	return nil
}

func isBlank(doc []byte) bool {
	for line := range strings.Lines(string(doc)) {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
			return false
		}
	}
	return true
}

// endpoints returns a Service with its slices, or the zero Endpoints when the Service is
// not in the fixture.
func (f *fixture) endpoints(name string) Endpoints {
	svc := f.services[f.namespace+"/"+name]
	if svc == nil {
		return Endpoints{}
	}
	ep := Endpoints{Service: svc}
	for _, s := range f.slices {
		if s.Namespace == f.namespace && s.Labels[discoveryv1.LabelServiceName] == name {
			ep.Slices = append(ep.Slices, s)
		}
	}
	return ep
}

// input assembles the ServiceInput of the root as the Service reconciler does. Every split
// rooted there must be accepted: the reconciler only hands accepted splits to the compiler.
func (f *fixture) input(t *testing.T) ServiceInput {
	t.Helper()
	in := ServiceInput{Endpoints: f.endpoints(f.root), Backends: map[string]Endpoints{}, Workloads: f.workloads, TrustDomain: f.trustDomain}
	if in.Service == nil {
		t.Fatalf("the Service to compile, %s/%s, is not in the input", f.namespace, f.root)
	}
	f.addRoutes(&in)
	var rooted []Split
	for _, s := range f.splits {
		if s.Namespace == f.namespace && s.Root == f.root {
			rooted = append(rooted, s)
		}
	}
	// As the reconciler does: the governing split of the root, if accepted.
	s, ok := Winner(rooted)
	if !ok {
		return in
	}
	if v := CheckSplit(s, true); !v.Accepted {
		t.Fatalf("split %s is not accepted (%s: %s); the compiler only sees accepted splits", s.Key(), v.Reason, v.Message)
	}
	in.Split = &s
	for _, b := range s.Backends {
		in.Backends[b.Service] = f.endpoints(b.Service)
	}
	in.RouteGroups = map[string]*RouteGroup{}
	for _, name := range s.Matches {
		if g, ok := f.groups[name]; ok {
			in.RouteGroups[name] = g
		}
	}
	return in
}

// addRoutes adds, as the reconciler does, the HTTPRoutes of the root's namespace that
// name it as parent, and the Services their backendRefs name.
func (f *fixture) addRoutes(in *ServiceInput) {
	for _, r := range f.routes {
		if r.Namespace != f.namespace || !slices.ContainsFunc(r.Parents, func(p ServiceParent) bool { return p.Namespace == f.namespace && p.Name == f.root }) {
			continue
		}
		in.HTTPRoutes = append(in.HTTPRoutes, r)
		for _, name := range r.BackendServices() {
			in.Backends[name] = f.endpoints(name)
		}
	}
}

// allBackends lists the backends of every route of a port.
func allBackends(p *api.ServicePort) []*api.Backend {
	var out []*api.Backend
	for _, r := range p.GetRoutes() {
		out = append(out, r.GetBackends()...)
	}
	return out
}

func (f *fixture) addWorkloads(doc []byte) error {
	var d workloadsDoc
	if err := yaml.UnmarshalStrict(doc, &d); err != nil {
		return err
	}
	f.workloads, f.trustDomain = d.Pods, d.TrustDomain
	return nil
}
