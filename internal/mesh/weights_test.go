package mesh

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func TestScaleWeights(t *testing.T) {
	cases := []struct {
		name  string
		milli []int64
		want  []uint32
	}{
		{name: "none", milli: nil, want: []uint32{}},
		{name: "all zero", milli: []int64{0, 0, 0}, want: []uint32{0, 0, 0}},
		{name: "negative counts as zero", milli: []int64{-5, 0}, want: []uint32{0, 0}},
		{name: "negative beside positive", milli: []int64{-5000, 3000}, want: []uint32{0, 1}},
		{name: "single", milli: []int64{1000}, want: []uint32{1}},
		{name: "single huge", milli: []int64{7_000_000_000_000}, want: []uint32{1}},
		{name: "gcd 80/20", milli: []int64{80_000, 20_000}, want: []uint32{4, 1}},
		{name: "gcd v1alpha1 500m and 1", milli: []int64{500, 1000}, want: []uint32{1, 2}},
		{name: "gcd with zero kept", milli: []int64{30_000, 0, 45_000}, want: []uint32{2, 0, 3}},
		{name: "coprime kept", milli: []int64{3, 7}, want: []uint32{3, 7}},
		{name: "bound itself is not scaled", milli: []int64{maxWireWeight, 999_999}, want: []uint32{maxWireWeight, 999_999}},
		{name: "gcd brings under the bound", milli: []int64{2_000_000_000, 1_000_000}, want: []uint32{2_000, 1}},
		{name: "just over the bound", milli: []int64{maxWireWeight + 1, 1}, want: []uint32{maxWireWeight, 1}},
		{name: "overflow scaling", milli: []int64{7_000_000_000_000, 3}, want: []uint32{maxWireWeight, 1}},
		{name: "overflow scaling keeps ratios", milli: []int64{2_000_003, 1_000_001, 0}, want: []uint32{maxWireWeight, 499_999, 0}},
		{name: "max int64", milli: []int64{math.MaxInt64, 1, math.MaxInt64 / 4}, want: []uint32{maxWireWeight, 1, 250_000}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.want == nil {
				tc.want = []uint32{}
			}
			if got := scaleWeights(tc.milli); !slices.Equal(got, tc.want) {
				t.Errorf("scaleWeights(%v) = %v, want %v", tc.milli, got, tc.want)
			}
		})
	}
}

// TestScaleWeightsBounds checks on random weights what the wire relies on: every weight
// at most maxWireWeight, a positive weight stays positive, 0 and negative give 0, and the
// largest weight keeps (about) its share.
func TestScaleWeightsBounds(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 10_000 {
		milli := make([]int64, 1+r.IntN(5))
		limit := int64(1) << r.IntN(63)
		for i := range milli {
			milli[i] = r.Int64N(limit) - limit/10
		}
		got := scaleWeights(milli)
		var g int64
		for _, w := range milli {
			if w > 0 {
				g = gcd(g, w)
			}
		}
		top := slices.Max(milli)
		scaled := g > 0 && top/g > maxWireWeight
		for i, w := range got {
			switch {
			case w > maxWireWeight:
				t.Fatalf("scaleWeights(%v)[%d] = %d exceeds %d", milli, i, w, maxWireWeight)
			case milli[i] > 0 && w == 0:
				t.Fatalf("scaleWeights(%v)[%d] = 0 for a positive weight", milli, i)
			case milli[i] <= 0 && w != 0:
				t.Fatalf("scaleWeights(%v)[%d] = %d for weight %d", milli, i, w, milli[i])
			case milli[i] == top && scaled && w < maxWireWeight-1:
				t.Fatalf("scaleWeights(%v)[%d] = %d, want the largest weight scaled to about %d", milli, i, w, maxWireWeight)
			}
		}
	}
}
