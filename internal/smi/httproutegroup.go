package smi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// SpecsGroupVersion is the version Braid reads HTTPRouteGroups through: the latest, which
// its CRD stores (older shapes are refused at admission).
var SpecsGroupVersion = schema.GroupVersion{Group: "specs.smi-spec.io", Version: "v1alpha4"}

// HTTPRouteGroup is an SMI HTTPRouteGroup (specs.smi-spec.io/v1alpha4) with Braid's status.
// Its matches are Braid's own type: the SDK decodes headers only as a list of single-key
// maps, so an object written in the spec's map form would fail to decode and stall the
// informer for every route group.
//
// +kubebuilder:object:root=true
type HTTPRouteGroup struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   HTTPRouteGroupSpec `json:"spec,omitempty"`
	Status Status             `json:"status,omitempty"`
}

// HTTPRouteGroupSpec holds the group's matches.
type HTTPRouteGroupSpec struct {
	Matches []HTTPMatch `json:"matches,omitempty"`
}

// HTTPMatch is one named match: all the fields it sets must match (AND).
type HTTPMatch struct {
	Name      string   `json:"name,omitempty"`
	Methods   []string `json:"methods,omitempty"`
	PathRegex string   `json:"pathRegex,omitempty"`
	Headers   Headers  `json:"headers,omitempty"`
}

// Headers maps header names to value regexes. It decodes both forms found in the wild:
// the spec's object (`{user-agent: ".*Firefox.*"}`) and the SDK's list of single-key
// objects (`[{user-agent: ".*Firefox.*"}]`); it encodes as the list, sorted by name.
type Headers map[string]string

// UnmarshalJSON decodes either form.
func (h *Headers) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if bytes.Equal(b, []byte("null")) {
		*h = nil
		return nil
	}
	out := Headers{}
	if len(b) > 0 && b[0] == '{' {
		if err := json.Unmarshal(b, (*map[string]string)(&out)); err != nil {
			return fmt.Errorf("headers: %w", err)
		}
		*h = out
		return nil
	}
	var list []map[string]string
	if err := json.Unmarshal(b, &list); err != nil {
		return fmt.Errorf("headers must be an object of name: regex, or a list of such single-key objects: %w", err)
	}
	for _, m := range list {
		if len(m) != 1 {
			return errors.New("each item of a headers list must hold exactly one name: regex")
		}
		for k, v := range m {
			out[k] = v
		}
	}
	*h = out
	return nil
}

// MarshalJSON encodes the list form, sorted by header name.
func (h Headers) MarshalJSON() ([]byte, error) {
	if h == nil {
		return []byte("null"), nil
	}
	names := make([]string, 0, len(h))
	for k := range h {
		names = append(names, k)
	}
	slices.SortFunc(names, strings.Compare)
	list := make([]map[string]string, 0, len(h))
	for _, k := range names {
		list = append(list, map[string]string{k: h[k]})
	}
	return json.Marshal(list)
}

// HTTPRouteGroupList is a list of HTTPRouteGroup.
//
// +kubebuilder:object:root=true
type HTTPRouteGroupList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []HTTPRouteGroup `json:"items"`
}
