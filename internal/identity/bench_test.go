package identity_test

import (
	"testing"
	"time"

	"github.com/braidmesh/braid/internal/identity"
)

// BenchmarkSign signs one P-256 CSR per op through an intermediate, CheckCSR included:
// the cost of a workload certificate on the CA side. Run with -cpu 1 for one core; it also
// reports signatures/s (DESIGN.md budget: ≥ 2000 on one core).
func BenchmarkSign(b *testing.B) {
	p := defaultPKI(b)
	csr := newCSR(b, web)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := p.issuer.Sign(csr, web, t0, 24*time.Hour); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "signatures/s")
}

// BenchmarkCheckCSR is the CSR half of BenchmarkSign: parsing, checks and the signature.
func BenchmarkCheckCSR(b *testing.B) {
	csr := newCSR(b, web)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := identity.CheckCSR(csr, web); err != nil {
			b.Fatal(err)
		}
	}
}
