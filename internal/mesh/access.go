package mesh

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/braidmesh/braid/proxy/api"
)

// AccessMode is how TrafficTargets govern a destination (MeshConfig spec.accessControl).
type AccessMode string

// Access modes; see api/v1alpha1.AccessMode.
const (
	AccessPermissive AccessMode = "Permissive"
	AccessTargeted   AccessMode = "Targeted"
	AccessStrict     AccessMode = "Strict"
)

// Target is a TrafficTarget normalised for the compiler.
type Target struct {
	Namespace, Name string
	Destination     Subject
	Sources         []Subject
	Rules           []TargetRule
}

// Key is the target's namespace/name.
func (t Target) Key() string { return t.Namespace + "/" + t.Name }

// Subject is a ServiceAccount named by a TrafficTarget.
type Subject struct {
	Kind, Name, Namespace string
}

// TargetRule references an HTTPRouteGroup, TCPRoute or UDPRoute in the target's
// namespace; Matches restricts an HTTPRouteGroup to the matches it names (all when empty).
type TargetRule struct {
	Kind, Name string
	Matches    []string
}

// L4Route is a TCPRoute or UDPRoute: the ports it admits (every port when empty).
type L4Route struct {
	Name  string
	Ports []int
}

// AccessInput is everything the inbound policy of one namespace's workloads depends on.
type AccessInput struct {
	Namespace   string
	TrustDomain string
	Mode        AccessMode
	// Targets are the TrafficTargets of the namespace.
	Targets []Target
	// RouteGroups, TCPRoutes and UDPRoutes hold the namespace's specs by name.
	RouteGroups map[string]*RouteGroup
	TCPRoutes   map[string]*L4Route
	UDPRoutes   map[string]*L4Route
	// Ports maps the namespace's workload ports to their protocol, when known.
	Ports map[uint32]api.Protocol
	// ServiceAccounts holds the ServiceAccounts ("namespace/name") that exist among those
	// the targets name; nil skips the check. A target naming one that does not exist is
	// compiled all the same (identities are names: it takes effect once the account
	// exists) and its ResolvedRefs says so.
	ServiceAccounts map[string]bool
}

// NamespacePolicy is the compiled inbound policy of a namespace's workloads: one per
// destination ServiceAccount that TrafficTargets name, and Default for every other.
type NamespacePolicy struct {
	Default          *api.Inbound
	ByServiceAccount map[string]*api.Inbound
}

// For returns the inbound policy of a ServiceAccount of the namespace.
func (p NamespacePolicy) For(serviceAccount string) *api.Inbound {
	if in, ok := p.ByServiceAccount[serviceAccount]; ok {
		return in
	}
	return p.Default
}

// Reasons of TrafficTarget conditions.
const (
	ReasonInvalidDestination = "InvalidDestination"
	ReasonInvalidSource      = "InvalidSource"
	ReasonNoRules            = "NoRules"
	ReasonNoSources          = "NoSources"
	ReasonInvalidRuleKind    = "InvalidRuleKind"
	ReasonRouteNotFound      = "RouteNotFound"
	ReasonMatchNotFound      = "MatchNotFound"
	ReasonNotEnforced        = "NotEnforced"
	// ReasonServiceAccountNotFound: a ServiceAccount a target names does not exist.
	ReasonServiceAccountNotFound = "ServiceAccountNotFound"
)

// TargetVerdict is what the compiler decided about one TrafficTarget.
type TargetVerdict struct {
	Accepted Verdict
	// Resolved says whether every rule names an existing spec and existing matches.
	Resolved RefsVerdict
	// Enforced says whether the destination's mode enforces TrafficTargets.
	Enforced bool
}

// CheckTarget decides whether a TrafficTarget is valid: a TrafficTarget that is not grants
// nothing (SMI: its destination is in its own namespace, it has at least one rule and
// one source, and its rules reference HTTPRouteGroups, TCPRoutes or UDPRoutes).
func CheckTarget(t Target) Verdict {
	d := t.Destination
	switch {
	case d.Kind != KindServiceAccount || d.Name == "":
		return reject(ReasonInvalidDestination, "spec.destination must name a ServiceAccount (kind ServiceAccount, name set), got kind %q name %q", d.Kind, d.Name)
	case d.Namespace != "" && d.Namespace != t.Namespace:
		return reject(ReasonInvalidDestination, "spec.destination.namespace %q differs from the TrafficTarget's namespace %q: a TrafficTarget governs only its own namespace's workloads; create it in %q", d.Namespace, t.Namespace, d.Namespace)
	case len(t.Sources) == 0:
		return reject(ReasonNoSources, "spec.sources is empty: a TrafficTarget must admit at least one ServiceAccount")
	case len(t.Rules) == 0:
		return reject(ReasonNoRules, "spec.rules is empty: a TrafficTarget must reference at least one HTTPRouteGroup, TCPRoute or UDPRoute")
	}
	for i, s := range t.Sources {
		if s.Kind != KindServiceAccount || s.Name == "" {
			return reject(ReasonInvalidSource, "spec.sources[%d] must name a ServiceAccount (kind ServiceAccount, name set), got kind %q name %q", i, s.Kind, s.Name)
		}
	}
	for i, r := range t.Rules {
		if !slices.Contains([]string{KindHTTPRouteGroup, KindTCPRoute, KindUDPRoute}, r.Kind) || r.Name == "" {
			return reject(ReasonInvalidRuleKind, "spec.rules[%d] must reference an HTTPRouteGroup, TCPRoute or UDPRoute by name, got kind %q name %q", i, r.Kind, r.Name)
		}
	}
	names := make([]string, 0, len(t.Sources))
	for _, s := range t.Sources {
		names = append(names, cmpOr(s.Namespace, t.Namespace)+"/"+s.Name)
	}
	return Verdict{Accepted: true, Reason: ReasonAccepted, Message: fmt.Sprintf("admits %s to ServiceAccount %s", strings.Join(names, ", "), t.Destination.Name)}
}

// Kinds of SMI subjects and rules.
const (
	KindServiceAccount = "ServiceAccount"
	KindHTTPRouteGroup = "HTTPRouteGroup"
	KindTCPRoute       = "TCPRoute"
	KindUDPRoute       = "UDPRoute"
)

// CompileAccess compiles a namespace's TrafficTargets into the inbound policy of its
// workloads, and reports on each target.
//
// In Permissive mode every client gets in and targets are not enforced. In Targeted mode a
// ServiceAccount no valid target names stays open, and one that is named admits only what
// its targets grant. In Strict mode every ServiceAccount admits only what targets grant.
func CompileAccess(in AccessInput) (NamespacePolicy, map[string]TargetVerdict) {
	mode := in.Mode
	if mode == "" {
		mode = AccessTargeted
	}
	verdicts := map[string]TargetVerdict{}
	grants := map[string][]*api.Authorization{}
	for _, t := range in.Targets {
		v := TargetVerdict{Accepted: CheckTarget(t), Enforced: mode != AccessPermissive}
		if v.Accepted.Accepted {
			var auth *api.Authorization
			auth, v.Resolved = compileTarget(in, t)
			sa := t.Destination.Name
			grants[sa] = append(grants[sa], auth)
		}
		verdicts[t.Key()] = v
	}
	policy := NamespacePolicy{ByServiceAccount: map[string]*api.Inbound{}}
	policy.Default = &api.Inbound{Mode: string(mode), AllowAll: mode != AccessStrict, Ports: in.Ports}
	if mode == AccessPermissive {
		return policy, verdicts
	}
	for _, sa := range slices.Sorted(maps.Keys(grants)) {
		auths := grants[sa]
		slices.SortFunc(auths, func(a, b *api.Authorization) int { return strings.Compare(a.GetName(), b.GetName()) })
		policy.ByServiceAccount[sa] = &api.Inbound{Mode: string(mode), Authorizations: auths, Ports: in.Ports}
	}
	return policy, verdicts
}

// compileTarget turns one valid target into its grant. A rule whose spec or match does
// not exist grants nothing; the others still do.
func compileTarget(in AccessInput, t Target) (*api.Authorization, RefsVerdict) {
	auth := &api.Authorization{Name: t.Key()}
	for _, s := range t.Sources {
		auth.Sources = append(auth.Sources, fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", in.TrustDomain, cmpOr(s.Namespace, t.Namespace), s.Name))
	}
	slices.Sort(auth.Sources)
	auth.Sources = slices.Compact(auth.Sources)
	rs := &ruleSet{}
	for i, r := range t.Rules {
		rs.add(in, t.Namespace, i, r, auth)
	}
	rs.finish(auth)
	var problems []string
	if len(rs.problems) > 0 {
		problems = append(problems, strings.Join(rs.problems, "; ")+"; the other rules still apply")
	}
	accounts := checkAccounts(in, t)
	problems = append(problems, accounts...)
	switch {
	case len(rs.problems) > 0:
		return auth, RefsVerdict{Reason: rs.reason, Message: strings.Join(problems, "; ")}
	case len(accounts) > 0:
		return auth, RefsVerdict{Reason: ReasonServiceAccountNotFound, Message: strings.Join(problems, "; ")}
	}
	return auth, RefsVerdict{Resolved: true, Reason: ReasonResolvedRefs, Message: "every rule references an existing route"}
}

// ruleSet accumulates what a target's rules grant.
type ruleSet struct {
	hasHTTP, hasTCP, allTCP bool
	problems                []string
	reason                  string
}

func (rs *ruleSet) problem(reason, format string, args ...any) {
	rs.reason = cmpOr(rs.reason, reason)
	rs.problems = append(rs.problems, fmt.Sprintf(format, args...))
}

// add folds rule i into auth.
func (rs *ruleSet) add(in AccessInput, namespace string, i int, r TargetRule, auth *api.Authorization) {
	switch r.Kind {
	case KindHTTPRouteGroup:
		rs.hasHTTP = true
		g := in.RouteGroups[r.Name]
		if g == nil {
			rs.problem(ReasonRouteNotFound, "spec.rules[%d]: HTTPRouteGroup %q does not exist in namespace %s", i, r.Name, namespace)
			return
		}
		matches, missing := groupMatches(g, r.Matches)
		if len(missing) > 0 {
			rs.problem(ReasonMatchNotFound, "spec.rules[%d]: HTTPRouteGroup %q has no match named %s", i, r.Name, strings.Join(missing, ", "))
		}
		auth.HttpMatches = append(auth.HttpMatches, matches...)
	case KindTCPRoute:
		rs.hasTCP = true
		route := in.TCPRoutes[r.Name]
		if route == nil {
			rs.problem(ReasonRouteNotFound, "spec.rules[%d]: TCPRoute %q does not exist in namespace %s", i, r.Name, namespace)
			return
		}
		rs.allTCP = rs.allTCP || len(route.Ports) == 0
		auth.TcpPorts = appendPorts(auth.TcpPorts, route.Ports)
	case KindUDPRoute:
		route := in.UDPRoutes[r.Name]
		if route == nil {
			rs.problem(ReasonRouteNotFound, "spec.rules[%d]: UDPRoute %q does not exist in namespace %s", i, r.Name, namespace)
			return
		}
		auth.UdpPorts = appendPorts(auth.UdpPorts, route.Ports)
	}
}

// checkAccounts says which ServiceAccounts t names do not exist (when in knows).
func checkAccounts(in AccessInput, t Target) []string {
	if in.ServiceAccounts == nil {
		return nil
	}
	var problems []string
	if !in.ServiceAccounts[t.Namespace+"/"+t.Destination.Name] {
		problems = append(problems, fmt.Sprintf("spec.destination: ServiceAccount %q does not exist in namespace %s; the grant takes effect when it does",
			t.Destination.Name, t.Namespace))
	}
	for i, s := range t.Sources {
		ns := cmpOr(s.Namespace, t.Namespace)
		if !in.ServiceAccounts[ns+"/"+s.Name] {
			problems = append(problems, fmt.Sprintf("spec.sources[%d]: ServiceAccount %q does not exist in namespace %s; it is admitted once it does", i, s.Name, ns))
		}
	}
	return problems
}

// ReferencedServiceAccounts lists, as "namespace/name", the ServiceAccounts targets name:
// their destinations and sources.
func ReferencedServiceAccounts(targets []Target) []string {
	var out []string
	for _, t := range targets {
		out = append(out, t.Namespace+"/"+t.Destination.Name)
		for _, s := range t.Sources {
			out = append(out, cmpOr(s.Namespace, t.Namespace)+"/"+s.Name)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// noPort is the port list of a grant that admits no TCP port: port 0 never carries traffic.
var noPort = []uint32{0}

// finish settles what the rules grant together: TCPRoutes restrict the ports (every port
// when one has none), HTTPRouteGroups the requests; TCPRoutes alone grant everything on
// their ports (an L4 grant); UDPRoutes alone grant nothing the proxy carries.
func (rs *ruleSet) finish(auth *api.Authorization) {
	switch {
	case rs.allTCP:
		auth.TcpPorts = nil
	case rs.hasTCP && len(auth.TcpPorts) == 0:
		auth.TcpPorts = noPort // the TCPRoutes resolved to no port
	case !rs.hasTCP && !rs.hasHTTP:
		auth.TcpPorts = noPort
	}
	auth.AnyRequest = rs.hasTCP && !rs.hasHTTP && (rs.allTCP || len(auth.TcpPorts) > 0 && auth.TcpPorts[0] != 0)
}

// groupMatches returns the wire form of the named matches of g (all of them when names
// is empty, per SMI), and the names that g lacks. Matches that cannot run are left out.
func groupMatches(g *RouteGroup, names []string) (out []*api.HTTPMatch, missing []string) {
	for _, name := range names {
		if !slices.ContainsFunc(g.Matches, func(m RouteMatch) bool { return m.Name == name }) {
			missing = append(missing, fmt.Sprintf("%q", name))
		}
	}
	for _, m := range g.Matches {
		if len(names) > 0 && !slices.Contains(names, m.Name) {
			continue
		}
		if len(matchProblems("", m)) > 0 {
			continue
		}
		out = append(out, toWireMatch(g.Name, m))
	}
	return out, missing
}

func appendPorts(to []uint32, ports []int) []uint32 {
	for _, p := range ports {
		if p > 0 && p <= 65535 {
			to = append(to, uint32(p))
		}
	}
	slices.Sort(to)
	return slices.Compact(to)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
