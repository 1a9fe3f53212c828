// Package configfile runs the proxy without a control plane: it reads a snapshot from a
// YAML or JSON file (proxy/api's Snapshot in protojson form, see docs/proxy-config.md)
// and applies it again whenever the file changes.
package configfile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/braidmesh/braid/proxy/api"
)

// Parse decodes a snapshot from YAML or JSON (JSON is YAML). Field names are protojson's:
// lowerCamelCase (pathRegex) or the proto names (path_regex); an unknown field is an error,
// so a misspelt one cannot silently widen or empty a route.
func Parse(data []byte) (*api.Snapshot, error) {
	snap, err := decode(data)
	if err != nil {
		return nil, err
	}
	if len(snap.GetRemoved()) > 0 {
		return nil, errors.New("a config file holds the whole configuration: removed has no meaning in it")
	}
	snap.Full = true
	return snap, nil
}

// decode decodes a JSON file as it is, and YAML (or JSON that protojson refuses, such as
// JSON with a key twice, which YAML reads as the last one) through its JSON form. The
// detour costs a file of 1000 Services about 17 MB of garbage and, at its peak, 10 MB
// live: the YAML tree, its JSON-ready copy and the JSON text at once.
func decode(data []byte) (*api.Snapshot, error) {
	if json.Valid(data) {
		snap := &api.Snapshot{}
		if err := protojson.Unmarshal(data, snap); err == nil {
			return snap, nil
		}
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("parsing YAML: %w", err)
	}
	snap := &api.Snapshot{}
	if !bytes.Equal(bytes.TrimSpace(js), []byte("null")) { // an empty file is an empty snapshot
		if err := protojson.Unmarshal(js, snap); err != nil {
			return nil, fmt.Errorf("decoding the snapshot: %w", err)
		}
	}
	return snap, nil
}

// Load reads and decodes the snapshot file at path.
func Load(path string) (*api.Snapshot, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the config file: %w", err)
	}
	snap, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	return snap, nil
}

// Watcher applies a config file, then applies it again whenever it changes.
type Watcher struct {
	Path string
	// Apply applies a snapshot, or says why it cannot (the proxy then keeps its last
	// good configuration).
	Apply func(*api.Snapshot) error
	// Rejected is called for a file that does not parse; Apply counts its own failures.
	Rejected func()
	Log      logr.Logger
	// Interval is how often the file's modification time and size are checked.
	Interval time.Duration

	last os.FileInfo // the file as last seen; nil when it could not be
}

// unchanged tells whether two looks at the file saw the same version of it, without
// reading it: a file replaced by a rename (the safe way to write one) is a new file even
// when its time and size are not new.
func unchanged(a, b os.FileInfo) bool {
	return os.SameFile(a, b) && a.ModTime().Equal(b.ModTime()) && a.Size() == b.Size()
}

// Start loads and applies the file once; it fails when the file cannot be read, parsed
// or applied, since there is no previous configuration to keep serving.
func (w *Watcher) Start() error {
	stamp, err := stat(w.Path)
	if err != nil {
		return err
	}
	snap, err := Load(w.Path)
	if err != nil {
		return err
	}
	if err := w.Apply(snap); err != nil {
		return fmt.Errorf("config file %s: %w", w.Path, err)
	}
	w.last = stamp
	w.Log.Info("Applied the config file", "path", w.Path, "version", snap.GetVersion(), "services", len(snap.GetServices()))
	releaseParseMemory()
	return nil
}

// Run checks the file every Interval until ctx ends, and applies each new version of it.
// A version that does not parse or apply is logged and skipped: the last good
// configuration keeps serving until the file changes again.
func (w *Watcher) Run(ctx context.Context) error {
	tick := time.NewTicker(w.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			w.check()
		}
	}
}

func (w *Watcher) check() {
	stamp, err := stat(w.Path)
	if err != nil {
		if w.last != nil { // say it once, not every second
			w.Log.Info("Cannot read the config file; keeping the last good configuration", "path", w.Path, "error", err.Error())
		}
		w.last = nil
		return
	}
	if w.last != nil && unchanged(stamp, w.last) {
		return
	}
	w.last = stamp
	snap, err := Load(w.Path)
	if err != nil {
		w.Rejected()
		w.Log.Info("Rejected the config file; keeping the last good configuration", "path", w.Path, "error", err.Error())
		return
	}
	if err := w.Apply(snap); err != nil {
		w.Log.Info("Rejected the config file; keeping the last good configuration", "path", w.Path, "version", snap.GetVersion(), "error", err.Error())
		return
	}
	w.Log.Info("Applied the config file", "path", w.Path, "version", snap.GetVersion(), "services", len(snap.GetServices()))
	releaseParseMemory()
}

// releaseParseMemory returns to the operating system the memory that decoding a file took
// and no longer holds (for 1000 Services, several times the configuration's own size).
// The runtime would keep most of it resident for minutes; a file is applied rarely, so
// the collection this forces is cheap.
func releaseParseMemory() { debug.FreeOSMemory() }

func stat(path string) (os.FileInfo, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("reading the config file: %w", err)
	}
	return fi, nil
}
