package inject

import (
	"cmp"
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// Where the proxy finds its token and the trust bundle.
const (
	TokenDir       = "/var/run/secrets/braid.dev/token"
	TokenFile      = TokenDir + "/token"
	TrustDir       = "/var/run/secrets/braid.dev/trust"
	TrustFile      = TrustDir + "/" + TrustBundleKey
	proxyBinary    = "/braid-proxy"
	initBinary     = "/braid-init" // in the proxy's image
	tokenLifetime  = 3600
	startupSeconds = 120
)

// AwaitCommand is the fallback proxy container's postStart hook: it returns once the proxy
// is ready (or fails after the timeout), and the kubelet starts the next container only
// then, so the application never starts before its proxy.
var AwaitCommand = []string{proxyBinary, "await", "--admin", "127.0.0.1:" + strconv.Itoa(AdminPort), "--timeout", strconv.Itoa(startupSeconds) + "s"}

// initContainer is braid-init: it redirects the pod's TCP to the proxy with nftables. It
// runs as root with NET_ADMIN and NET_RAW only, whatever user the pod asks for.
func initContainer(image string, s settings) corev1.Container {
	cmd := []string{initBinary,
		"--proxy-uid", strconv.Itoa(ProxyUID),
		"--inbound-port", strconv.Itoa(InboundPort),
		"--outbound-port", strconv.Itoa(OutboundPort),
		"--skip-inbound-ports", s.skipInboundPorts,
	}
	if s.skipOutboundPorts != "" {
		cmd = append(cmd, "--skip-outbound-ports", s.skipOutboundPorts)
	}
	if s.skipOutboundCIDRs != "" {
		cmd = append(cmd, "--skip-outbound-cidrs", s.skipOutboundCIDRs)
	}
	return corev1.Container{
		Name:                     InitContainer,
		Image:                    image,
		Command:                  cmd,
		Resources:                *s.resources.DeepCopy(),
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                ptr.To[int64](0),
			RunAsGroup:               ptr.To[int64](0),
			RunAsNonRoot:             ptr.To(false),
			Privileged:               ptr.To(false),
			AllowPrivilegeEscalation: ptr.To(false),
			ReadOnlyRootFilesystem:   ptr.To(true),
			Capabilities: &corev1.Capabilities{
				Add:  []corev1.Capability{"NET_ADMIN", "NET_RAW"},
				Drop: []corev1.Capability{"ALL"},
			},
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
}

// proxyContainer is braid-proxy: a native sidecar (an init container that keeps running)
// when the server has them, else a regular container whose postStart hook holds the
// application back until the proxy is ready.
func proxyContainer(in *Input, image string, s settings, appProbes string) corev1.Container {
	cp, id := OperatorAddresses(in.OperatorNamespace)
	controlPlane, identity := cmp.Or(in.ControlPlaneAddress, cp), cmp.Or(in.IdentityAddress, id)
	var logLevel int32
	if in.Mesh != nil {
		logLevel = in.Mesh.Proxy.LogLevel
	}
	env := []corev1.EnvVar{
		fieldEnv("POD_NAME", "metadata.name"),
		fieldEnv("POD_NAMESPACE", "metadata.namespace"),
		fieldEnv("POD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
		fieldEnv("POD_IP", "status.podIP"),
		{Name: "BRAID_CONTROL_PLANE", Value: controlPlane},
		{Name: "BRAID_IDENTITY_ADDRESS", Value: identity},
		// The operator serves the config stream over mTLS in a cluster: the proxy presents
		// its workload certificate there.
		{Name: "BRAID_CONTROL_PLANE_TLS", Value: "true"},
		{Name: "BRAID_TOKEN_FILE", Value: TokenFile},
		{Name: "BRAID_TRUST_BUNDLE_FILE", Value: TrustFile},
	}
	if appProbes != "" {
		env = append(env, corev1.EnvVar{Name: "BRAID_APP_PROBES", Value: appProbes})
	}
	c := corev1.Container{
		Name:    ProxyContainer,
		Image:   image,
		Command: []string{proxyBinary},
		Args: []string{
			fmt.Sprintf("--inbound-listen=0.0.0.0:%d", InboundPort),
			fmt.Sprintf("--outbound-listen=127.0.0.1:%d", OutboundPort),
			fmt.Sprintf("--admin-listen=0.0.0.0:%d", AdminPort),
			fmt.Sprintf("--v=%d", logLevel),
		},
		Ports: []corev1.ContainerPort{
			{Name: "braid-admin", ContainerPort: AdminPort, Protocol: corev1.ProtocolTCP},
			{Name: "braid-inbound", ContainerPort: InboundPort, Protocol: corev1.ProtocolTCP},
		},
		Env:       env,
		Resources: *s.resources.DeepCopy(),
		VolumeMounts: []corev1.VolumeMount{
			{Name: TokenVolume, MountPath: TokenDir, ReadOnly: true},
			{Name: TrustVolume, MountPath: TrustDir, ReadOnly: true},
		},
		// Ready once it has its configuration; the application's containers start after.
		StartupProbe:             adminProbe("/ready", 1, startupSeconds),
		LivenessProbe:            adminProbe("/live", 10, 3),
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                ptr.To[int64](ProxyUID),
			RunAsGroup:               ptr.To[int64](ProxyUID),
			RunAsNonRoot:             ptr.To(true),
			ReadOnlyRootFilesystem:   ptr.To(true),
			AllowPrivilegeEscalation: ptr.To(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
	if in.NativeSidecars {
		c.RestartPolicy = ptr.To(corev1.ContainerRestartPolicyAlways)
	} else {
		c.Lifecycle = &corev1.Lifecycle{PostStart: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: AwaitCommand}}}
	}
	return c
}

func adminProbe(path string, period, failures int32) *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(AdminPort), Scheme: corev1.URISchemeHTTP}},
		TimeoutSeconds:   1,
		PeriodSeconds:    period,
		SuccessThreshold: 1,
		FailureThreshold: failures,
	}
}

func fieldEnv(name, path string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
}

// volumes are the projected ServiceAccount token (audience braid) the proxy proves its
// identity with, and the trust bundle. The bundle's ConfigMap is optional: a pod created
// before the operator has published it in its namespace starts, and the kubelet fills the
// volume in once it exists.
func volumes() []corev1.Volume {
	return []corev1.Volume{
		{Name: TokenVolume, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
				Audience: TokenAudience, ExpirationSeconds: ptr.To[int64](tokenLifetime), Path: "token",
			}}},
		}}},
		{Name: TrustVolume, VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: TrustBundleConfigMap},
			Items:                []corev1.KeyToPath{{Key: TrustBundleKey, Path: TrustBundleKey}},
			Optional:             ptr.To(true),
		}}},
	}
}

// imageVersion is the tag or digest of an image reference; latest when it has neither.
func imageVersion(image string) string {
	if _, digest, ok := strings.Cut(image, "@"); ok {
		return digest
	}
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		return image[i+1:]
	}
	return "latest"
}
