// Package mesh is Braid's mesh model and compiler: pure functions from Kubernetes and SMI
// objects to proxy configuration. It does no I/O and imports no Kubernetes client, so it
// is tested with table tests and golden files.
package mesh
