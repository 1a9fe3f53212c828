package textpages_test

import (
	"bufio"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/braidmesh/braid/proxy/internal/textpages"
)

var mappingLine = regexp.MustCompile(`^[0-9a-f]+-[0-9a-f]+ (\S+) \S+ \S+ \S+\s+(.*)$`)

// residentReadOnly is the resident memory of the binary's read-only mappings, in KB,
// from /proc/self/smaps.
func residentReadOnly(t *testing.T) int64 {
	t.Helper()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	defer func() { _ = f.Close() }()
	var kb int64
	counting := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if m := mappingLine.FindStringSubmatch(line); m != nil {
			counting = m[2] == exe && m[1][1] != 'w'
			continue
		}
		if v, ok := strings.CutPrefix(line, "Rss:"); ok && counting {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			kb += n
		}
	}
	return kb
}

// Trimming drops most of the binary's resident pages, and the process runs on: the code
// it needs comes back as it runs.
func TestTrimDropsTheBinarysPagesAndTheProcessRunsOn(t *testing.T) {
	before := residentReadOnly(t)
	advised, err := textpages.Trim()
	if err != nil {
		t.Fatal(err)
	}
	after := residentReadOnly(t)
	t.Logf("resident read-only pages of the binary: %d kB -> %d kB; %d kB of mappings advised", before, after, advised>>10)
	if advised == 0 {
		t.Fatal("no read-only mapping of the binary was found")
	}
	// Measuring runs code, whose pages fault back in, with their neighbours (the kernel's
	// fault-around): a quarter less is a margin, not the size of the effect.
	if after > before*3/4 {
		t.Errorf("the binary's resident read-only pages went from %d to %d kB; want a quarter less at least", before, after)
	}
	// Code that had not run since: it faults back in.
	re := regexp.MustCompile(`^spiffe://([^/]+)/ns/([^/]+)/sa/(.+)$`)
	if m := re.FindStringSubmatch("spiffe://cluster.local/ns/shop/sa/web"); len(m) != 4 || m[3] != "web" {
		t.Errorf("after trimming, a regexp matched %q", m)
	}
}

// Writable mappings of the binary (its data) are never dropped: their changes would be
// lost. A global written before trimming keeps its value.
var written = []string{"initial"}

func TestTrimKeepsWrittenData(t *testing.T) {
	written[0] = "changed"
	if _, err := textpages.Trim(); err != nil {
		t.Fatal(err)
	}
	if written[0] != "changed" {
		t.Errorf("a global reads %q after trimming, want the value written", written[0])
	}
}
