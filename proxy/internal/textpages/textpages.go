// Package textpages trims the process's resident set to the pages of its own binary it
// uses.
//
// The kernel maps a binary's code and read-only data on demand, but a fault maps the
// cached pages around the one it needs too (fault-around, 64 KB by default): a Go
// binary whose code runs from all over its text soon has nearly all of its text and
// read-only data resident. For braid-proxy that was 11–12 MB of the client proxy's
// 20 MB (docs/benchmarks.md).
//
// Trim drops those pages (MADV_DONTNEED) and marks the mappings MADV_RANDOM, so that the
// kernel does not read ahead in them: the pages the process uses come back on their
// next use, each with its cached neighbours, and the pages that only starting up used
// stay out. Nothing is lost: the pages are clean copies of the file, which the kernel
// drops the same way under memory pressure, and they stay in the page cache, shared by
// every process that maps the file. What shrinks is the process's own resident set.
// Mappings that may be written (the binary's data) are left alone: dropping their pages
// would discard the process's changes to them.
package textpages

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Trim drops the resident pages of the read-only mappings of the running binary, and
// returns how many bytes of mappings it advised.
func Trim() (int64, error) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return 0, fmt.Errorf("finding the binary: %w", err)
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return 0, fmt.Errorf("reading the process's mappings: %w", err)
	}
	var total int64
	sc := bufio.NewScanner(bytes.NewReader(maps))
	for sc.Scan() {
		start, end, ok := readOnlyMappingOf(sc.Text(), exe)
		if !ok {
			continue
		}
		for _, advice := range []int{unix.MADV_RANDOM, unix.MADV_DONTNEED} {
			if _, _, errno := unix.Syscall(unix.SYS_MADVISE, start, end-start, uintptr(advice)); errno != 0 {
				return total, fmt.Errorf("madvise %#x-%#x: %w", start, end, errno)
			}
		}
		total += int64(end - start)
	}
	return total, nil
}

// readOnlyMappingOf parses a line of /proc/self/maps ("start-end perms offset dev inode
// path") and reports the range of a mapping of path that cannot be written.
func readOnlyMappingOf(line, path string) (start, end uintptr, ok bool) {
	fields := strings.Fields(line)
	if len(fields) < 6 || strings.Join(fields[5:], " ") != path || len(fields[1]) < 2 || fields[1][1] != '-' {
		return 0, 0, false
	}
	lo, hi, found := strings.Cut(fields[0], "-")
	if !found {
		return 0, 0, false
	}
	s, err1 := strconv.ParseUint(lo, 16, 64)
	e, err2 := strconv.ParseUint(hi, 16, 64)
	if err1 != nil || err2 != nil || e <= s {
		return 0, 0, false
	}
	return uintptr(s), uintptr(e), true
}
