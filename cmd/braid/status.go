package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// status prints the cluster's processes and its node, and fails when it is not healthy.
func status(ctx context.Context, l layout, out io.Writer) error {
	if _, err := os.Stat(l.dir); err != nil {
		_, _ = fmt.Fprintf(out, "No cluster: %s does not exist (start one with braid up).\n", l.dir)
		return errNotRunning
	}
	for _, name := range startOrder {
		pid, alive := recorded(l, name)
		state := "stopped"
		if alive {
			state = fmt.Sprintf("running (pid %d)", pid)
		}
		_, _ = fmt.Fprintf(out, "%-26s %s\n", name, state)
	}
	err := healthy(ctx, l)
	if err == nil {
		cs, _ := clientset(l)
		pods, perr := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		if perr == nil {
			_, _ = fmt.Fprintf(out, "node %s Ready, %d pods\n", nodeName, len(pods.Items))
		}
		printUsage(out, l)
		return nil
	}
	_, _ = fmt.Fprintln(out, "not healthy:", err)
	return errNotRunning
}

// healthy is nil when every component runs and the node is Ready.
func healthy(ctx context.Context, l layout) error {
	if _, err := os.Stat(l.kubeconfig()); err != nil {
		return errNotRunning
	}
	for _, name := range startOrder {
		if _, alive := recorded(l, name); !alive {
			return fmt.Errorf("%s is not running", name)
		}
	}
	cs, err := clientset(l)
	if err != nil {
		return err
	}
	n, err := cs.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading node %s: %w", nodeName, err)
	}
	if !nodeReady(n) {
		return errors.New("node " + nodeName + " is not Ready")
	}
	return nil
}
