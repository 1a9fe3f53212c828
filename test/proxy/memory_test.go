package proxy

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

var smapsHeader = regexp.MustCompile(`^[0-9a-f]+-[0-9a-f]+ (\S+) \S+ \S+ \S+\s+(.*)$`)

// binaryMappings returns the VmFlags of each mapping of the process's own binary, by its
// permissions ("r-xp", "rw-p", …).
func binaryMappings(t *testing.T, pid int) map[string][]string {
	t.Helper()
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	out := map[string][]string{}
	perms := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if m := smapsHeader.FindStringSubmatch(line); m != nil {
			perms = ""
			if m[2] == exe {
				perms = m[1]
			}
			continue
		}
		if v, ok := strings.CutPrefix(line, "VmFlags:"); ok && perms != "" {
			out[perms] = strings.Fields(v)
		}
	}
	return out
}

// Once it runs a configuration, the proxy has dropped the pages of its binary's code
// and read-only data that starting up touched, and marked those mappings for single-page
// faults ("rr": MADV_RANDOM), so that only the pages it uses come back; its writable data
// is left alone.
func TestTheBinarysReadOnlyPagesAreTrimmed(t *testing.T) {
	b := backend(t, "web-v1")
	p, _ := standalone(t, splitConfig(1, weighted{b, 1}))
	ctx, cancel := context.WithTimeout(t.Context(), eventually)
	defer cancel()
	waitWeights(ctx, t, p, weighted{b, 1})
	maps := binaryMappings(t, p.Pid())
	if len(maps) == 0 {
		t.Fatal("found no mapping of the proxy's binary")
	}
	for perms, flags := range maps {
		random := slices.Contains(flags, "rr")
		switch writable := perms[1] == 'w'; {
		case !writable && !random:
			t.Errorf("the read-only mapping %s of the binary was not trimmed: flags %v", perms, flags)
		case writable && random:
			t.Errorf("the writable mapping %s of the binary was advised: flags %v", perms, flags)
		}
	}
}
