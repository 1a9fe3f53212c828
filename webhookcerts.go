package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/braidmesh/braid/internal/ca"
)

// Where the webhook server's certificate comes from (--webhook-certs).
const (
	// webhookCertsAuto picks dir when --webhook-cert-dir holds a certificate, self when
	// the operator runs in the cluster it serves, off otherwise.
	webhookCertsAuto = "auto"
	// webhookCertsSelf serves the operator's own serving certificate, signed in memory
	// by the mesh CA, and keeps the webhook configurations' caBundle.
	webhookCertsSelf = "self"
	// webhookCertsDir serves tls.crt and tls.key from --webhook-cert-dir, reloaded when
	// they change, and leaves the caBundle to whoever wrote them (OLM, cert-manager).
	webhookCertsDir = "dir"
	// webhookCertsOff serves no webhooks.
	webhookCertsOff = "off"
)

// webhookCertFiles are the names controller-runtime's webhook server reads in CertDir:
// the names OLM and cert-manager Secrets mount.
var webhookCertFiles = []string{"tls.crt", "tls.key"}

// webhookPlan is how the webhooks are served, and why.
type webhookPlan struct {
	mode   string // self, dir or off
	reason string
}

// planWebhooks resolves --webhook-certs. inCluster says the operator reaches the API
// server through its in-cluster ServiceAccount, that is, runs in a pod of the cluster
// whose API server calls its webhooks. The operator never writes into dir, so files
// found there were put there by someone else (a mounted Secret).
func planWebhooks(mode, dir string, inCluster bool) (webhookPlan, error) {
	haveFiles := dir != "" && filesExist(dir, webhookCertFiles)
	switch mode {
	case webhookCertsSelf:
		return webhookPlan{webhookCertsSelf, "--webhook-certs=self"}, nil
	case webhookCertsOff:
		return webhookPlan{webhookCertsOff, "--webhook-certs=off"}, nil
	case webhookCertsDir:
		if !haveFiles {
			return webhookPlan{}, fmt.Errorf("--webhook-certs=dir: --webhook-cert-dir %q holds no tls.crt and tls.key", dir)
		}
		return webhookPlan{webhookCertsDir, "--webhook-certs=dir"}, nil
	case webhookCertsAuto:
	default:
		return webhookPlan{}, fmt.Errorf("--webhook-certs %q: want auto, self, dir or off", mode)
	}
	switch {
	case haveFiles:
		return webhookPlan{webhookCertsDir, "--webhook-cert-dir holds tls.crt and tls.key (mounted by OLM or cert-manager)"}, nil
	case inCluster:
		return webhookPlan{webhookCertsSelf, "the operator runs in the cluster and no certificate is mounted"}, nil
	default:
		return webhookPlan{webhookCertsOff, "the operator runs outside the cluster (a kubeconfig): the API server could not call it; --webhook-certs=self serves them anyway"}, nil
	}
}

func filesExist(dir string, names []string) bool {
	for _, n := range names {
		if fi, err := os.Stat(filepath.Join(dir, n)); err != nil || fi.IsDir() {
			return false
		}
	}
	return true
}

// configuredInCluster reports whether controller-runtime takes the in-cluster config:
// no --kubeconfig, no KUBECONFIG, and a pod's ServiceAccount mounted.
func configuredInCluster() bool {
	if f := flag.Lookup("kubeconfig"); f != nil && f.Value.String() != "" {
		return false
	}
	if os.Getenv("KUBECONFIG") != "" {
		return false
	}
	_, err := rest.InClusterConfig()
	return err == nil
}

// webhookServerOptions are the webhook server's options for plan: the certificate from
// serving (self) or from the files in dir (dir).
func webhookServerOptions(plan webhookPlan, port int, dir string, serving *ca.ServingCert) webhook.Options {
	o := webhook.Options{Port: port}
	switch plan.mode {
	case webhookCertsSelf:
		o.TLSOpts = []func(*tls.Config){serving.ConfigureTLS}
	case webhookCertsDir:
		o.CertDir = dir
	}
	return o
}
