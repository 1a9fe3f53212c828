// Package golden compares test output with golden files, for the table tests of pure
// functions (the compiler, the injector). Run a package's tests with -update to rewrite
// its golden files, then read them: a golden file states what the code must produce.
package golden

import (
	"bytes"
	"encoding/json"
	"os"
	"testing"
)

// JSON renders raw JSON deterministically: compacted, then indented by two spaces, with a
// final newline.
func JSON(t testing.TB, raw []byte) []byte {
	t.Helper()
	var compact, indented bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		t.Fatalf("compacting JSON: %v\n%s", err, raw)
	}
	if err := json.Indent(&indented, compact.Bytes(), "", "  "); err != nil {
		t.Fatalf("indenting JSON: %v", err)
	}
	indented.WriteByte('\n')
	return indented.Bytes()
}

// Compare checks got against the JSON golden file at path, or rewrites the file with got
// when update is set. what names the output in the failure message, pkg the package to
// run with -update.
func Compare(t testing.TB, path string, got []byte, update bool, what, pkg string) {
	t.Helper()
	if update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading golden file (run go test %s -update to create it): %v", pkg, err)
	}
	if want := JSON(t, raw); !bytes.Equal(got, want) {
		t.Errorf("%s differs from %s (run with -update only if the new output is right)\n--- got\n%s--- want\n%s", what, path, got, want)
	}
}
