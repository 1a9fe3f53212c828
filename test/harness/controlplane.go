// Package harness runs Braid's parts for real, for the end-to-end tests and the local
// demo: an envtest API server and etcd with Braid's CRDs, the operator's manager and
// config server in-process, backend HTTP servers on loopback addresses, and braid-proxy
// as a separate process.
package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"runtime"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/braidmesh/braid/controllers"
	"github.com/braidmesh/braid/internal/configserver"
	"github.com/braidmesh/braid/webhooks"
)

// RepoRoot is the repository's top folder, found from this source file.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// ControlPlane is a running API server with Braid's CRDs and the operator in-process.
type ControlPlane struct {
	Env        *envtest.Environment
	RestConfig *rest.Config
	// Client reads straight from the API server (no cache), as a user's kubectl would.
	Client client.Client
	// ConfigServer is the operator's config server; ConfigAddr is where it listens.
	ConfigServer *configserver.Server
	ConfigAddr   string
	// FrontProxy is the API server's aggregation layer (aggregation.go).
	FrontProxy *FrontProxy

	cancel context.CancelFunc
	done   chan error
}

// StartControlPlane starts etcd and kube-apiserver (from KUBEBUILDER_ASSETS), installs
// Braid's CRDs and the standard Gateway API CRDs, and runs the operator's reconcilers and
// config server until Stop. The config server pushes changes after a 5 ms debounce window.
func StartControlPlane(ctx context.Context, log logr.Logger) (cp *ControlPlane, err error) {
	return StartControlPlaneWith(ctx, log, Options{ConfigServer: configserver.Options{Debounce: 5 * time.Millisecond}})
}

// Options vary the control plane.
type Options struct {
	ConfigServer configserver.Options
	// Webhooks installs Braid's validating webhook configuration and serves the webhooks
	// from the operator, as a cluster with Braid installed does. Off, objects the webhooks
	// would refuse reach the reconcilers, as they do while the operator is down.
	Webhooks bool
}

// StartControlPlaneWith is StartControlPlane with options.
func StartControlPlaneWith(ctx context.Context, log logr.Logger, opts Options) (cp *ControlPlane, err error) {
	ctrl.SetLogger(log)
	root := RepoRoot()
	gatewayCRDs, err := GatewayAPICRDs()
	if err != nil {
		return nil, err
	}
	env := &envtest.Environment{
		CRDDirectoryPaths: []string{
			filepath.Join(root, "config", "crd", "bases"),
			filepath.Join(root, "config", "crd", "smi"),
			gatewayCRDs,
		},
		ErrorIfCRDPathMissing: true,
	}
	if opts.Webhooks {
		env.WebhookInstallOptions.Paths = []string{filepath.Join(root, "config", "webhook", "manifests.yaml")}
	}
	// envtest's default service range is a /24; benchmarks need thousands of Services.
	env.ControlPlane.GetAPIServer().Configure().Set("service-cluster-ip-range", "10.96.0.0/12")
	if InIsolatedNetwork() {
		// The isolated network has no default route for the API server to pick its
		// advertised address from.
		env.ControlPlane.GetAPIServer().Configure().Set("advertise-address", MeshAddr(1))
	}
	frontProxy, err := configureFrontProxy(env)
	if err != nil {
		return nil, err
	}
	cfg, err := env.Start()
	if err != nil {
		_ = frontProxy.Close()
		return nil, fmt.Errorf("starting the API server (is KUBEBUILDER_ASSETS set? 'make envtest-assets' prints it): %w", err)
	}
	cp = &ControlPlane{Env: env, RestConfig: cfg, FrontProxy: frontProxy, done: make(chan error, 1)}
	defer func() {
		if err != nil {
			_ = env.Stop()
			_ = frontProxy.Close()
		}
	}()
	scheme, err := controllers.NewScheme()
	if err != nil {
		return nil, err
	}
	if cp.Client, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		return nil, fmt.Errorf("creating a client: %w", err)
	}
	wh := env.WebhookInstallOptions
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Cache:                  controllers.CacheOptions(),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		WebhookServer:          webhook.NewServer(webhook.Options{Host: wh.LocalServingHost, Port: wh.LocalServingPort, CertDir: wh.LocalServingCertDir}),
	})
	if err != nil {
		return nil, fmt.Errorf("creating the manager: %w", err)
	}
	cp.ConfigServer = configserver.New(log.WithName("configserver"), opts.ConfigServer)
	mctx, cancel := context.WithCancel(ctx)
	cp.cancel = cancel
	if err := controllers.Setup(mctx, mgr, cp.ConfigServer); err != nil {
		cancel()
		return nil, err
	}
	if opts.Webhooks {
		webhooks.Setup(mgr.GetWebhookServer())
		// The pod injector is installed with the other webhooks (failurePolicy Fail): it
		// must be served, or every pod creation would be refused.
		if err := webhooks.SetupInjector(mctx, mgr, webhooks.InjectorOptions{OperatorNamespace: "braid-system", DefaultProxyImage: "braid-proxy:dev"}); err != nil {
			cancel()
			return nil, err
		}
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		return nil, fmt.Errorf("config server listener: %w", err)
	}
	cp.ConfigAddr = lis.Addr().String()
	go func() {
		errs := make(chan error, 1)
		go func() { errs <- cp.ConfigServer.Serve(mctx, lis) }()
		cp.done <- errors.Join(mgr.Start(mctx), <-errs)
	}()
	return cp, nil
}

// Stop stops the operator, then the API server and etcd.
func (cp *ControlPlane) Stop() error {
	cp.cancel()
	err := <-cp.done
	return errors.Join(err, cp.Env.Stop(), cp.FrontProxy.Close())
}
