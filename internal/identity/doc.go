// Package identity is Braid's workload identity authority as pure functions and values:
// SPIFFE IDs, the root and intermediate CAs, checks on certificate signing requests,
// workload certificate signing and trust bundles.
//
// It does no I/O, holds no global state and imports no Kubernetes client. Time is always
// passed in, so certificate lifetimes are tested with fixed clocks. Randomness (keys,
// serial numbers, signatures) comes from crypto/rand.
package identity
