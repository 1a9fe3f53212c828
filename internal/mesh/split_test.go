package mesh

import (
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestCheckSplit(t *testing.T) {
	backends := func(milli ...int64) []SplitBackend {
		out := make([]SplitBackend, 0, len(milli))
		for i, w := range milli {
			out = append(out, SplitBackend{Service: "reviews-v" + string(rune('1'+i)), MilliWeight: w})
		}
		return out
	}
	cases := []struct {
		name       string
		backends   []SplitBackend
		rootExists bool
		reason     string
		// mention lists what the message must say for a user to fix the split.
		mention []string
	}{
		{name: "root missing", backends: backends(1000), reason: ReasonRootServiceNotFound, mention: []string{`"reviews"`, `"shop"`}},
		{name: "root missing is reported before no backends", reason: ReasonRootServiceNotFound, mention: []string{`"reviews"`}},
		{name: "nil backends", rootExists: true, reason: ReasonNoBackends, mention: []string{"spec.backends"}},
		{name: "empty backends", backends: []SplitBackend{}, rootExists: true, reason: ReasonNoBackends, mention: []string{"spec.backends"}},
		{name: "negative weight", backends: backends(1000, -1), rootExists: true, reason: ReasonInvalidWeight,
			mention: []string{"spec.backends[1]", "reviews-v2"}},
		{name: "every negative weight named", backends: backends(-1000, 1000, -1), rootExists: true, reason: ReasonInvalidWeight,
			mention: []string{"spec.backends[0] (reviews-v1)", "spec.backends[2] (reviews-v3)"}},
		{name: "negative weight is reported before all zero", backends: backends(0, -5), rootExists: true, reason: ReasonInvalidWeight,
			mention: []string{"spec.backends[1]"}},
		{name: "all weights zero", backends: backends(0, 0), rootExists: true, reason: ReasonAllWeightsZero, mention: []string{"weight 0"}},
		{name: "a weight above the maximum", backends: backends(MaxWeight*1000+1, 1000), rootExists: true, reason: ReasonInvalidWeight,
			mention: []string{"at most 1000000", "spec.backends[0]"}},
		{name: "weights whose sum overflows int64 are refused as too large, not read as all zero", backends: backends(math.MaxInt64, math.MaxInt64, 2),
			rootExists: true, reason: ReasonInvalidWeight, mention: []string{"at most 1000000"}},
		{name: "single backend weight zero", backends: backends(0), rootExists: true, reason: ReasonAllWeightsZero, mention: []string{"weight 0"}},
		{name: "valid", backends: backends(80000, 20000), rootExists: true, reason: ReasonAccepted, mention: []string{"reviews", "2 backends"}},
		{name: "valid with a zero weight", backends: backends(1000, 0), rootExists: true, reason: ReasonAccepted, mention: []string{"reviews"}},
		{name: "valid single backend", backends: backends(1), rootExists: true, reason: ReasonAccepted, mention: []string{"reviews"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := Split{Namespace: "shop", Name: "reviews-rollout", Root: "reviews", Backends: tc.backends}
			v := CheckSplit(s, tc.rootExists)
			if v.Reason != tc.reason {
				t.Errorf("Reason = %q, want %q (message %q)", v.Reason, tc.reason, v.Message)
			}
			if want := tc.reason == ReasonAccepted; v.Accepted != want {
				t.Errorf("Accepted = %t, want %t", v.Accepted, want)
			}
			if v.Message == "" {
				t.Error("Message is empty")
			}
			for _, m := range tc.mention {
				if !strings.Contains(v.Message, m) {
					t.Errorf("Message %q does not mention %q", v.Message, m)
				}
			}
		})
	}
}

func TestWinner(t *testing.T) {
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	split := func(name string, created time.Time) Split {
		return Split{Namespace: "shop", Name: name, Created: created, Root: "reviews"}
	}
	cases := []struct {
		name   string
		splits []Split
		want   string // "" means no winner
	}{
		{name: "none"},
		{name: "one", splits: []Split{split("b", t0)}, want: "b"},
		{name: "oldest wins over name", splits: []Split{split("a", t0.Add(time.Second)), split("z", t0)}, want: "z"},
		{name: "same age: first by name", splits: []Split{split("b", t0), split("a", t0), split("c", t0)}, want: "a"},
		{name: "same instant in other zones", splits: []Split{split("b", t0), split("a", t0.In(time.FixedZone("x", 3600)))}, want: "a"},
		{name: "oldest of many", splits: []Split{split("a", t0.Add(2*time.Hour)), split("c", t0.Add(time.Hour)), split("b", t0.Add(time.Hour))}, want: "b"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Every order of the input must give the same winner: operator replicas list
			// splits in whatever order their caches hold them.
			for _, order := range permutations(tc.splits) {
				got, ok := Winner(order)
				if ok != (tc.want != "") || got.Name != tc.want {
					t.Errorf("Winner(%v) = %q, %t; want %q", names(order), got.Name, ok, tc.want)
				}
			}
		})
	}
}

func names(splits []Split) []string {
	out := make([]string, 0, len(splits))
	for _, s := range splits {
		out = append(out, s.Name)
	}
	return out
}

func permutations(s []Split) [][]Split {
	if len(s) <= 1 {
		return [][]Split{slices.Clone(s)}
	}
	var out [][]Split
	for i := range s {
		rest := slices.Concat(s[:i], s[i+1:])
		for _, p := range permutations(rest) {
			out = append(out, append([]Split{s[i]}, p...))
		}
	}
	return out
}
