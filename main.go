// Command braid-operator is Braid's control plane: it watches SMI resources, Services and
// EndpointSlices, compiles them into proxy configuration and streams it to proxies.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/go-logr/logr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/braidmesh/braid/controllers"
	"github.com/braidmesh/braid/internal/ca"
	"github.com/braidmesh/braid/internal/configserver"
	"github.com/braidmesh/braid/internal/metricsapi"
	"github.com/braidmesh/braid/webhooks"
)

func main() {
	var (
		metricsAddr, probeAddr, configAddr string
		leaderElect                        bool
		debounce                           time.Duration
		webhookCertDir                     string
		identityAddr                       string
		webhookCerts                       string
		webhookPort                        int
		validatingWebhook, mutatingWebhook string
		configTLS                          string
		metricsAPIAddr, metricsAPIService  string
	)
	flag.StringVar(&configTLS, "config-server-tls", "auto", "serve the config stream over mTLS, authenticating each proxy by its workload certificate: on, off, or auto (on in a pod)")
	flag.StringVar(&identityAddr, "identity-server-address", ":15011", "address proxies get their certificates from (TLS, on every replica); 0 disables it")
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8080", "address of the metrics endpoint; 0 disables it")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	flag.StringVar(&configAddr, "config-server-address", ":15010", "address proxies stream their configuration from")
	flag.BoolVar(&leaderElect, "leader-elect", false, "run one active operator among replicas (lease braid-operator)")
	flag.StringVar(&webhookCertDir, "webhook-cert-dir", "", "a folder where OLM or cert-manager mounts the webhooks' tls.crt and tls.key (see --webhook-certs)")
	flag.StringVar(&webhookCerts, "webhook-certs", webhookCertsAuto, "the webhooks' serving certificate: self (the operator's own, from the mesh CA; it keeps the webhook configurations' caBundle), dir (from --webhook-cert-dir, caBundle left to whoever mounted it), off (no webhooks), auto (dir if --webhook-cert-dir holds tls.crt and tls.key, else self in a pod, else off)")
	flag.IntVar(&webhookPort, "webhook-port", 9443, "port the webhooks are served on, on every replica")
	flag.StringVar(&validatingWebhook, "validating-webhook-configuration", controllers.DefaultValidatingWebhookConfiguration, "ValidatingWebhookConfiguration whose caBundle the operator keeps with --webhook-certs=self; empty keeps none")
	flag.StringVar(&mutatingWebhook, "mutating-webhook-configuration", controllers.DefaultMutatingWebhookConfiguration, "MutatingWebhookConfiguration whose caBundle the operator keeps with --webhook-certs=self; empty keeps none")
	flag.StringVar(&metricsAPIAddr, "metrics-api-listen", ":9444", "address of the SMI TrafficMetrics API (metrics.smi-spec.io, served through the API server's aggregation layer, TLS with the operator's serving certificate); 0 disables it")
	flag.StringVar(&metricsAPIService, "metrics-apiservice", controllers.DefaultMetricsAPIService, "APIService of the TrafficMetrics API whose caBundle the operator keeps; empty keeps none")
	flag.DurationVar(&debounce, "config-debounce", 10*time.Millisecond, "how long a configuration change waits for others before proxies get it")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	log := zap.New(zap.UseFlagOptions(&zapOpts))
	ctrl.SetLogger(log)

	if err := run(ctrl.SetupSignalHandler(), log, options{
		metricsAddr: metricsAddr, probeAddr: probeAddr, configAddr: configAddr, leaderElect: leaderElect, debounce: debounce, webhookCertDir: webhookCertDir,
		identityAddr: identityAddr, webhookCerts: webhookCerts, webhookPort: webhookPort, configTLS: configTLS,
		metricsAPIAddr: metricsAPIAddr, metricsAPIService: metricsAPIService,
		caBundles: controllers.CABundleOptions{ValidatingWebhookConfiguration: validatingWebhook, MutatingWebhookConfiguration: mutatingWebhook},
	}); err != nil {
		log.Error(err, "Operator failed")
		os.Exit(1)
	}
}

type options struct {
	metricsAddr, probeAddr, configAddr string
	leaderElect                        bool
	debounce                           time.Duration
	webhookCertDir                     string
	identityAddr                       string
	webhookCerts                       string
	webhookPort                        int
	caBundles                          controllers.CABundleOptions
	configTLS                          string
	metricsAPIAddr, metricsAPIService  string
}

func run(ctx context.Context, log logr.Logger, o options) error {
	scheme, err := controllers.NewScheme()
	if err != nil {
		return err
	}
	srv := configserver.New(log.WithName("configserver"), configserver.Options{Debounce: o.debounce})
	if err := srv.RegisterMetrics(metrics.Registry); err != nil {
		return err
	}
	plan, err := planWebhooks(o.webhookCerts, o.webhookCertDir, configuredInCluster())
	if err != nil {
		return err
	}
	serving := newServingCert(log)
	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), ctrl.Options{
		Scheme: scheme,
		Cache:  controllers.CacheOptions(),
		Metrics: metricsserver.Options{
			BindAddress:   o.metricsAddr,
			ExtraHandlers: map[string]http.Handler{"/debug/proxies": srv.DebugHandler()},
		},
		HealthProbeBindAddress:        o.probeAddr,
		LeaderElection:                o.leaderElect,
		LeaderElectionID:              "braid-operator",
		LeaderElectionReleaseOnCancel: true,
		WebhookServer:                 webhook.NewServer(webhookServerOptions(plan, o.webhookPort, o.webhookCertDir, serving)),
	})
	if err != nil {
		return fmt.Errorf("creating the manager: %w", err)
	}
	if err := controllers.Setup(ctx, mgr, srv); err != nil {
		return err
	}
	holder, err := setupIdentity(mgr, o.identityAddr, srv, serving)
	if err != nil {
		return err
	}
	if err := setupWebhooks(ctx, log, mgr, plan, holder, o); err != nil {
		return err
	}
	if err := setupMetricsAPI(mgr, log, holder, serving, o); err != nil {
		return err
	}
	if err := secureConfigServer(log, srv, o, holder, serving); err != nil {
		return err
	}
	if err := mgr.Add(configServerRunnable(srv, o.configAddr)); err != nil {
		return fmt.Errorf("adding the config server: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return fmt.Errorf("adding the health check: %w", err)
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return fmt.Errorf("adding the readiness check: %w", err)
	}
	log.Info("Starting the operator")
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("running the manager: %w", err)
	}
	return nil
}

// configServerRunnable serves proxy configuration once this replica leads: only the
// leader's reconcilers fill the server, so a follower would hand proxies an empty mesh.
func configServerRunnable(srv *configserver.Server, addr string) manager.Runnable {
	return manager.RunnableFunc(func(ctx context.Context) error {
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("config server listener: %w", err)
		}
		return srv.Serve(ctx, lis)
	})
}

// setupMetricsAPI serves the SMI TrafficMetrics API with the operator's serving
// certificate, and keeps its APIService's caBundle, unless --metrics-api-listen is 0.
func setupMetricsAPI(mgr manager.Manager, log logr.Logger, holder *ca.Holder, serving *ca.ServingCert, o options) error {
	if o.metricsAPIAddr == "0" {
		log.Info("The SMI TrafficMetrics API is off (--metrics-api-listen 0)")
		return nil
	}
	if err := metricsapi.Setup(mgr, log.WithName("metrics-api"), o.metricsAPIAddr, serving.GetCertificate); err != nil {
		return err
	}
	return controllers.SetupCABundles(mgr, holder, controllers.CABundleOptions{APIService: o.metricsAPIService})
}

// setupWebhooks serves the validating and injecting webhooks as plan says, and keeps
// their configurations' caBundle when the operator's own certificate serves them.
func setupWebhooks(ctx context.Context, log logr.Logger, mgr manager.Manager, plan webhookPlan, holder *ca.Holder, o options) error {
	if plan.mode == webhookCertsOff {
		log.Info("Webhooks are off; invalid SMI objects are reported by their status conditions only, and pods get no sidecar", "reason", plan.reason)
		return nil
	}
	log.Info("Serving the webhooks", "certificate", plan.mode, "reason", plan.reason, "port", o.webhookPort)
	webhooks.Setup(mgr.GetWebhookServer())
	if err := webhooks.SetupInjector(ctx, mgr, webhooks.InjectorOptionsFromEnv()); err != nil {
		return err
	}
	if plan.mode == webhookCertsSelf {
		return controllers.SetupCABundles(mgr, holder, o.caBundles)
	}
	return nil
}
