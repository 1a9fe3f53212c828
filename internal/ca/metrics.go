package ca

import (
	"crypto/x509"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/braidmesh/braid/internal/identity"
)

var expiryDesc = prometheus.NewDesc("braid_identity_certificate_expiry_timestamp_seconds",
	"When the certificate expires (Unix seconds), by certificate: root (each root of the trust bundle, by its SHA-256 fingerprint), issuer, serving (the operator's own).",
	[]string{"certificate", "fingerprint"}, nil)

// ExpiryCollector reports certificate expiry times, read at scrape time.
type ExpiryCollector struct {
	holder  *Holder
	serving *ServingCert
}

// NewExpiryCollector reports the expiry of holder's roots and issuer and of serving's
// certificate (serving may be nil).
func NewExpiryCollector(holder *Holder, serving *ServingCert) *ExpiryCollector {
	return &ExpiryCollector{holder: holder, serving: serving}
}

// Describe implements prometheus.Collector.
func (e *ExpiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- expiryDesc }

// Collect implements prometheus.Collector.
func (e *ExpiryCollector) Collect(ch chan<- prometheus.Metric) {
	emit := func(kind string, c *x509.Certificate) {
		ch <- prometheus.MustNewConstMetric(expiryDesc, prometheus.GaugeValue, float64(c.NotAfter.Unix()), kind, identity.Fingerprint(c))
	}
	if st := e.holder.Load(); st != nil {
		for _, r := range st.Roots {
			emit("root", r)
		}
		emit("issuer", st.Issuer.Issuing())
	}
	if e.serving != nil {
		if c := e.serving.Certificate(); c != nil && c.Leaf != nil {
			emit("serving", c.Leaf)
		}
	}
}
