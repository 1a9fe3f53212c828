package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// down stops everything up started and undoes its changes to the host. It works from
// what is there, so it is idempotent and cleans up after an up that was killed half-way.
func down(_ context.Context, l layout, out io.Writer) error {
	begin := time.Now()
	_, _ = fmt.Fprintf(out, "Stopping the cluster in %s\n", l.dir)
	stopProcesses(l, out)
	var errs []error
	// Mounts: the pods' network namespaces (their veths go with them), containerd's
	// snapshots and the kubelet's volumes.
	var created []string
	_ = readJSON(l.hostPathsFile(), &created)
	prefixes := []string{l.dir}
	prefixes = append(prefixes, podNetnsMounts()...)
	prefixes = append(prefixes, created...)
	if err := unmountUnder(prefixes, out); err != nil {
		errs = append(errs, err)
	}
	for _, ns := range podNetnsMounts() {
		_ = os.Remove(ns)
	}
	if err := teardownNetwork(l, out); err != nil {
		errs = append(errs, err)
	}
	if err := removeCgroups(out); err != nil {
		errs = append(errs, err)
	}
	if err := restoreSysctls(l, out); err != nil {
		errs = append(errs, err)
	}
	for _, p := range created {
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		} else if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
			_, _ = fmt.Fprintf(out, "  removed %s\n", p)
		}
	}
	if len(errs) > 0 {
		// Keep the state folder: it holds the records (sysctls, paths) a retry needs.
		return fmt.Errorf("the cluster is stopped, but some host changes remain (run braid down again): %w", errors.Join(errs...))
	}
	if _, err := os.Stat(l.dir); err == nil {
		if err := removeState(l.dir); err != nil {
			return err
		}
		_, _ = fmt.Fprintf(out, "  removed %s\n", l.dir)
	}
	_, _ = fmt.Fprintf(out, "The cluster is down (%s).\n", since(begin))
	return nil
}

// removeState deletes the state folder, refusing anything that does not look like one.
func removeState(dir string) error {
	clean := filepath.Clean(dir)
	if clean == "/" || strings.Count(clean, "/") < 2 && !strings.HasPrefix(clean, "/tmp") {
		return fmt.Errorf("refusing to remove %s: not a cluster state folder", dir)
	}
	return os.RemoveAll(clean)
}

// stopProcesses stops the kubelet first, so it restarts nothing, then every process of
// every pod, the containerd shims and the other components in the reverse order of start.
func stopProcesses(l layout, out io.Writer) {
	stop := func(names ...string) {
		for _, name := range names {
			if pid, alive := recorded(l, name); alive {
				stopPIDs([]int{pid}, 10*time.Second)
				_, _ = fmt.Fprintf(out, "  stopped %s (pid %d)\n", name, pid)
			}
			_ = os.Remove(l.pidFile(name))
		}
	}
	stop("kubelet")
	if pids := podProcesses(); len(pids) > 0 {
		killAll(pids, 10*time.Second)
		_, _ = fmt.Fprintf(out, "  killed %d pod processes\n", len(pids))
	}
	if pids := shimsOf(l.containerdSock()); len(pids) > 0 {
		stopPIDs(pids, 5*time.Second)
		_, _ = fmt.Fprintf(out, "  stopped %d containerd shims\n", len(pids))
	}
	rest := slices.Clone(startOrder)
	slices.Reverse(rest)
	stop(rest...)
}
