package configserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/braidmesh/braid/proxy/api"
)

// authenticate checks, on a stream served over mTLS, that the proxy's verified
// certificate names the workload its Hello claims: a proxy gets the inbound policy and
// mesh configuration of its own identity only. Over plaintext (tests, and operators that
// turned TLS off) there is nothing to check.
func authenticate(ctx context.Context, hello *api.Hello) error {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil
	}
	chains := info.State.VerifiedChains
	if len(chains) == 0 || len(chains[0]) == 0 {
		return status.Error(codes.Unauthenticated, "the proxy presented no verified certificate")
	}
	ns, sa, err := workloadOf(chains[0][0])
	if err != nil {
		return status.Error(codes.Unauthenticated, err.Error())
	}
	if hello.GetNamespace() != ns || hello.GetServiceAccount() != sa {
		return status.Errorf(codes.PermissionDenied, "the proxy's certificate is for %s/%s, but its Hello claims %s/%s",
			ns, sa, hello.GetNamespace(), hello.GetServiceAccount())
	}
	return nil
}

// workloadOf reads namespace and ServiceAccount from a certificate's SPIFFE ID
// (spiffe://<td>/ns/<ns>/sa/<sa>).
func workloadOf(c *x509.Certificate) (namespace, serviceAccount string, err error) {
	for _, u := range c.URIs {
		if u.Scheme != "spiffe" {
			continue
		}
		parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
		if len(parts) == 4 && parts[0] == "ns" && parts[2] == "sa" && parts[1] != "" && parts[3] != "" {
			return parts[1], parts[3], nil
		}
		return "", "", fmt.Errorf("the certificate's SPIFFE ID %s names no workload", u)
	}
	return "", "", errors.New("the certificate carries no SPIFFE ID")
}

// ServerTLS returns the TLS configuration of an authenticated config server: it presents
// the certificate getCert returns and requires a client certificate chaining to the
// roots roots returns at the time of each handshake (they change during rotations).
func ServerTLS(getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error), roots func() *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: getCert,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			pool := roots()
			if pool == nil {
				return nil, errors.New("no trust bundle yet")
			}
			return &tls.Config{
				MinVersion: tls.VersionTLS13, GetCertificate: getCert, NextProtos: []string{"h2"},
				ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool,
			}, nil
		},
		NextProtos: []string{"h2"},
	}
}
