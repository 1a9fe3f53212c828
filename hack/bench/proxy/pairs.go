package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/braidmesh/braid/internal/identity"
)

const (
	trustDomain = "cluster.local"
	namespace   = "bench"
	// service is the Service the client calls, by Host header, in every case.
	service = "target." + namespace
	// serverName is the DNS name in the nginx and haproxy certificates, which verify
	// their peer's name (braid verifies the peer's SPIFFE ID instead).
	serverName = "server.bench.local"
	// clientCore and serverCore are the cores the client and server proxies are pinned to.
	clientCore, serverCore = 0, 1
)

// pair is one case under test: where the load generator sends its requests, and the
// proxies in between (none for direct).
type pair struct {
	addr           string
	client, server *proc
	// clientAdmin and serverAdmin are braid's admin addresses (pprof), empty otherwise.
	clientAdmin, serverAdmin string
}

// procs are the client and server proxies of p, those started (none for direct).
func (p *pair) procs() []*proc {
	var out []*proc
	for _, q := range []*proc{p.client, p.server} {
		if q != nil {
			out = append(out, q)
		}
	}
	return out
}

// certs are the files of the benchmark's mesh CA (a root and an issuing intermediate,
// as the operator runs it): braid's workload certificates (SPIFFE ID only, as the
// operator issues them from a proxy's CSR) and, for nginx and haproxy, a certificate of
// the same CA that also carries serverName (the name they verify).
type certs struct {
	braidClient, braidServer []string // braid-proxy flags
	bundle                   string   // the root, PEM
	// chain and key PEM files for nginx (separate) and haproxy (one file)
	peerCert, peerKey, peerPEM string
}

func writeCerts(dir string) (*certs, error) {
	now := time.Now()
	root, err := identity.NewRoot(trustDomain, now, 24*time.Hour)
	if err != nil {
		return nil, err
	}
	inter, err := identity.NewIntermediate(root, trustDomain, now, 12*time.Hour)
	if err != nil {
		return nil, err
	}
	issuer, err := identity.NewIssuer(inter, nil, []*x509.Certificate{root.Cert}, trustDomain, now)
	if err != nil {
		return nil, err
	}
	c := &certs{bundle: filepath.Join(dir, "ca.crt")}
	files := map[string][]byte{c.bundle: identity.BundlePEM(root.Cert)}
	for sa, args := range map[string]*[]string{"client": &c.braidClient, "server": &c.braidServer} {
		id := identity.ID{TrustDomain: trustDomain, Namespace: namespace, ServiceAccount: sa}
		csr, key, err := identity.NewCSR(id)
		if err != nil {
			return nil, err
		}
		chain, _, err := issuer.Sign(csr, id, now, 2*time.Hour)
		if err != nil {
			return nil, err
		}
		keyPEM, err := keyPEM(key)
		if err != nil {
			return nil, err
		}
		crt, k := filepath.Join(dir, "braid-"+sa+".crt"), filepath.Join(dir, "braid-"+sa+".key")
		files[crt], files[k] = chain, keyPEM
		*args = []string{"--cert-file", crt, "--key-file", k, "--trust-bundle-file", c.bundle}
	}
	// One certificate for both ends of the nginx and haproxy pairs: ServerAuth and
	// ClientAuth, the URI SAN spiffe://cluster.local/ns/bench/sa/peer and serverName.
	id := identity.ID{TrustDomain: trustDomain, Namespace: namespace, ServiceAccount: "peer"}
	tc, err := issuer.SignServing(id, []string{serverName}, now, 2*time.Hour)
	if err != nil {
		return nil, err
	}
	var chain []byte
	for _, der := range tc.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	key, err := keyPEM(tc.PrivateKey)
	if err != nil {
		return nil, err
	}
	c.peerCert, c.peerKey, c.peerPEM = filepath.Join(dir, "peer.crt"), filepath.Join(dir, "peer.key"), filepath.Join(dir, "peer.pem")
	files[c.peerCert], files[c.peerKey], files[c.peerPEM] = chain, key, append(append([]byte{}, chain...), key...)
	for path, data := range files {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func keyPEM(key any) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// env is what every case needs.
type env struct {
	dir      string
	ps       *procs
	certs    *certs
	proxyBin string
	backend  string // host:port of the backend
	backendP *proc
	services int // Services in braid's client config
	// configFormat is the format of braid's client config file: json or yaml.
	configFormat string
}

// startCase starts the pair of the named case and checks that a request crosses it.
func (e *env) startCase(ctx context.Context, name string) (*pair, error) {
	var p *pair
	var err error
	switch name {
	case "direct":
		p = &pair{addr: e.backend}
	case "braid":
		p, err = e.startBraid()
	case "nginx":
		p, err = e.startNginx()
	case "haproxy":
		p, err = e.startHAProxy()
	default:
		return nil, fmt.Errorf("unknown case %q", name)
	}
	if err != nil {
		if p != nil {
			e.stopCase(p)
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := checkRequest(ctx, p.addr); err != nil {
		e.stopCase(p)
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return p, nil
}

func (e *env) stopCase(p *pair) {
	for _, q := range p.procs() {
		e.ps.stop(q)
	}
}

// checkRequest sends one request through addr and checks the backend's answer.
func checkRequest(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	var last error
	for ctx.Err() == nil {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/echo?size=1024", nil)
		if err != nil {
			return err
		}
		req.Host = service
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK && len(body) == 1024 {
				return nil
			}
			err = fmt.Errorf("status %d, %d bytes: %.200q", resp.StatusCode, len(body), body)
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("no good answer through %s: %w", addr, errors.Join(last, ctx.Err()))
}

// braidClientConfig is the client proxy's configuration: the Service used plus
// services-1 others, each with a cluster IP and two meshed endpoints, never called.
func braidClientConfig(services int, backend, inbound string) string {
	host, port, _ := strings.Cut(backend, ":")
	_, inPort, _ := strings.Cut(inbound, ":")
	var b strings.Builder
	b.WriteString("version: 1\ninbound: {mode: Strict}\nservices:\n")
	svc := func(name, clusterIP, endpoints string) {
		fmt.Fprintf(&b, `- namespace: %s
  name: %s
  clusterIps: [%s]
  ports:
  - name: http
    port: 80
    protocol: PROTOCOL_HTTP1
    routes:
    - backends:
      - service: %s
        weight: 1
        endpoints:
%s`, namespace, name, clusterIP, name, endpoints)
	}
	svc("target", "10.96.0.1", fmt.Sprintf("        - {ip: %s, port: %s, identity: \"spiffe://%s/ns/%s/sa/server\", proxyPort: %s}\n",
		host, port, trustDomain, namespace, inPort))
	for i := 1; i < services; i++ {
		ep := func(j int) string {
			return fmt.Sprintf("        - {ip: 10.244.%d.%d, port: 8080, identity: \"spiffe://%s/ns/%s/sa/svc-%04d\", proxyPort: 15006}\n",
				(2*i+j)/250, (2*i+j)%250+1, trustDomain, namespace, i)
		}
		svc(fmt.Sprintf("svc-%04d", i), fmt.Sprintf("10.96.%d.%d", i/250+1, i%250+1), ep(0)+ep(1))
	}
	return b.String()
}

// startBraid starts a braid-proxy pair: the client (standalone, the Services) routes
// over mTLS to the server's inbound listener, which admits the client's SPIFFE ID
// (Strict mode, one grant) and forwards to the backend.
func (e *env) startBraid() (*pair, error) {
	addrs, err := freePorts(6)
	if err != nil {
		return nil, err
	}
	p := &pair{addr: addrs[0], clientAdmin: addrs[1], serverAdmin: addrs[3]}
	inbound := addrs[5]
	serverCfg := filepath.Join(e.dir, "braid-server.yaml")
	grant := fmt.Sprintf(`version: 1
inbound:
  mode: Strict
  authorizations:
  - name: %s/bench
    sources: ["spiffe://%s/ns/%s/sa/client"]
    anyRequest: true
`, namespace, trustDomain, namespace)
	clientCfg := filepath.Join(e.dir, "braid-client."+e.configFormat)
	client := []byte(braidClientConfig(e.services, e.backend, inbound))
	if e.configFormat == "json" {
		if client, err = yaml.YAMLToJSON(client); err != nil {
			return nil, err
		}
	}
	if err := errors.Join(os.WriteFile(serverCfg, []byte(grant), 0o600), os.WriteFile(clientCfg, client, 0o600)); err != nil {
		return nil, err
	}
	// One core each, so one P each.
	gomaxprocs := []string{"GOMAXPROCS=1"}
	args := func(cfg, outbound, admin string, certArgs []string) []string {
		return append([]string{"run", "--config", cfg, "--namespace", namespace,
			"--outbound-listen", outbound, "--admin-listen", admin, "--drain-timeout", "2s"}, certArgs...)
	}
	if p.server, err = e.ps.start("braid-server", serverCore, gomaxprocs, e.proxyBin,
		append(args(serverCfg, addrs[2], addrs[3], e.certs.braidServer), "--inbound-listen", inbound)...); err != nil {
		return p, err
	}
	if err := waitTCP(p.server, inbound); err != nil {
		return p, err
	}
	if p.client, err = e.ps.start("braid-client", clientCore, gomaxprocs, e.proxyBin,
		args(clientCfg, addrs[0], addrs[1], e.certs.braidClient)...); err != nil {
		return p, err
	}
	return p, waitTCP(p.client, addrs[0])
}

// nginxConf is the configuration of one nginx of the pair: one worker, no access log,
// keep-alive on both sides (and no limit of requests per connection, which would only
// add reconnections), TLS 1.3 only.
func nginxConf(dir, server string) string {
	return fmt.Sprintf(`user root;
worker_processes 1;
daemon off;
master_process on;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
%[2]s}
`, dir, server)
}

// startNginx starts the nginx pair: the client terminates plaintext HTTP/1.1 and proxies
// over mTLS (its certificate, the peer's verified against the mesh root and serverName)
// with a keep-alive pool; the server requires and verifies the client's certificate and
// proxies to the backend with a keep-alive pool.
func (e *env) startNginx() (*pair, error) {
	addrs, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	p := &pair{addr: addrs[0]}
	c := e.certs
	server := fmt.Sprintf(`  upstream app { server %s; keepalive 64; keepalive_requests 100000000; keepalive_timeout 300s; }
  server {
    listen %s ssl;
    ssl_protocols TLSv1.3;
    ssl_certificate %s;
    ssl_certificate_key %s;
    ssl_client_certificate %s;
    ssl_verify_client on;
    ssl_verify_depth 2;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
`, e.backend, addrs[1], c.peerCert, c.peerKey, c.bundle)
	client := fmt.Sprintf(`  upstream mesh { server %s; keepalive 64; keepalive_requests 100000000; keepalive_timeout 300s; }
  server {
    listen %s;
    location / {
      proxy_pass https://mesh;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_certificate %s;
      proxy_ssl_certificate_key %s;
      proxy_ssl_trusted_certificate %s;
      proxy_ssl_verify on;
      proxy_ssl_verify_depth 2;
      proxy_ssl_name %s;
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
    }
  }
`, addrs[1], addrs[0], c.peerCert, c.peerKey, c.bundle, serverName)
	for _, side := range []struct {
		name, conf, listen string
		core               int
		proc               **proc
	}{{"nginx-server", server, addrs[1], serverCore, &p.server}, {"nginx-client", client, addrs[0], clientCore, &p.client}} {
		dir := filepath.Join(e.dir, side.name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return p, err
		}
		conf := filepath.Join(dir, "nginx.conf")
		if err := os.WriteFile(conf, []byte(nginxConf(dir, side.conf)), 0o644); err != nil {
			return p, err
		}
		if *side.proc, err = e.ps.start(side.name, side.core, nil, "nginx", "-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log")); err != nil {
			return p, err
		}
		if err := waitTCP(*side.proc, side.listen); err != nil {
			return p, err
		}
	}
	return p, nil
}

// haproxyConf is one haproxy of the pair: one thread, HTTP mode with keep-alive on both
// sides and server connections reused across client connections, no logs.
func haproxyConf(frontend, backend string) string {
	return fmt.Sprintf(`global
  nbthread 1
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
frontend fe
%s  default_backend be
backend be
%s`, frontend, backend)
}

// startHAProxy starts the haproxy pair, configured like the nginx pair: mTLS 1.3 with
// the same certificates, both ends verifying the other.
func (e *env) startHAProxy() (*pair, error) {
	addrs, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	p := &pair{addr: addrs[0]}
	c := e.certs
	server := haproxyConf(
		fmt.Sprintf("  bind %s ssl crt %s ca-file %s verify required ssl-min-ver TLSv1.3\n", addrs[1], c.peerPEM, c.bundle),
		fmt.Sprintf("  server app %s\n", e.backend))
	client := haproxyConf(
		fmt.Sprintf("  bind %s\n", addrs[0]),
		fmt.Sprintf("  server mesh %s ssl crt %s ca-file %s verify required verifyhost %s sni str(%s) ssl-min-ver TLSv1.3\n",
			addrs[1], c.peerPEM, c.bundle, serverName, serverName))
	for _, side := range []struct {
		name, conf, listen string
		core               int
		proc               **proc
	}{{"haproxy-server", server, addrs[1], serverCore, &p.server}, {"haproxy-client", client, addrs[0], clientCore, &p.client}} {
		conf := filepath.Join(e.dir, side.name+".cfg")
		if err := os.WriteFile(conf, []byte(side.conf), 0o644); err != nil {
			return p, err
		}
		if *side.proc, err = e.ps.start(side.name, side.core, nil, "haproxy", "-db", "-f", conf); err != nil {
			return p, err
		}
		if err := waitTCP(*side.proc, side.listen); err != nil {
			return p, err
		}
	}
	return p, nil
}
