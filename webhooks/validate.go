// Package webhooks holds Braid's admission webhooks. The validating webhook refuses SMI
// objects that can never work and names the field; it never changes an object (Flagger
// diffs specs and would loop on a defaulted field).
package webhooks

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/braidmesh/braid/internal/mesh"
	"github.com/braidmesh/braid/internal/smi"
)

// Paths the webhooks are served on.
const (
	PathValidateTrafficSplit   = "/validate-split-smi-spec-io-trafficsplit"
	PathValidateHTTPRouteGroup = "/validate-specs-smi-spec-io-httproutegroup"
)

// Setup registers the validating webhooks on server.
func Setup(server webhook.Server) {
	server.Register(PathValidateTrafficSplit, &webhook.Admission{Handler: admission.HandlerFunc(validateTrafficSplit)})
	server.Register(PathValidateHTTPRouteGroup, &webhook.Admission{Handler: admission.HandlerFunc(validateHTTPRouteGroup)})
}

// The webhooks fail open: if the operator is down, SMI objects are still admitted (a
// canary must not stall because the mesh's control plane restarts), and the objects'
// status conditions report what the webhook would have refused.
//
// +kubebuilder:webhook:path=/validate-split-smi-spec-io-trafficsplit,mutating=false,failurePolicy=ignore,sideEffects=None,groups=split.smi-spec.io,resources=trafficsplits,verbs=create;update,versions=v1alpha1;v1alpha2;v1alpha3;v1alpha4,name=vtrafficsplit.braid.dev,admissionReviewVersions=v1,timeoutSeconds=5
// +kubebuilder:webhook:path=/validate-specs-smi-spec-io-httproutegroup,mutating=false,failurePolicy=ignore,sideEffects=None,groups=specs.smi-spec.io,resources=httproutegroups,verbs=create;update,versions=v1alpha3;v1alpha4,name=vhttproutegroup.braid.dev,admissionReviewVersions=v1,timeoutSeconds=5

// validateTrafficSplit refuses negative weights and a backend listed twice. Every served
// version has the same shape, and Braid's type decodes the weights of all of them.
func validateTrafficSplit(_ context.Context, req admission.Request) admission.Response {
	var ts smi.TrafficSplit
	if err := json.Unmarshal(req.Object.Raw, &ts); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decoding the TrafficSplit: %w", err))
	}
	var problems []string
	seen := map[string]int{}
	for i, b := range ts.Spec.Backends {
		if b.Weight != nil && b.Weight.Sign() < 0 {
			problems = append(problems, fmt.Sprintf("spec.backends[%d].weight: %s is negative; weights are 0 or more", i, b.Weight.String()))
		}
		if b.Weight != nil && b.Weight.CmpInt64(mesh.MaxWeight) > 0 {
			problems = append(problems, fmt.Sprintf("spec.backends[%d].weight: %s is above %d; weights are relative, so smaller numbers say the same", i, b.Weight.String(), mesh.MaxWeight))
		}
		if j, dup := seen[b.Service]; dup {
			problems = append(problems, fmt.Sprintf("spec.backends[%d].service: %q is already spec.backends[%d]; list each backend once", i, b.Service, j))
		}
		seen[b.Service] = i
	}
	return verdict(problems)
}

// validateHTTPRouteGroup refuses matches no proxy can run: a regex RE2 cannot compile, an
// unknown method, an invalid header name.
func validateHTTPRouteGroup(_ context.Context, req admission.Request) admission.Response {
	var g smi.HTTPRouteGroup
	if err := json.Unmarshal(req.Object.Raw, &g); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decoding the HTTPRouteGroup: %w", err))
	}
	group := mesh.RouteGroup{Namespace: g.Namespace, Name: g.Name}
	for _, m := range g.Spec.Matches {
		group.Matches = append(group.Matches, mesh.RouteMatch{Name: m.Name, PathRegex: m.PathRegex, Methods: m.Methods, Headers: m.Headers})
	}
	if v := mesh.CheckRouteGroup(group); !v.Accepted {
		return verdict([]string{v.Message})
	}
	return admission.Allowed("")
}

func verdict(problems []string) admission.Response {
	if len(problems) == 0 {
		return admission.Allowed("")
	}
	return admission.Denied(strings.Join(problems, "; "))
}
