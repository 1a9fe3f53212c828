package clusterkit

import "fmt"

// Images of the demo and e2e workloads; make images builds them, braid up imports them.
const (
	DemoImage = "braid.local/demo-app:dev"
)

// Workloads is the demo: in namespace ns (labelled braid.dev/inject=enabled), reviews v1
// and v2 behind the apex Service reviews and their own Services reviews-v1 and
// reviews-v2, and a frontend that calls http://reviews:8080/.
func Workloads(ns string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: %[1]s
  labels:
    braid.dev/inject: enabled
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: frontend, namespace: %[1]s}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: reviews, namespace: %[1]s}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: %[1]s}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 8080, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v1, namespace: %[1]s}
spec:
  selector: {app: reviews, version: v1}
  ports: [{name: http, port: 8080, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2, namespace: %[1]s}
spec:
  selector: {app: reviews, version: v2}
  ports: [{name: http, port: 8080, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: frontend, namespace: %[1]s}
spec:
  selector: {app: frontend}
  ports: [{name: http, port: 8080, targetPort: 8080}]
%[2]s
%[3]s
%[4]s`, ns,
		deployment(ns, "reviews-v1", "reviews", "v1", "reviews", ""),
		deployment(ns, "reviews-v2", "reviews", "v2", "reviews", ""),
		deployment(ns, "frontend", "frontend", "v1", "frontend", "http://reviews:8080/"))
}

func deployment(ns, name, app, version, sa, upstream string) string {
	return fmt.Sprintf(`---
apiVersion: apps/v1
kind: Deployment
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  replicas: 1
  selector:
    matchLabels: {app: %[3]s, version: %[4]s}
  template:
    metadata:
      labels: {app: %[3]s, version: %[4]s}
    spec:
%[5]s`, ns, name, app, version, podSpec(sa, app, version,
		fmt.Sprintf("            - {name: UPSTREAM, value: %q}\n", upstream), "",
		`          readinessProbe:
            httpGet: {path: /healthz, port: 8080}
            periodSeconds: 1
`))
}

// ReviewsAccess is an HTTPRouteGroup admitting every request and a TrafficTarget that
// lets only ServiceAccount source of ns call reviews' pods.
func ReviewsAccess(ns, source string) string {
	return fmt.Sprintf(`apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: reviews-all, namespace: %[1]s}
spec:
  matches: [{name: all, pathRegex: ".*", methods: ["*"]}]
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: reviews, namespace: %[1]s}
spec:
  destination: {kind: ServiceAccount, name: reviews, namespace: %[1]s}
  rules: [{kind: HTTPRouteGroup, name: reviews-all, matches: [all]}]
  sources: [{kind: ServiceAccount, name: %[2]s, namespace: %[1]s}]
`, ns, source)
}

// TrafficSplit is the canary of reviews: weights for reviews-v1 and reviews-v2.
func TrafficSplit(ns string, v1, v2 int) string {
	return fmt.Sprintf(`apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: reviews, namespace: %s}
spec:
  service: reviews
  backends:
    - {service: reviews-v1, weight: %d}
    - {service: reviews-v2, weight: %d}
`, ns, v1, v2)
}

// podSpec is the demo app's pod template spec (restricted security context) with extra
// environment, ports and probes, each a YAML fragment indented for its place.
func podSpec(sa, app, version, env, ports, probes string) string {
	return fmt.Sprintf(`      serviceAccountName: %[1]s
      terminationGracePeriodSeconds: 2
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        seccompProfile: {type: RuntimeDefault}
      containers:
        - name: app
          image: %[7]s
          imagePullPolicy: IfNotPresent
          env:
            - {name: SERVICE, value: %[2]s}
            - {name: VERSION, value: %[3]s}
            - name: POD_NAME
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
%[4]s          ports:
            - {name: http, containerPort: 8080}
%[5]s%[6]s          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: [ALL]}
`, sa, app, version, env, ports, probes, DemoImage)
}

// OptedOut is a Deployment of the demo app in ns whose pods are annotated
// braid.dev/inject: disabled.
func OptedOut(ns string) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: opted-out, namespace: %[1]s}
spec:
  replicas: 1
  selector:
    matchLabels: {app: opted-out}
  template:
    metadata:
      labels: {app: opted-out}
      annotations: {braid.dev/inject: disabled}
    spec:
%[2]s`, ns, podSpec("default", "opted-out", "v1", "", "", `          readinessProbe:
            httpGet: {path: /healthz, port: 8080}
            periodSeconds: 1
`))
}

// Probes is a meshed Deployment of the demo app with a probe of every kind the injector
// rewrites: an httpGet readiness probe (on the named port http), a tcpSocket liveness
// probe and a grpc startup probe (the app's grpc.health.v1 server on 9090).
func Probes(ns string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: ServiceAccount
metadata: {name: probes, namespace: %[1]s}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: probes, namespace: %[1]s}
spec:
  replicas: 1
  selector:
    matchLabels: {app: probes}
  template:
    metadata:
      labels: {app: probes}
    spec:
%[2]s`, ns, podSpec("probes", "probes", "v1",
		`            - {name: GRPC_LISTEN, value: ":9090"}
`, `            - {name: grpc, containerPort: 9090}
`, `          readinessProbe:
            httpGet: {path: /healthz, port: http}
            periodSeconds: 1
          livenessProbe:
            tcpSocket: {port: 8080}
            periodSeconds: 2
            failureThreshold: 3
          startupProbe:
            grpc: {port: 9090}
            periodSeconds: 1
            failureThreshold: 60
`))
}

// TCPEcho is a meshed server-speaks-first TCP echo (the demo app's TCP_LISTEN) behind the
// Service tcp-echo:9000, which declares no protocol: the proxies detect it as opaque.
func TCPEcho(ns string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: ServiceAccount
metadata: {name: tcp-echo, namespace: %[1]s}
---
apiVersion: v1
kind: Service
metadata: {name: tcp-echo, namespace: %[1]s}
spec:
  selector: {app: tcp-echo}
  ports: [{name: echo, port: 9000, targetPort: 9000}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: tcp-echo, namespace: %[1]s}
spec:
  replicas: 1
  selector:
    matchLabels: {app: tcp-echo}
  template:
    metadata:
      labels: {app: tcp-echo}
    spec:
%[2]s`, ns, podSpec("tcp-echo", "tcp-echo", "v1",
		`            - {name: TCP_LISTEN, value: ":9000"}
`, `            - {name: echo, containerPort: 9000}
`, `          readinessProbe:
            httpGet: {path: /healthz, port: 8080}
            periodSeconds: 1
`))
}

// TCPAccess is a TrafficTarget that grants source (a ServiceAccount of ns) L4 access to
// tcp-echo's port 9000 through a TCPRoute.
func TCPAccess(ns, source string) string {
	return fmt.Sprintf(`apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata: {name: tcp-echo, namespace: %[1]s}
spec:
  matches: {name: echo, ports: [9000]}
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: tcp-echo, namespace: %[1]s}
spec:
  destination: {kind: ServiceAccount, name: tcp-echo, namespace: %[1]s}
  rules: [{kind: TCPRoute, name: tcp-echo}]
  sources: [{kind: ServiceAccount, name: %[2]s, namespace: %[1]s}]
`, ns, source)
}

// HeaderCanary is an A/B split of reviews: requests with the header x-canary: true (the
// whole value) go to reviews-v2, every other request to the root Service reviews.
func HeaderCanary(ns string) string {
	return fmt.Sprintf(`apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: reviews-canary, namespace: %[1]s}
spec:
  matches:
    - name: canary
      headers: {x-canary: "true"}
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: reviews, namespace: %[1]s}
spec:
  service: reviews
  matches: [{kind: HTTPRouteGroup, name: reviews-canary}]
  backends:
    - {service: reviews-v1, weight: 0}
    - {service: reviews-v2, weight: 100}
`, ns)
}
