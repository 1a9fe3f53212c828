package main

import (
	"flag"
	"math"
	"runtime/debug"
	"strings"
	"testing"
)

func TestGCFlags(t *testing.T) {
	percent, limit := debug.SetGCPercent(100), debug.SetMemoryLimit(math.MaxInt64)
	t.Cleanup(func() { debug.SetGCPercent(percent); debug.SetMemoryLimit(limit) })
	for _, tc := range []struct {
		args        []string
		wantPercent int
		wantLimit   int64
		wantErr     string
	}{
		{args: nil, wantPercent: 100, wantLimit: math.MaxInt64},
		{args: []string{"--gc-percent", "250", "--memory-limit", "48MiB"}, wantPercent: 250, wantLimit: 48 << 20},
		{args: []string{"--gc-percent", "off", "--memory-limit", "1GiB"}, wantPercent: -1, wantLimit: 1 << 30},
		{args: []string{"--memory-limit", "65536"}, wantPercent: 100, wantLimit: 65536},
		{args: []string{"--memory-limit", "512KiB"}, wantPercent: 100, wantLimit: 512 << 10},
		{args: []string{"--memory-limit", "off"}, wantPercent: 100, wantLimit: math.MaxInt64},
		{args: []string{"--gc-percent", "-5"}, wantErr: "--gc-percent"},
		{args: []string{"--gc-percent", "lots"}, wantErr: "--gc-percent"},
		{args: []string{"--memory-limit", "20MB"}, wantErr: "the units are"},
		{args: []string{"--memory-limit", "0MiB"}, wantErr: "not a positive size"},
		{args: []string{"--memory-limit", "9999999999TiB"}, wantErr: "overflows"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			debug.SetGCPercent(100)
			debug.SetMemoryLimit(math.MaxInt64)
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			o := gcFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			err := o.apply()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("apply() = %v, want an error mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := debug.SetGCPercent(100); got != tc.wantPercent {
				t.Errorf("GC percent = %d, want %d", got, tc.wantPercent)
			}
			if got := debug.SetMemoryLimit(-1); got != tc.wantLimit {
				t.Errorf("memory limit = %d, want %d", got, tc.wantLimit)
			}
		})
	}
}
