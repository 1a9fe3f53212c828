package mesh

import (
	"fmt"
	"strings"
	"time"
)

// Split is a TrafficSplit normalised from whichever SMI version it was written in.
type Split struct {
	Namespace string
	Name      string
	// Generation is the metadata.generation the split was read at.
	Generation int64
	Created    time.Time
	// Root is the apex Service clients call, in the split's namespace.
	Root     string
	Backends []SplitBackend
	// Matches name HTTPRouteGroups (v1alpha3+): when set, only requests they match are
	// split, and the others go to the root Service itself.
	Matches []string
}

// SplitBackend is a backend Service and its relative weight.
type SplitBackend struct {
	Service string
	// MilliWeight is the weight in thousandths, so that v1alpha1 quantities such as
	// "500m" and the integer weights of later versions compare exactly.
	MilliWeight int64
}

// Key is the split's namespace/name.
func (s Split) Key() string { return s.Namespace + "/" + s.Name }

// MaxWeight is the largest weight a backend may have (Gateway API's bound too): weights
// are relative, and larger numbers only invite overflow.
const MaxWeight = 1_000_000

// Reasons of a TrafficSplit's Accepted condition.
const (
	ReasonAccepted            = "Accepted"
	ReasonRootServiceNotFound = "RootServiceNotFound"
	ReasonNoBackends          = "NoBackends"
	ReasonInvalidWeight       = "InvalidWeight"
	ReasonAllWeightsZero      = "AllWeightsZero"
)

// Verdict says whether a split can be programmed, and if not, why.
type Verdict struct {
	Accepted bool
	Reason   string
	Message  string
}

// CheckSplit decides whether a split can be programmed. rootExists says whether its root
// Service exists. A split that is not accepted never changes what proxies do: they keep
// the last configuration that was accepted.
func CheckSplit(s Split, rootExists bool) Verdict {
	switch {
	case !rootExists:
		return reject(ReasonRootServiceNotFound,
			"root service %q does not exist in namespace %q; clients call the root service, so the split has nothing to apply to",
			s.Root, s.Namespace)
	case len(s.Backends) == 0:
		return reject(ReasonNoBackends, "spec.backends is empty; list at least one backend service with a weight above 0")
	}
	var negative, huge []string
	positive := false // not a sum: huge weights could overflow it
	for i, b := range s.Backends {
		switch {
		case b.MilliWeight < 0:
			negative = append(negative, fmt.Sprintf("spec.backends[%d] (%s)", i, b.Service))
		case b.MilliWeight > MaxWeight*1000:
			huge = append(huge, fmt.Sprintf("spec.backends[%d] (%s)", i, b.Service))
		}
		positive = positive || b.MilliWeight > 0
	}
	switch {
	case len(negative) > 0:
		return reject(ReasonInvalidWeight, "weights must be 0 or more: %s", strings.Join(negative, ", "))
	case len(huge) > 0:
		return reject(ReasonInvalidWeight, "weights must be at most %d (they are relative): %s", MaxWeight, strings.Join(huge, ", "))
	case !positive:
		return reject(ReasonAllWeightsZero,
			"every backend has weight 0, so no backend could receive traffic; proxies keep the last accepted weights until one backend has a weight above 0")
	}
	return Verdict{Accepted: true, Reason: ReasonAccepted,
		Message: fmt.Sprintf("traffic to %s is split across %d backends", s.Root, len(s.Backends))}
}

func reject(reason, format string, args ...any) Verdict {
	return Verdict{Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// Winner picks the split that governs a root when several name it: the oldest, then the
// first by name, so every operator replica picks the same one. The others are ignored,
// whether the winner is valid or not, so status and proxies agree on which one applies.
func Winner(splits []Split) (Split, bool) {
	if len(splits) == 0 {
		return Split{}, false
	}
	best := splits[0]
	for _, s := range splits[1:] {
		if s.Created.Before(best.Created) || (s.Created.Equal(best.Created) && s.Name < best.Name) {
			best = s
		}
	}
	return best, true
}
