package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/braidmesh/braid/hack/clusterkit"
)

// trafficMetricsList is the part of a TrafficMetricsList the check reads.
type trafficMetricsList struct {
	Kind  string `json:"kind"`
	Items []struct {
		Resource struct{ Kind, Name string } `json:"resource"`
		Edge     struct {
			Direction string                      `json:"direction"`
			Side      string                      `json:"side"`
			Resource  struct{ Kind, Name string } `json:"resource"`
		} `json:"edge"`
		Window  string `json:"window"`
		Metrics []struct {
			Name  string `json:"name"`
			Unit  string `json:"unit"`
			Value string `json:"value"`
		} `json:"metrics"`
	} `json:"items"`
}

// trafficMetrics checks SMI's TrafficMetrics API through the cluster's own API server
// (APIService v1alpha1.metrics.smi-spec.io, served by the operator): after calls from
// frontend to reviews-v1, the edges of Deployment reviews-v1 name the frontend Deployment,
// with a window and the five metrics.
func (s *suite) trafficMetrics(ctx context.Context) error {
	if s.frontendIP == "" {
		return errors.New("no frontend pod (injection check failed)")
	}
	path := "/apis/metrics.smi-spec.io/v1alpha1/namespaces/" + ns + "/deployments/reviews-v1/edges"
	return clusterkit.Eventually(ctx, 90*time.Second, time.Second, func() error {
		r, err := clusterkit.Call(ctx, s.frontendIP, "http://reviews-v1:8080/", 10)
		switch {
		case err != nil:
			return fmt.Errorf("calls from frontend to reviews-v1: %w", err)
		case r.Errors > 0:
			return fmt.Errorf("%d of 10 calls from frontend to reviews-v1 failed: %s", r.Errors, r.Error)
		}
		out, err := s.kit.Run(ctx, "get", "--raw", path)
		if err != nil {
			return fmt.Errorf("kubectl get --raw %s: %w", path, err)
		}
		return frontendEdge(out)
	})
}

// frontendEdge finds, in a TrafficMetricsList, the edge from Deployment frontend with a
// window and the five metrics, success_count above zero.
func frontendEdge(raw string) error {
	var list trafficMetricsList
	if err := json.Unmarshal([]byte(raw), &list); err != nil {
		return fmt.Errorf("not a TrafficMetricsList: %w: %.300s", err, raw)
	}
	if list.Kind != "TrafficMetricsList" {
		return fmt.Errorf("kind %q, want TrafficMetricsList: %.300s", list.Kind, raw)
	}
	for _, it := range list.Items {
		if it.Edge.Resource.Name != "frontend" || it.Edge.Direction != "from" {
			continue
		}
		names := map[string]string{}
		for _, m := range it.Metrics {
			names[m.Name] = m.Value
		}
		for _, want := range []string{"p99_response_latency", "p90_response_latency", "p50_response_latency", "success_count", "failure_count"} {
			if _, ok := names[want]; !ok {
				return fmt.Errorf("the frontend edge lacks %s: %v", want, names)
			}
		}
		if it.Window == "" || names["success_count"] == "0" {
			return fmt.Errorf("the frontend edge has window %q and success_count %s", it.Window, names["success_count"])
		}
		return nil
	}
	edges := make([]string, 0, len(list.Items))
	for _, it := range list.Items {
		edges = append(edges, it.Edge.Direction+" "+it.Edge.Resource.Kind+"/"+it.Edge.Resource.Name)
	}
	return fmt.Errorf("no edge from Deployment frontend among [%s]", strings.Join(edges, ", "))
}
