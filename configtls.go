package main

import (
	"crypto/x509"
	"fmt"

	"github.com/go-logr/logr"

	"github.com/braidmesh/braid/internal/ca"
	"github.com/braidmesh/braid/internal/configserver"
)

// secureConfigServer serves the config stream over mTLS when --config-server-tls asks for
// it: the operator presents its serving certificate, and each proxy must present a
// workload certificate of the mesh naming the workload its Hello claims.
func secureConfigServer(log logr.Logger, srv *configserver.Server, o options, holder *ca.Holder, serving *ca.ServingCert) error {
	on, err := configTLSOn(o.configTLS, configuredInCluster())
	if err != nil {
		return err
	}
	if !on {
		log.Info("The config stream is plaintext: proxies are not authenticated (--config-server-tls)", "mode", o.configTLS)
		return nil
	}
	srv.UseTLS(configserver.ServerTLS(serving.GetCertificate, func() *x509.CertPool {
		st := holder.Load()
		if st == nil {
			return nil
		}
		pool := x509.NewCertPool()
		for _, r := range st.Roots {
			pool.AddCert(r)
		}
		return pool
	}))
	log.Info("The config stream is mTLS: each proxy is authenticated by its workload certificate")
	return nil
}

// configTLSOn decides --config-server-tls: auto is on in a pod, where proxies have
// workload certificates, and off elsewhere (a local run against a kubeconfig).
func configTLSOn(mode string, inCluster bool) (bool, error) {
	switch mode {
	case "on":
		return true, nil
	case "off":
		return false, nil
	case "auto":
		return inCluster, nil
	}
	return false, fmt.Errorf("--config-server-tls is on, off or auto, not %q", mode)
}
