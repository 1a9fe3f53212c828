package mesh

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"
)

// TestCompileAccess compiles each testdata/access/<case>.input.yaml (a AccessInput in
// YAML, field names as in Go) and compares the namespace policy and the verdict on every
// TrafficTarget with <case>.golden.json. Run with -update to rewrite the golden files,
// then read them.
func TestCompileAccess(t *testing.T) {
	inputs, err := filepath.Glob("testdata/access/*.input.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no inputs: %v", err)
	}
	for _, path := range inputs {
		name := strings.TrimSuffix(filepath.Base(path), ".input.yaml")
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var in AccessInput
			if err := yaml.UnmarshalStrict(raw, &in); err != nil {
				t.Fatalf("decoding %s: %v", path, err)
			}
			policy, verdicts := CompileAccess(in)
			compareGolden(t, filepath.Join("testdata/access", name+".golden.json"), accessJSON(t, policy, verdicts))
		})
	}
}

func accessJSON(t *testing.T, p NamespacePolicy, v map[string]TargetVerdict) []byte {
	t.Helper()
	out := map[string]any{"verdicts": v}
	def, err := protojson.Marshal(p.Default)
	if err != nil {
		t.Fatal(err)
	}
	out["default"] = json.RawMessage(def)
	by := map[string]json.RawMessage{}
	for sa, in := range p.ByServiceAccount {
		raw, err := protojson.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		by[sa] = raw
	}
	out["byServiceAccount"] = by
	raw, err := json.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	return normalizeJSON(t, raw)
}

func TestCheckTargetRejectsWhatSMIForbids(t *testing.T) {
	valid := Target{
		Namespace: "shop", Name: "t",
		Destination: Subject{Kind: "ServiceAccount", Name: "b", Namespace: "shop"},
		Sources:     []Subject{{Kind: "ServiceAccount", Name: "a", Namespace: "shop"}},
		Rules:       []TargetRule{{Kind: "TCPRoute", Name: "all"}},
	}
	if v := CheckTarget(valid); !v.Accepted {
		t.Fatalf("valid target refused: %+v", v)
	}
	for name, c := range map[string]struct {
		mutate func(*Target)
		reason string
	}{
		"destination in another namespace":  {func(t *Target) { t.Destination.Namespace = "other" }, ReasonInvalidDestination},
		"destination not a service account": {func(t *Target) { t.Destination.Kind = "Group" }, ReasonInvalidDestination},
		"no sources":                        {func(t *Target) { t.Sources = nil }, ReasonNoSources},
		"no rules":                          {func(t *Target) { t.Rules = nil }, ReasonNoRules},
		"unknown rule kind":                 {func(t *Target) { t.Rules[0].Kind = "HTTPRoute" }, ReasonInvalidRuleKind},
		"source without name":               {func(t *Target) { t.Sources[0].Name = "" }, ReasonInvalidSource},
	} {
		tt := valid
		tt.Sources = append([]Subject(nil), valid.Sources...)
		tt.Rules = append([]TargetRule(nil), valid.Rules...)
		c.mutate(&tt)
		v := CheckTarget(tt)
		if v.Accepted || v.Reason != c.reason || v.Message == "" {
			t.Errorf("%s: verdict %+v, want refused with %s", name, v, c.reason)
		}
	}
}
