package configserver

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/prometheus/client_golang/prometheus"
)

// DebugHandler serves the connected proxies as a table: identity, versions and state
// (SYNCED, STALE or REJECTED), the root their certificate chains to (the first 8 bytes
// of its SHA-256 fingerprint), how many Services its workload may not reach (sent as
// denied stubs), with the error of a rejected version.
func (s *Server) DebugHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		version := s.Version()
		proxies := s.Proxies()
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		_, _ = fmt.Fprintf(tw, "config version %d, %d proxies connected\n\n", version, len(proxies))
		_, _ = fmt.Fprintln(tw, "PROXY\tNAMESPACE\tSERVICE ACCOUNT\tSENT\tACKED\tSTATE\tDENIED\tCERT ROOT\tCONNECTED\tERROR")
		for _, p := range proxies {
			_, _ = fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%d\t%s\t%s\t%s\n", p.ID, p.Namespace, p.ServiceAccount,
				p.Sent, p.Acked, p.State(), p.Denied, shortFingerprint(p.CertificateRoot), p.Connected.UTC().Format("2006-01-02T15:04:05Z"), problem(p))
		}
		_ = tw.Flush()
	})
}

// RegisterMetrics registers the config server's metrics: the current version, the
// connected proxies by state, and the rejections proxies reported. Labels are bounded:
// no proxy, namespace or service names.
func (s *Server) RegisterMetrics(reg prometheus.Registerer) error {
	collectors := []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "braid_config_version", Help: "The configuration version the operator serves.",
		}, func() float64 { return float64(s.Version()) }),
		s.rejections,
	}
	for _, state := range []string{"SYNCED", "STALE", "REJECTED", "PARTIAL"} {
		collectors = append(collectors, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "braid_config_proxies", Help: "Connected proxies by the state of their configuration.",
			ConstLabels: prometheus.Labels{"state": state},
		}, func() float64 { return float64(s.countState(state)) }))
	}
	for _, c := range collectors {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("registering config server metrics: %w", err)
		}
	}
	return nil
}

func (s *Server) countState(state string) int {
	n := 0
	for _, p := range s.Proxies() {
		if p.State() == state {
			n++
		}
	}
	return n
}

// shortFingerprint is the first 8 bytes of a colon-separated fingerprint, "-" for none.
func shortFingerprint(fp string) string {
	switch {
	case fp == "":
		return "-"
	case len(fp) > 23:
		return fp[:23]
	}
	return fp
}

// problem is what a proxy could not apply: its NACK, or the Services it rejected.
func problem(p ProxyStatus) string {
	if p.Nack != "" || len(p.RejectedServices) == 0 {
		return p.Nack
	}
	parts := make([]string, 0, len(p.RejectedServices))
	for _, k := range slices.Sorted(maps.Keys(p.RejectedServices)) {
		parts = append(parts, k+": "+p.RejectedServices[k])
	}
	return "rejected Services: " + strings.Join(parts, "; ")
}
