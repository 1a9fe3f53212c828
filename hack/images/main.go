// Command images builds Braid's container images without Docker and without a base
// image: each is one static Go binary in one layer, written as a docker-archive tarball
// that `ctr images import`, `docker load`, crane and skopeo all read.
//
//	go run ./hack/images --out bin/images
//
// It writes pause.tar (the local cluster's sandbox image), braid-operator.tar,
// braid-proxy.tar (the proxy and braid-init, its pod's init container) and demo-app.tar.
// An image whose binaries have not changed is not rewritten, so a second run only pays
// for the (cached) go builds.
package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// image is one image: its binaries and how it runs.
type image struct {
	file     string   // tarball name under --out
	repo     string   // repository under --registry
	binaries []binary // the first is the entrypoint
	user     string   // numeric user, empty for root
	exposed  []string
}

// binary is a Go package built into an image at a path.
type binary struct {
	pkg, path string
}

var images = []image{
	{file: "pause.tar", repo: "pause", binaries: []binary{{"./hack/images/pause", "/pause"}}, user: "65535"},
	{file: "braid-operator.tar", repo: "braid-operator", binaries: []binary{{".", "/braid-operator"}}, user: "65532", exposed: []string{"9443/tcp", "15010/tcp", "15011/tcp", "8080/tcp", "8081/tcp"}},
	// No user: braid-init runs as root; the injector sets the proxy's user.
	{file: "braid-proxy.tar", repo: "braid-proxy", binaries: []binary{{"./cmd/braid-proxy", "/braid-proxy"}, {"./cmd/braid-init", "/braid-init"}}},
	{file: "demo-app.tar", repo: "demo-app", binaries: []binary{{"./hack/demo-app", "/demo-app"}}, user: "65532", exposed: []string{"8080/tcp"}},
}

func main() {
	out := flag.String("out", "bin/images", "folder the image tarballs are written to")
	registry := flag.String("registry", "braid.local", "registry part of the image names")
	tag := flag.String("tag", "dev", "tag of every image")
	flag.Parse()
	if err := run(*out, *registry, *tag); err != nil {
		_, _ = fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run(out, registry, tag string) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "braid-images-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(work) }()
	for _, img := range images {
		t := time.Now()
		ref := fmt.Sprintf("%s/%s:%s", registry, img.repo, tag)
		contents := make([][]byte, len(img.binaries))
		h := sha256.New()
		for i, b := range img.binaries {
			if contents[i], err = build(work, b); err != nil {
				return err
			}
			h.Write(contents[i])
		}
		h.Write([]byte(ref))
		sum := h.Sum(nil)
		stamp := filepath.Join(out, img.file+".sha256")
		tarPath := filepath.Join(out, img.file)
		if old, err := os.ReadFile(stamp); err == nil && string(old) == hex.EncodeToString(sum) {
			if _, err := os.Stat(tarPath); err == nil {
				fmt.Printf("  %-42s unchanged\n", ref)
				continue
			}
		}
		if err := write(tarPath, ref, img, contents); err != nil {
			return fmt.Errorf("image %s: %w", ref, err)
		}
		if err := os.WriteFile(stamp, []byte(hex.EncodeToString(sum)), 0o644); err != nil {
			return err
		}
		st, _ := os.Stat(tarPath)
		fmt.Printf("  %-42s %5.1f MB  %s\n", ref, float64(st.Size())/1e6, time.Since(t).Round(time.Millisecond))
	}
	return nil
}

// build builds b for the image's platform in dir and returns the binary.
func build(dir string, b binary) ([]byte, error) {
	bin := filepath.Join(dir, filepath.Base(b.path))
	// grpcnotrace: nothing serves gRPC's /debug/requests, and leaving x/net/trace out
	// saves the proxy 1.5 MB of resident memory.
	cmd := exec.Command("go", "build", "-trimpath", "-tags", "grpcnotrace", "-ldflags", "-s -w", "-o", bin, b.pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("building %s: %w", b.pkg, err)
	}
	content, err := os.ReadFile(bin)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", b.pkg, err)
	}
	return content, nil
}

// write builds the image (one layer holding the binaries and an empty /tmp) and writes
// it as a docker-archive. Timestamps are zero, so the same binaries give the same digest.
func write(path, ref string, img image, contents [][]byte) error {
	layerTar, err := layerOf(img.binaries, contents)
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerTar)), nil })
	if err != nil {
		return err
	}
	base := mutate.MediaType(empty.Image, "application/vnd.docker.distribution.manifest.v2+json")
	v1img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		return err
	}
	cf, err := v1img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config.Entrypoint = []string{img.binaries[0].path}
	cf.Config.User = img.user
	cf.Config.WorkingDir = "/"
	cf.Config.Env = []string{"PATH=/"}
	if len(img.exposed) > 0 {
		cf.Config.ExposedPorts = map[string]struct{}{}
		for _, p := range img.exposed {
			cf.Config.ExposedPorts[p] = struct{}{}
		}
	}
	cf.Config.Labels = map[string]string{"org.opencontainers.image.source": "https://github.com/braidmesh/braid"}
	v1img, err = mutate.ConfigFile(v1img, cf)
	if err != nil {
		return err
	}
	tagged, err := name.NewTag(ref)
	if err != nil {
		return err
	}
	tmp := path + ".partial"
	if err := tarball.WriteToFile(tmp, tagged, v1img); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func layerOf(binaries []binary, contents [][]byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777, Format: tar.FormatPAX}); err != nil {
		return nil, err
	}
	for i, b := range binaries {
		h := &tar.Header{Name: b.path[1:], Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(contents[i])), Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(contents[i]); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
