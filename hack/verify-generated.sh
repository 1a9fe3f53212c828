#!/usr/bin/env bash
# Fails when generated files differ from what their sources generate now. It regenerates
# in a scratch copy of the working tree (tracked and untracked, not ignored), so it checks
# uncommitted work too and never touches the tree itself.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
generated=(api/v1alpha1/zz_generated.deepcopy.go internal/smi/zz_generated.deepcopy.go
  proxy/api/config.pb.go proxy/api/config_grpc.pb.go config/crd/bases config/rbac/role.yaml
  config/webhook/manifests.yaml)

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cd "$root"
git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} sh -c '[ -e "{}" ] && printf "%s\0" "{}"' |
  tar --null -T - -cf - | tar -xf - -C "$scratch"
make -s -C "$scratch" LOCALBIN="$root/bin" generate manifests >/dev/null

status=0
for path in "${generated[@]}"; do
  if ! diff -ruN "$root/$path" "$scratch/$path" >/dev/null 2>&1; then
    echo "verify: $path is out of date; run 'make generate manifests' and commit the result:" >&2
    diff -ruN "$root/$path" "$scratch/$path" | head -40 >&2 || true
    status=1
  fi
done
[[ $status -eq 0 ]] && echo "verify: generated files are up to date"
exit $status
