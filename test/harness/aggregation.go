package harness

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// FrontProxyName is the common name of the API server's front proxy client certificate,
// the one name its requestheader-allowed-names admits.
const FrontProxyName = "front-proxy-client"

// FrontProxy is the API server's aggregation layer as the harness configures it: a
// requestheader client CA, the client certificate the API server presents to aggregated
// API servers, and the headers it names the user in (X-Remote-User, X-Remote-Group,
// X-Remote-Extra-). Aggregator routing is on, so an APIService's Service resolves through
// its EndpointSlices, which tests point at their own servers.
type FrontProxy struct {
	dir    string
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	CAPEM  []byte
	Client tls.Certificate // the API server's own front proxy certificate
}

// configureFrontProxy writes the front proxy's CA and certificate and sets the API
// server flags that use them.
func configureFrontProxy(env *envtest.Environment) (*FrontProxy, error) {
	dir, err := os.MkdirTemp("", "braid-front-proxy-")
	if err != nil {
		return nil, fmt.Errorf("front proxy folder: %w", err)
	}
	fp := &FrontProxy{dir: dir}
	if err := fp.init(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	args := env.ControlPlane.GetAPIServer().Configure()
	for k, v := range map[string]string{
		"requestheader-client-ca-file":       filepath.Join(dir, "ca.crt"),
		"proxy-client-cert-file":             filepath.Join(dir, "proxy.crt"),
		"proxy-client-key-file":              filepath.Join(dir, "proxy.key"),
		"requestheader-allowed-names":        FrontProxyName,
		"requestheader-username-headers":     "X-Remote-User",
		"requestheader-group-headers":        "X-Remote-Group",
		"requestheader-extra-headers-prefix": "X-Remote-Extra-",
		"enable-aggregator-routing":          "true",
	} {
		args.Set(k, v)
	}
	return fp, nil
}

func (fp *FrontProxy) init() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("front proxy CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "front-proxy-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("front proxy CA: %w", err)
	}
	if fp.ca, err = x509.ParseCertificate(der); err != nil {
		return err
	}
	fp.caKey = key
	fp.CAPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	certPEM, keyPEM, err := fp.issue(FrontProxyName, nil, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return err
	}
	if fp.Client, err = tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return err
	}
	for name, data := range map[string][]byte{"ca.crt": fp.CAPEM, "proxy.crt": certPEM, "proxy.key": keyPEM} {
		if err := os.WriteFile(filepath.Join(fp.dir, name), data, 0o600); err != nil {
			return fmt.Errorf("writing %s: %w", name, err)
		}
	}
	return nil
}

// issue signs a certificate for cn (and dnsNames) with the front proxy CA.
func (fp *FrontProxy) issue(cn string, dnsNames []string, usage x509.ExtKeyUsage) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn}, DNSNames: dnsNames,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, fp.ca, &key.PublicKey, fp.caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("signing %s: %w", cn, err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// ClientCert returns a client certificate signed by the front proxy CA for cn.
func (fp *FrontProxy) ClientCert(cn string) (tls.Certificate, error) {
	certPEM, keyPEM, err := fp.issue(cn, nil, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(certPEM, keyPEM)
}

// ServingCert returns a serving certificate for dnsNames, signed by the front proxy CA
// (a test's aggregated API server; the APIService's caBundle is then CAPEM).
func (fp *FrontProxy) ServingCert(dnsNames ...string) (tls.Certificate, error) {
	certPEM, keyPEM, err := fp.issue(dnsNames[0], dnsNames, x509.ExtKeyUsageServerAuth)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(certPEM, keyPEM)
}

// Close removes the front proxy's files.
func (fp *FrontProxy) Close() error {
	if fp == nil {
		return nil
	}
	return os.RemoveAll(fp.dir)
}

// APIServiceBackend is where an aggregated API is served from.
type APIServiceBackend struct {
	Group, Version     string
	Namespace, Service string
	// Addr is the server's address (not loopback: EndpointSlices refuse it).
	Addr     netip.AddrPort
	CABundle []byte
}

// RegisterAPIService creates the APIService v<Version>.<Group> pointing at Service
// Namespace/Service port 443, the Service (without selector) and its EndpointSlice at
// b.Addr, and waits until the API server reports it Available and serves its discovery
// (as cfg's user).
func RegisterAPIService(ctx context.Context, cfg *rest.Config, c client.Client, b APIServiceBackend) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: b.Namespace}}
	if err := c.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", b.Namespace, err)
	}
	port := int32(b.Addr.Port())
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: b.Namespace, Name: b.Service},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{
			Name: "metrics-api", Port: 443, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(port),
		}}},
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: b.Namespace, Name: b.Service + "-metrics-api", Labels: map[string]string{discoveryv1.LabelServiceName: b.Service}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{b.Addr.Addr().String()}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("metrics-api"), Port: &port, Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	apiService := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
		"metadata": map[string]any{"name": b.Version + "." + b.Group},
		"spec": map[string]any{
			"group": b.Group, "version": b.Version, "groupPriorityMinimum": int64(1000), "versionPriority": int64(100),
			"service":  map[string]any{"namespace": b.Namespace, "name": b.Service, "port": int64(443)},
			"caBundle": base64.StdEncoding.EncodeToString(b.CABundle),
		},
	}}
	for _, obj := range []client.Object{svc, slice, apiService} {
		if err := c.Create(ctx, obj); err != nil {
			return fmt.Errorf("creating %T %s: %w", obj, obj.GetName(), err)
		}
	}
	if err := waitAvailable(ctx, c, apiService); err != nil {
		return err
	}
	return waitServed(ctx, cfg, "/apis/"+b.Group+"/"+b.Version)
}

// waitServed waits until the API server answers path with a 200: the aggregator routes
// an APIService's paths a moment after it reports it Available.
func waitServed(ctx context.Context, cfg *rest.Config, path string) error {
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return fmt.Errorf("client for %s: %w", cfg.Host, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	last := "no answer"
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(cfg.Host, "/")+path, nil)
		if err != nil {
			return err
		}
		if resp, err := hc.Do(req); err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status + ": " + string(body)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the API server never served %s: %s", path, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func waitAvailable(ctx context.Context, c client.Client, apiService *unstructured.Unstructured) error {
	var last []metav1.Condition
	for {
		if err := c.Get(ctx, client.ObjectKeyFromObject(apiService), apiService); err == nil {
			last = conditionsOf(apiService)
			for _, cond := range last {
				if cond.Type == "Available" && cond.Status == metav1.ConditionTrue {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("APIService %s never became Available: %+v", apiService.GetName(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
