package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// loadResult is what one fortio run measured (latencies in seconds).
type loadResult struct {
	qps, p50, p90, p99, p999 float64
	requests, errors         int
	connections              int
}

// fortioJSON is the part of fortio's -json output the benchmark reads.
type fortioJSON struct {
	ActualQPS         float64
	DurationHistogram struct {
		Count       int
		Percentiles []struct {
			Percentile float64
			Value      float64
		}
	}
	RetCodes    map[string]int
	SocketCount int
}

// loader runs fortio load against a case.
type loader struct {
	fortio string
	dir    string
	ps     *procs
	conns  int
	n      int // runs so far, for file names
	// cpu is the CPU time the last run of fortio used.
	cpu time.Duration
}

// run is `fortio load` at qps (0: as fast as it can) for d, with conns connections,
// against addr, with the Host of the Service; the load generator is not pinned.
// Histogram resolution is 10 µs (fortio's default of 1 ms would hide what is measured).
func (l *loader) run(ctx context.Context, label, addr string, qps float64, d time.Duration) (loadResult, error) {
	l.n++
	out := filepath.Join(l.dir, fmt.Sprintf("fortio-%02d-%s.json", l.n, label))
	args := []string{"load", "-qps", strconv.FormatFloat(qps, 'f', -1, 64), "-c", strconv.Itoa(l.conns),
		"-t", d.String(), "-r", "0.00001", "-p", "50,90,99,99.9", "-json", out,
		"-H", "Host: " + service, "-loglevel", "Warning"}
	if qps > 0 {
		args = append(args, "-uniform") // spread the connections' requests over each period
	}
	args = append(args, "http://"+addr+"/echo?size=1024")
	p, err := l.ps.start(fmt.Sprintf("fortio-%02d-%s", l.n, label), -1, nil, l.fortio, args...)
	if err != nil {
		return loadResult{}, err
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		l.ps.stop(p)
		return loadResult{}, ctx.Err()
	}
	l.ps.stop(p) // reaps it; it has exited
	l.cpu = p.cmd.ProcessState.UserTime() + p.cmd.ProcessState.SystemTime()
	if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.ExitStatus() != 0 {
		return loadResult{}, fmt.Errorf("fortio load failed (%v):\n%s", p.cmd.ProcessState, p.logTail())
	}
	data, err := os.ReadFile(out)
	if err != nil {
		return loadResult{}, err
	}
	var fj fortioJSON
	if err := json.Unmarshal(data, &fj); err != nil {
		return loadResult{}, fmt.Errorf("decoding %s: %w", out, err)
	}
	r := loadResult{qps: fj.ActualQPS, requests: fj.DurationHistogram.Count, connections: fj.SocketCount}
	r.errors = r.requests - fj.RetCodes["200"]
	for _, pc := range fj.DurationHistogram.Percentiles {
		switch pc.Percentile {
		case 50:
			r.p50 = pc.Value
		case 90:
			r.p90 = pc.Value
		case 99:
			r.p99 = pc.Value
		case 99.9:
			r.p999 = pc.Value
		}
	}
	return r, nil
}
