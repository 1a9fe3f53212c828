package mesh

import (
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
	"google.golang.org/protobuf/types/known/durationpb"
	corev1 "k8s.io/api/core/v1"

	"github.com/braidmesh/braid/proxy/api"
)

// HTTPRoute is a Gateway API HTTPRoute (gateway.networking.k8s.io/v1) reduced to what the
// mesh compiles (GAMMA). Fields keep the API's meaning; defaults that the API server
// applies (backend kind Service, weight 1, a rule without matches taking every path) are
// expected to be filled in by whoever converts the object.
type HTTPRoute struct {
	Namespace  string
	Name       string
	Generation int64
	Created    time.Time
	// Parents are the route's parentRefs that name a Service (group "", kind Service), in
	// spec order, with their namespace resolved. Other parents (Gateways) are not the
	// mesh's business and are left out.
	Parents []ServiceParent
	Rules   []HTTPRouteRule
}

// Key is the route's namespace/name.
func (r HTTPRoute) Key() string { return r.Namespace + "/" + r.Name }

// ServiceParent is a parentRef naming a Service.
type ServiceParent struct {
	Namespace string
	Name      string
	// SectionName is the Service port's name; empty for every port.
	SectionName string
	// Port is the Service port's number; 0 for every port.
	Port int32
}

// HTTPRouteRule is one rule: the requests its matches admit go to its backends by weight.
type HTTPRouteRule struct {
	Name string
	// Matches are alternatives; none means every request (Gateway API: PathPrefix "/").
	Matches  []HTTPRouteMatch
	Backends []HTTPBackendRef
	// Timeouts are the rule's timeouts (Gateway API's HTTPRouteTimeouts).
	Timeouts HTTPRouteTimeouts
	// Retry is the rule's retry policy (Gateway API's HTTPRouteRetry); nil when unset,
	// and proxies then retry connection failures once.
	Retry *HTTPRouteRetry
	// Mirrors are the rule's RequestMirror filters: backends that get copies of its
	// requests.
	Mirrors []HTTPRouteMirror
	// RequestHeaders and ResponseHeaders are the rule's RequestHeaderModifier and
	// ResponseHeaderModifier filters; nil when unset.
	RequestHeaders, ResponseHeaders *HeaderModifier
	// Unsupported names what the rule asks for that proxies cannot do yet (filters,
	// session persistence): the rule is programmed without it, and the route's Accepted
	// condition says so.
	Unsupported []string
}

// HeaderModifier is a RequestHeaderModifier or ResponseHeaderModifier filter: Set replaces
// a header's values, Add appends one, Remove deletes headers.
type HeaderModifier struct {
	Set, Add []HTTPHeader
	Remove   []string
}

// HTTPHeader is a header name and value.
type HTTPHeader struct {
	Name, Value string
}

// toWire is the modifier as proxies run it; nil for none.
func (m *HeaderModifier) toWire() *api.HeaderModifier {
	if m == nil || len(m.Set) == 0 && len(m.Add) == 0 && len(m.Remove) == 0 {
		return nil
	}
	out := &api.HeaderModifier{Remove: slices.Clone(m.Remove)}
	for _, h := range m.Set {
		out.Set = append(out.Set, &api.HeaderValue{Name: h.Name, Value: h.Value})
	}
	for _, h := range m.Add {
		out.Add = append(out.Add, &api.HeaderValue{Name: h.Name, Value: h.Value})
	}
	return out
}

// HTTPRouteMirror is a RequestMirror filter: copies of Percent% of the rule's requests go
// to Backend (its Weight is ignored).
type HTTPRouteMirror struct {
	Backend HTTPBackendRef
	// Percent is 1 to 100; 0 means 100.
	Percent int32
}

// HTTPRouteTimeouts are a rule's timeouts, in Gateway API's duration format ("10s",
// "500ms", "1h30m"); empty when unset, and "0s" disables one.
type HTTPRouteTimeouts struct {
	// Request bounds the whole request, from its arrival at the client's proxy to the
	// end of its response, retries included.
	Request string
	// BackendRequest bounds each attempt at an endpoint.
	BackendRequest string
}

// HTTPRouteRetry is a rule's retry policy.
type HTTPRouteRetry struct {
	// Codes are the response statuses retried; connection failures always are.
	Codes []int
	// Attempts is the most times a request is retried; nil for the proxies' default (1).
	Attempts *int
	// Backoff is the base of the wait before each retry, in Gateway API's duration
	// format: proxies wait a random time up to Backoff × 2^(n-1) (at most 10 × Backoff)
	// before the n-th retry, never past the rule's request timeout. Empty or "0s": no
	// wait.
	Backoff string
}

// Path match types of Gateway API.
const (
	PathMatchExact             = "Exact"
	PathMatchPathPrefix        = "PathPrefix"
	PathMatchRegularExpression = "RegularExpression"
)

// Header match types of Gateway API.
const (
	HeaderMatchExact             = "Exact"
	HeaderMatchRegularExpression = "RegularExpression"
)

// HTTPRouteMatch admits a request when everything it sets matches.
type HTTPRouteMatch struct {
	// PathType is one of the PathMatch constants; empty with an empty PathValue means
	// PathPrefix "/" (every path).
	PathType  string
	PathValue string
	// Method is an HTTP method; empty for any.
	Method  string
	Headers []HTTPHeaderMatch
	// QueryParams counts the query parameter matches, which proxies cannot evaluate yet:
	// a match with any is not programmed.
	QueryParams int
}

// HTTPHeaderMatch requires a header; Type is one of the HeaderMatch constants.
type HTTPHeaderMatch struct {
	Type  string
	Name  string
	Value string
}

// HTTPBackendRef is a weighted backendRef of a rule.
type HTTPBackendRef struct {
	// Group and Kind name the referent's type: "" and "Service" for a Service.
	Group string
	Kind  string
	// Namespace is the referent's namespace, resolved (the route's when unset).
	Namespace string
	Name      string
	// Port is the Service port number the backend is reached on; 0 when unset.
	Port int32
	// Weight is the relative weight: 0 sends nothing.
	Weight int32
	// RequestHeaders and ResponseHeaders are the backendRef's own header filters,
	// applied after the rule's; nil when unset.
	RequestHeaders, ResponseHeaders *HeaderModifier
}

// IsService reports whether the backendRef names a Service.
func (b HTTPBackendRef) IsService() bool { return b.Group == "" && b.Kind == "Service" }

// BackendServices lists the Services of the route's namespace that its backendRefs name.
func (r HTTPRoute) BackendServices() []string {
	var names []string
	for _, rule := range r.Rules {
		refs := slices.Clone(rule.Backends)
		for _, m := range rule.Mirrors {
			refs = append(refs, m.Backend)
		}
		for _, b := range refs {
			if b.IsService() && b.Namespace == r.Namespace && !slices.Contains(names, b.Name) {
				names = append(names, b.Name)
			}
		}
	}
	return names
}

// ProducerParents lists the Services of the route's namespace that it names as parents:
// those whose configuration it governs.
func (r HTTPRoute) ProducerParents() []string {
	var names []string
	for _, p := range r.Parents {
		if r.IsProducer(p) && !slices.Contains(names, p.Name) {
			names = append(names, p.Name)
		}
	}
	return names
}

// Reasons of an HTTPRoute's parent conditions, from Gateway API.
const (
	ReasonNoMatchingParent = "NoMatchingParent"
	ReasonUnsupportedValue = "UnsupportedValue"
	ReasonInvalidKind      = "InvalidKind"
	ReasonRefNotPermitted  = "RefNotPermitted"
)

// IsProducer reports whether a parent makes the route a producer route: a route in the
// namespace of the Service it attaches to, which applies to every client.
func (r HTTPRoute) IsProducer(p ServiceParent) bool { return p.Namespace == r.Namespace }

// ports lists the TCP ports of svc that parent p attaches to.
func (p ServiceParent) ports(svc *corev1.Service) []corev1.ServicePort {
	var out []corev1.ServicePort
	for _, sp := range svc.Spec.Ports {
		if (sp.Protocol == "" || sp.Protocol == corev1.ProtocolTCP) &&
			(p.SectionName == "" || p.SectionName == sp.Name) && (p.Port == 0 || p.Port == sp.Port) {
			out = append(out, sp)
		}
	}
	return out
}

// attachesTo reports whether the route, as a producer route, governs port sp of svc.
func (r HTTPRoute) attachesTo(svc *corev1.Service, sp corev1.ServicePort) bool {
	if r.Namespace != svc.Namespace {
		return false
	}
	for _, p := range r.Parents {
		if p.Namespace == svc.Namespace && p.Name == svc.Name &&
			slices.ContainsFunc(p.ports(svc), func(q corev1.ServicePort) bool { return q.Port == sp.Port }) {
			return true
		}
	}
	return false
}

// CheckHTTPRouteParent decides whether one Service parent of a route accepts it. svc is
// the Service the parent names, nil when it does not exist. An accepted parent's message
// also names what proxies cannot do yet and leave out.
func CheckHTTPRouteParent(r HTTPRoute, p ServiceParent, svc *corev1.Service) Verdict {
	switch {
	case !r.IsProducer(p):
		return reject(ReasonUnsupportedValue,
			"service %s/%s is in another namespace: consumer routes (a route in the client's namespace) are not supported yet; create the route in namespace %s",
			p.Namespace, p.Name, p.Namespace)
	case svc == nil:
		return reject(ReasonNoMatchingParent, "service %s does not exist in namespace %s", p.Name, p.Namespace)
	case svc.Spec.Type == corev1.ServiceTypeExternalName:
		return reject(ReasonUnsupportedValue, "service %s is of type ExternalName; routes attach to ClusterIP services", p.Name)
	}
	ports := p.ports(svc)
	if len(ports) == 0 {
		return reject(ReasonNoMatchingParent, "service %s has no TCP port%s; its TCP ports are %s",
			p.Name, describeParentPort(p), describePorts(TCPPorts(svc)))
	}
	notes := []string{fmt.Sprintf("attached to service %s on %s", p.Name, describePorts(ports))}
	notes = append(notes, unsupportedNotes(r)...)
	notes = append(notes, policyNotes(r)...)
	return Verdict{Accepted: true, Reason: ReasonAccepted, Message: strings.Join(notes, "; ")}
}

func describeParentPort(p ServiceParent) string {
	var parts []string
	if p.SectionName != "" {
		parts = append(parts, fmt.Sprintf(" named %q", p.SectionName))
	}
	if p.Port != 0 {
		parts = append(parts, fmt.Sprintf(" numbered %d", p.Port))
	}
	return strings.Join(parts, " and")
}

// TCPPorts lists the TCP ports of a Service (a port without a protocol is TCP).
func TCPPorts(svc *corev1.Service) []corev1.ServicePort {
	return ServiceParent{}.ports(svc)
}

func describePorts(ports []corev1.ServicePort) string {
	if len(ports) == 0 {
		return "none"
	}
	out := make([]string, 0, len(ports))
	for _, p := range ports {
		if p.Name == "" {
			out = append(out, fmt.Sprintf("port %d", p.Port))
		} else {
			out = append(out, fmt.Sprintf("port %d (%s)", p.Port, p.Name))
		}
	}
	return strings.Join(out, ", ")
}

func unsupportedNotes(r HTTPRoute) []string {
	var out []string
	for i, rule := range r.Rules {
		if len(rule.Unsupported) > 0 {
			out = append(out, fmt.Sprintf("spec.rules[%d]: %s not supported yet, ignored (the rest of the rule is programmed)",
				i, strings.Join(rule.Unsupported, ", ")))
		}
	}
	return out
}

// DroppedMatches describes each match of the route that proxies cannot run and that is
// therefore not programmed (a rule left without matches is dropped): regular expressions
// RE2 rejects, invalid header names, query parameter matches. Empty when every match runs.
func DroppedMatches(r HTTPRoute) []string {
	var out []string
	for i, rule := range r.Rules {
		for j, m := range rule.Matches {
			if _, err := toWireHTTPMatch(m, ""); err != nil {
				out = append(out, fmt.Sprintf("spec.rules[%d].matches[%d]: %v", i, j, err))
			}
		}
	}
	return out
}

// CheckHTTPRouteRefs resolves a route's backendRefs. services maps each Service name of the
// route's namespace that a backendRef names to the Service, or to nil when it does not
// exist. A backend that does not resolve keeps its weight, and requests drawn for it fail.
func CheckHTTPRouteRefs(r HTTPRoute, services map[string]*corev1.Service) RefsVerdict {
	byReason := map[string][]string{}
	for i, rule := range r.Rules {
		for j, b := range rule.Backends {
			if reason, msg := backendProblem(r.Namespace, b, services[b.Name]); reason != "" {
				byReason[reason] = append(byReason[reason], fmt.Sprintf("spec.rules[%d].backendRefs[%d]: %s", i, j, msg))
			}
		}
		for j, m := range rule.Mirrors {
			if reason, msg := backendProblem(r.Namespace, m.Backend, services[m.Backend.Name]); reason != "" {
				byReason[reason] = append(byReason[reason], fmt.Sprintf("spec.rules[%d] RequestMirror filter %d: %s", i, j, msg))
			}
		}
	}
	v := RefsVerdict{Resolved: true, Reason: ReasonResolvedRefs, Message: "every backendRef names a service port that exists"}
	var notes []string
	for _, reason := range []string{ReasonInvalidKind, ReasonRefNotPermitted, ReasonBackendNotFound} {
		if len(byReason[reason]) == 0 {
			continue
		}
		if v.Resolved {
			v.Resolved, v.Reason = false, reason
		}
		notes = append(notes, byReason[reason]...)
	}
	if !v.Resolved {
		v.Message = strings.Join(notes, "; ") + "; requests drawn for these backends get 503 until they resolve"
	}
	return v
}

// backendProblem says why a backendRef cannot receive traffic (a Gateway API reason and a
// message), or returns an empty reason when it can. svc is the Service of that name in the
// route's namespace, nil when it does not exist.
func backendProblem(namespace string, b HTTPBackendRef, svc *corev1.Service) (reason, message string) {
	switch {
	case !b.IsService():
		return ReasonInvalidKind, fmt.Sprintf("backend %s of kind %s/%s is not a Service (group \"\", kind Service)", b.Name, b.Group, b.Kind)
	case b.Namespace != namespace:
		return ReasonRefNotPermitted, fmt.Sprintf("backend service %s/%s is in another namespace; cross-namespace backends are not supported yet", b.Namespace, b.Name)
	case svc == nil:
		return ReasonBackendNotFound, fmt.Sprintf("backend service %s/%s does not exist", namespace, b.Name)
	case b.Port == 0:
		return ReasonBackendNotFound, fmt.Sprintf("backend service %s/%s has no port set; a Service backendRef must name its port", namespace, b.Name)
	case !hasPort(svc, b.Port):
		return ReasonBackendNotFound, fmt.Sprintf("backend service %s/%s has no TCP port %d", namespace, b.Name, b.Port)
	}
	return "", ""
}

// routedMatch is one match of one rule, placed by Gateway API precedence.
type routedMatch struct {
	route, rule int // indexes in the sorted routes and in the route's rules
	match       HTTPRouteMatch
	wire        *api.HTTPMatch
}

// httpRouteRoutes compiles the rules of the routes that attach to a port into proxy
// routes ordered by Gateway API precedence, taken per match: an Exact path first, then a
// RegularExpression path (longer expression first; Gateway API leaves regexes to the
// implementation), then a PathPrefix (longer first), then a match with a method, then the
// one with more headers. Ties go to the older route, then by namespace/name, then to the
// earlier rule and match. Consecutive matches of the same rule share one proxy route.
// Nothing catches the requests no rule matches: the proxy answers them 404 (Gateway API:
// with routes attached, requests that match none are rejected).
func httpRouteRoutes(routes []HTTPRoute, services map[string]Endpoints) []*api.Route {
	routes = slices.Clone(routes)
	slices.SortFunc(routes, func(a, b HTTPRoute) int {
		return cmp.Or(a.Created.Compare(b.Created), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	var all []routedMatch
	for i, r := range routes {
		for j, rule := range r.Rules {
			matches := rule.Matches
			if len(matches) == 0 {
				matches = []HTTPRouteMatch{{}}
			}
			for k, m := range matches {
				name := fmt.Sprintf("%s/rules[%d]", r.Name, j)
				if len(rule.Matches) > 0 {
					name += fmt.Sprintf(".matches[%d]", k)
				}
				wire, err := toWireHTTPMatch(m, name)
				if err != nil {
					continue // reported by DroppedMatches
				}
				all = append(all, routedMatch{route: i, rule: j, match: m, wire: wire})
			}
		}
	}
	slices.SortStableFunc(all, func(a, b routedMatch) int { return comparePrecedence(a.match, b.match) })
	var out []*api.Route
	for n, m := range all {
		if n > 0 && all[n-1].route == m.route && all[n-1].rule == m.rule {
			out[len(out)-1].Matches = append(out[len(out)-1].Matches, m.wire)
			continue
		}
		r := routes[m.route]
		route := &api.Route{
			Name:     fmt.Sprintf("%s/rules[%d]", r.Key(), m.rule),
			Matches:  []*api.HTTPMatch{m.wire},
			Backends: ruleBackends(r.Namespace, r.Rules[m.rule].Backends, services),
		}
		rulePolicies(r.Rules[m.rule], route)
		route.RequestHeaders, route.ResponseHeaders = r.Rules[m.rule].RequestHeaders.toWire(), r.Rules[m.rule].ResponseHeaders.toWire()
		for _, mirror := range r.Rules[m.rule].Mirrors {
			ref := mirror.Backend
			ref.Weight = 1
			route.Mirrors = append(route.Mirrors, &api.Mirror{
				Backend: ruleBackends(r.Namespace, []HTTPBackendRef{ref}, services)[0], Percent: uint32(min(max(mirror.Percent, 0), 100)),
			})
		}
		out = append(out, route)
	}
	return out
}

// comparePrecedence orders two matches, the one that takes precedence first.
func comparePrecedence(a, b HTTPRouteMatch) int {
	return cmp.Or(
		-cmp.Compare(pathRank(a), pathRank(b)),
		-cmp.Compare(len(pathValue(a)), len(pathValue(b))),
		-cmp.Compare(boolRank(a.Method != ""), boolRank(b.Method != "")),
		-cmp.Compare(len(a.Headers), len(b.Headers)),
	)
}

func pathRank(m HTTPRouteMatch) int {
	switch m.PathType {
	case PathMatchExact:
		return 3
	case PathMatchRegularExpression:
		return 2
	}
	return 1
}

func pathValue(m HTTPRouteMatch) string {
	if m.PathValue == "" {
		return "/"
	}
	return m.PathValue
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

// toWireHTTPMatch translates a match into the wire form, or says why a proxy cannot run it.
func toWireHTTPMatch(m HTTPRouteMatch, name string) (*api.HTTPMatch, error) {
	if m.QueryParams > 0 {
		return nil, fmt.Errorf("query parameter matches are not supported yet")
	}
	w := &api.HTTPMatch{Name: name}
	var err error
	if w.PathRegex, err = pathRegex(m.PathType, m.PathValue); err != nil {
		return nil, err
	}
	if m.Method != "" {
		if !slices.Contains(methods, m.Method) {
			return nil, fmt.Errorf("unknown method %q", m.Method)
		}
		w.Methods = []string{m.Method}
	}
	for _, h := range m.Headers {
		if !httpguts.ValidHeaderFieldName(h.Name) {
			return nil, fmt.Errorf("%q is not a valid header name", h.Name)
		}
		if strings.EqualFold(h.Name, "host") {
			return nil, errHostMatch
		}
		hm := &api.HeaderMatch{Name: strings.ToLower(h.Name)}
		switch h.Type {
		case "", HeaderMatchExact:
			hm.ValueRegex = regexp.QuoteMeta(h.Value)
		case HeaderMatchRegularExpression:
			hm.ValueRegex = h.Value
		default:
			return nil, fmt.Errorf("header %s: unknown match type %q", h.Name, h.Type)
		}
		if _, err := api.HeaderRegexp(hm.ValueRegex); err != nil {
			return nil, fmt.Errorf("header %s: %w", h.Name, err)
		}
		w.Headers = append(w.Headers, hm)
	}
	return w, nil
}

// pathRegex translates a Gateway API path match into the wire's path regex, which is
// anchored at the start of the path only. A prefix matches whole path elements ("/v1"
// admits "/v1" and "/v1/x", not "/v10"), ignoring a trailing slash; an exact path admits
// itself only; a regular expression is passed as written, so like an SMI pathRegex it is
// anchored at the start only. The empty regex admits every path.
func pathRegex(typ, value string) (string, error) {
	switch typ {
	case "", PathMatchPathPrefix:
		prefix := strings.TrimRight(value, "/")
		if prefix == "" {
			return "", nil
		}
		return regexp.QuoteMeta(prefix) + `(?:/|$)`, nil
	case PathMatchExact:
		return regexp.QuoteMeta(value) + `$`, nil
	case PathMatchRegularExpression:
		if _, err := api.PathRegexp(value); err != nil {
			return "", err
		}
		return value, nil
	}
	return "", fmt.Errorf("unknown path match type %q", typ)
}

// ruleBackends resolves a rule's backendRefs. Each is reached on the Service port its
// backendRef names (not the parent's port). One that does not resolve keeps its weight and
// is marked unavailable, so its share fails rather than silently moving to the others.
func ruleBackends(namespace string, refs []HTTPBackendRef, services map[string]Endpoints) []*api.Backend {
	weights := make([]int64, 0, len(refs))
	out := make([]*api.Backend, 0, len(refs))
	for _, b := range refs {
		ep := services[b.Name]
		be := &api.Backend{Service: b.Name, RequestHeaders: b.RequestHeaders.toWire(), ResponseHeaders: b.ResponseHeaders.toWire()}
		if reason, msg := backendProblem(namespace, b, ep.Service); reason != "" {
			be.Unavailable = msg
		} else {
			be.Endpoints = endpointsFor(ep, b.Port)
		}
		weights = append(weights, 1000*int64(max(b.Weight, 0)))
		out = append(out, be)
	}
	for i, w := range scaleWeights(weights) {
		out[i].Weight = w
	}
	return out
}

// RoutedPorts lists the TCP ports of svc that producer HTTPRoutes govern; on those ports
// the routes replace any TrafficSplit of the Service.
func RoutedPorts(svc *corev1.Service, routes []HTTPRoute) []int32 {
	var out []int32
	for _, sp := range TCPPorts(svc) {
		if slices.ContainsFunc(routes, func(r HTTPRoute) bool { return r.attachesTo(svc, sp) }) {
			out = append(out, sp.Port)
		}
	}
	return out
}

// gatewayDuration is Gateway API's duration format (GEP-2257): one to four numbers of
// at most five digits, each with a unit among h, m, s and ms.
var gatewayDuration = regexp.MustCompile(`^([0-9]{1,5}(h|m|s|ms)){1,4}$`)

// maxRetryAttempts is the most retries a proxy route takes.
const maxRetryAttempts = 10

// maxRetryBackoff is the longest retry backoff base a proxy route takes (proxies refuse
// a longer one).
const maxRetryBackoff = time.Hour

// parseGatewayDuration parses a Gateway API duration.
func parseGatewayDuration(s string) (time.Duration, error) {
	if !gatewayDuration.MatchString(s) {
		return 0, fmt.Errorf("%q is not a Gateway API duration (such as 10s, 500ms or 1h30m)", s)
	}
	return time.ParseDuration(s)
}

// rulePolicies sets a proxy route's timeouts and retry policy from its rule's. What does
// not parse is left out, and policyNotes says so.
func rulePolicies(rule HTTPRouteRule, out *api.Route) {
	if d, err := parseGatewayDuration(rule.Timeouts.Request); err == nil && d > 0 {
		out.Timeout = durationpb.New(d)
	}
	if d, err := parseGatewayDuration(rule.Timeouts.BackendRequest); err == nil && d > 0 {
		out.BackendRequestTimeout = durationpb.New(d)
	}
	if rule.Retry == nil {
		return
	}
	rp := &api.RetryPolicy{}
	for _, code := range rule.Retry.Codes {
		if code >= 400 && code <= 599 {
			rp.RetryOn = append(rp.RetryOn, uint32(code))
		}
	}
	if a := rule.Retry.Attempts; a != nil {
		n := uint32(min(max(*a, 0), maxRetryAttempts))
		rp.Retries = &n
	}
	if d, err := parseGatewayDuration(rule.Retry.Backoff); err == nil && d > 0 {
		rp.BackoffBase = durationpb.New(min(d, maxRetryBackoff))
	}
	out.Retry = rp
}

// policyNotes describes what of the rules' timeouts and retries proxies leave out.
func policyNotes(r HTTPRoute) []string {
	var out []string
	for i, rule := range r.Rules {
		request, errReq := parseGatewayDuration(rule.Timeouts.Request)
		backend, errBackend := parseGatewayDuration(rule.Timeouts.BackendRequest)
		if rule.Timeouts.Request != "" && errReq != nil {
			out = append(out, fmt.Sprintf("spec.rules[%d].timeouts.request: %v, ignored", i, errReq))
		}
		if rule.Timeouts.BackendRequest != "" && errBackend != nil {
			out = append(out, fmt.Sprintf("spec.rules[%d].timeouts.backendRequest: %v, ignored", i, errBackend))
		}
		if errReq == nil && errBackend == nil && request > 0 && backend > request {
			out = append(out, fmt.Sprintf("spec.rules[%d].timeouts: backendRequest %s is longer than request %s, which ends the request first",
				i, rule.Timeouts.BackendRequest, rule.Timeouts.Request))
		}
		out = append(out, retryNotes(i, rule.Retry)...)
	}
	return out
}

func retryNotes(i int, retry *HTTPRouteRetry) []string {
	if retry == nil {
		return nil
	}
	var out []string
	for _, code := range retry.Codes {
		if code < 400 || code > 599 {
			out = append(out, fmt.Sprintf("spec.rules[%d].retry.codes: %d is not a 4xx or 5xx status, ignored", i, code))
		}
	}
	if a := retry.Attempts; a != nil && *a > maxRetryAttempts {
		out = append(out, fmt.Sprintf("spec.rules[%d].retry.attempts: %d, capped at %d", i, *a, maxRetryAttempts))
	}
	if retry.Backoff == "" {
		return out
	}
	switch d, err := parseGatewayDuration(retry.Backoff); {
	case err != nil:
		out = append(out, fmt.Sprintf("spec.rules[%d].retry.backoff: %v, ignored (retries go at once, to another endpoint)", i, err))
	case d > maxRetryBackoff:
		out = append(out, fmt.Sprintf("spec.rules[%d].retry.backoff: %s, capped at %s", i, retry.Backoff, maxRetryBackoff))
	}
	return out
}
