package admin

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// AppProbes is the contract between the injector and the proxy for the application's own
// probes, which the injector rewrites to GET /app-probe/<container>/<kind> on the admin
// port. It is the JSON of the BRAID_APP_PROBES environment variable (the --app-probes
// flag) and of the pod's braid.dev/original-probes annotation: container name → probe
// kind ("liveness", "readiness" or "startup") → the probe the kubelet would have run.
//
//	{"web": {"readiness": {"httpGet": {"path": "/healthz", "port": 8080}, "timeoutSeconds": 2}}}
//
// Its field names are those of the Kubernetes Probe they come from; ports are numbers
// (the injector resolves named ports). The proxy runs each against the application's
// address (--app-host, 127.0.0.1 in a pod), where it forwards the application's traffic.
type AppProbes map[string]map[string]AppProbe

// AppProbe is one probe: exactly one of HTTPGet, GRPC and TCPSocket is set.
type AppProbe struct {
	HTTPGet   *HTTPGetProbe   `json:"httpGet,omitempty"`
	GRPC      *GRPCProbe      `json:"grpc,omitempty"`
	TCPSocket *TCPSocketProbe `json:"tcpSocket,omitempty"`
	// TimeoutSeconds bounds the probe; 1 when 0, as for the kubelet.
	TimeoutSeconds int32 `json:"timeoutSeconds,omitempty"`
}

// HTTPGetProbe succeeds on a status from 200 to 399; redirects are not followed.
type HTTPGetProbe struct {
	// Path is the request's path and query; "/" when empty.
	Path string `json:"path,omitempty"`
	Port int32  `json:"port"`
	// Scheme is HTTP (the default) or HTTPS; HTTPS certificates are not verified, as the
	// kubelet does not verify them either.
	Scheme      string       `json:"scheme,omitempty"`
	HTTPHeaders []HTTPHeader `json:"httpHeaders,omitempty"`
}

// HTTPHeader is a request header of an HTTP probe; a Host header sets the request's host.
type HTTPHeader struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// GRPCProbe succeeds when the gRPC health service answers SERVING for Service.
type GRPCProbe struct {
	Port    int32  `json:"port"`
	Service string `json:"service,omitempty"`
}

// TCPSocketProbe succeeds when a TCP connection opens.
type TCPSocketProbe struct {
	Port int32 `json:"port"`
}

// Probe kinds, the last element of /app-probe/<container>/<kind>.
const (
	ProbeLiveness  = "liveness"
	ProbeReadiness = "readiness"
	ProbeStartup   = "startup"
)

// AppProbePathPrefix is where the admin server answers the rewritten probes.
const AppProbePathPrefix = "/app-probe/"

// defaultAppHost is where the application listens, seen from the proxy in its pod.
const defaultAppHost = "127.0.0.1"

// Option adds to the admin handler.
type Option func(mux *http.ServeMux)

// WithAppProbes serves GET /app-probe/<container>/<kind>: it runs the application probe
// raw (the JSON of AppProbes) holds under that name and answers 200, or 503 with the
// reason, or 404 for a probe it does not hold. Raw empty serves nothing; raw that does not
// decode answers every probe 503 naming the error, so the pod's events show it. Probes run
// against appHost ("" for 127.0.0.1), the address the proxy forwards the application's
// traffic to.
func WithAppProbes(raw, appHost string) Option {
	return func(mux *http.ServeMux) {
		if raw == "" {
			return
		}
		var probes AppProbes
		if err := json.Unmarshal([]byte(raw), &probes); err != nil {
			msg := fmt.Sprintf("the proxy's --app-probes (BRAID_APP_PROBES) is not valid JSON: %v\n", err)
			mux.HandleFunc("GET "+AppProbePathPrefix+"{container}/{kind}", func(w http.ResponseWriter, _ *http.Request) {
				http.Error(w, msg, http.StatusServiceUnavailable)
			})
			return
		}
		mux.Handle("GET "+AppProbePathPrefix+"{container}/{kind}", NewAppProber(probes, appHost))
	}
}

// AppProber answers the rewritten application probes.
type AppProber struct {
	probes AppProbes
	host   string
	http   *http.Client
}

// NewAppProber returns the handler of /app-probe/{container}/{kind} for probes, which it
// runs against host ("" for 127.0.0.1).
func NewAppProber(probes AppProbes, host string) *AppProber {
	if host == "" {
		host = defaultAppHost
	}
	return &AppProber{probes: probes, host: host, http: &http.Client{
		Transport: &http.Transport{
			// Like the kubelet: no proxy from the environment, a new connection per probe,
			// no certificate verification.
			Proxy:             nil,
			DisableKeepAlives: true,
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

func (p *AppProber) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	container, kind := r.PathValue("container"), r.PathValue("kind")
	probe, ok := p.probes[container][kind]
	if !ok {
		http.Error(w, fmt.Sprintf("no %s probe for container %q", kind, container), http.StatusNotFound)
		return
	}
	timeout := time.Duration(max(probe.TimeoutSeconds, 1)) * time.Second
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	var err error
	switch {
	case probe.HTTPGet != nil:
		err = p.httpGet(ctx, probe.HTTPGet, r.UserAgent())
	case probe.GRPC != nil:
		err = grpcHealth(ctx, p.host, probe.GRPC)
	case probe.TCPSocket != nil:
		err = tcpDial(ctx, p.host, probe.TCPSocket.Port)
	default:
		err = errors.New("the probe has no httpGet, grpc or tcpSocket")
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = fmt.Fprintf(w, "%s probe of %s failed: %v\n", kind, container, err)
		return
	}
	_, _ = fmt.Fprintf(w, "%s probe of %s succeeded\n", kind, container)
}

func (p *AppProber) httpGet(ctx context.Context, probe *HTTPGetProbe, userAgent string) error {
	scheme := "http"
	if strings.EqualFold(probe.Scheme, "HTTPS") {
		scheme = "https"
	}
	path := probe.Path
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	u, err := url.Parse(scheme + "://" + net.JoinHostPort(p.host, strconv.Itoa(int(probe.Port))) + path)
	if err != nil {
		return fmt.Errorf("invalid path %q: %w", probe.Path, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), http.NoBody)
	if err != nil {
		return err
	}
	// The kubelet's defaults, which the probe's own headers override.
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set("Accept", "*/*")
	for _, h := range probe.HTTPHeaders {
		if strings.EqualFold(h.Name, "Host") {
			req.Host = h.Value
			continue
		}
		req.Header.Set(h.Name, h.Value)
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 10<<10))
	if resp.StatusCode < http.StatusOK || resp.StatusCode >= http.StatusBadRequest {
		return fmt.Errorf("HTTP GET %s answered %s", u.RequestURI(), resp.Status)
	}
	return nil
}

func grpcHealth(ctx context.Context, host string, probe *GRPCProbe) error {
	conn, err := grpc.NewClient("passthrough:///"+net.JoinHostPort(host, strconv.Itoa(int(probe.Port))),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: probe.Service})
	if err != nil {
		return fmt.Errorf("gRPC health check of service %q: %w", probe.Service, err)
	}
	if s := resp.GetStatus(); s != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("gRPC health check of service %q: %s", probe.Service, s)
	}
	return nil
}

func tcpDial(ctx context.Context, host string, port int32) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(int(port))))
	if err != nil {
		return err
	}
	return conn.Close()
}
