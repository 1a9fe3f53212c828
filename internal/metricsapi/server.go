package metricsapi

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/manager"
)

// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get
// +kubebuilder:rbac:groups="",resources=pods;namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=apps,resources=deployments;replicasets;daemonsets;statefulsets,verbs=get;list;watch
// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=get;list;watch
// +kubebuilder:rbac:groups=split.smi-spec.io,resources=trafficsplits,verbs=get;list;watch

// Server serves a Handler over TLS on every replica: the API server reaches the
// operator's Service, whichever replica answers.
type Server struct {
	// Listener, when set, is served instead of listening on Addr.
	Listener net.Listener
	Addr     string
	// GetCertificate returns the serving certificate at each handshake.
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	Handler        http.Handler
	Log            logr.Logger
}

// Start serves until ctx ends (a manager.Runnable).
func (s *Server) Start(ctx context.Context) error {
	lis := s.Listener
	if lis == nil {
		var err error
		if lis, err = net.Listen("tcp", s.Addr); err != nil {
			return fmt.Errorf("metrics API listener: %w", err)
		}
	}
	srv := &http.Server{
		Handler:           s.Handler,
		ReadHeaderTimeout: 10 * time.Second,
		// The front proxy's certificate is checked per request against the CA of the
		// moment (it can rotate), so the handshake asks for one without verifying it.
		TLSConfig: &tls.Config{GetCertificate: s.GetCertificate, ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS12},
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	s.Log.Info("Serving the SMI TrafficMetrics API", "address", lis.Addr().String())
	err := srv.ServeTLS(lis, "", "")
	<-done
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("serving the metrics API: %w", err)
}

// NeedLeaderElection is false: every replica serves.
func (s *Server) NeedLeaderElection() bool { return false }

// Setup serves the TrafficMetrics API on addr from the operator: pods and workloads from
// the manager's cache, the front proxy's CA from the API server, authorization by
// SubjectAccessReview.
func Setup(mgr manager.Manager, log logr.Logger, addr string, getCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)) error {
	h := NewHandler(Options{
		Reader:        mgr.GetClient(),
		Authenticator: &FrontProxy{Load: ConfigMapLoader(mgr.GetAPIReader()), Clock: clock.RealClock{}},
		Authorizer:    SubjectAccessReviews{Client: mgr.GetClient()},
		Log:           log,
	})
	if err := mgr.Add(&Server{Addr: addr, GetCertificate: getCertificate, Handler: h, Log: log}); err != nil {
		return fmt.Errorf("adding the metrics API server: %w", err)
	}
	return nil
}
