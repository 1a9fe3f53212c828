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
      serviceAccountName: %[5]s
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
            - {name: SERVICE, value: %[3]s}
            - {name: VERSION, value: %[4]s}
            - {name: UPSTREAM, value: "%[6]s"}
            - name: POD_NAME
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
          ports: [{name: http, containerPort: 8080}]
          readinessProbe:
            httpGet: {path: /healthz, port: 8080}
            periodSeconds: 1
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: [ALL]}
`, ns, name, app, version, sa, upstream, DemoImage)
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
