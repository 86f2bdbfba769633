#!/usr/bin/env bash
# Refresh the base-image digests pinned in docker/Dockerfile*: resolve each ARG's tag to the
# registry's current index digest and rewrite the "tag@sha256:..." value. Needs a registry and
# `docker buildx` (run where both are available; CI and this kit's dev machines have neither).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v docker >/dev/null || { echo "error: docker is not installed" >&2; exit 2; }
for file in docker/Dockerfile docker/Dockerfile.cpu; do
  grep -E '^ARG [A-Z_]+_IMAGE=' "$file" | while IFS= read -r line; do
    ref=${line#*=}
    tag=${ref%@*}
    digest=$(docker buildx imagetools inspect "$tag" --format '{{json .Manifest.Digest}}' | tr -d '"')
    [[ $digest == sha256:* ]] || { echo "error: no digest for $tag" >&2; exit 1; }
    sed -i "s|${ref}|${tag}@${digest}|" "$file"
    echo "$file: $tag@$digest"
  done
done
