#!/usr/bin/env bash
# Build, and test, the images with the engine this machine has (docker/engine.sh: Docker, else
# podman, installed where it can be).
#
#   docker/images.sh build   `make docker-build`: the CPU image, then the GPU image, each on its
#                            pinned bases; one that cannot be built (a base that cannot be pulled,
#                            TensorRT's lock empty or NVIDIA's index out of reach) is said why in
#                            one line, and the other is built all the same. Exit 0 when every image
#                            was built, 2 when one could not be (the reason printed), 1 on a
#                            failed build. STAND_IN=1: stand-in bases where the pinned ones cannot
#                            be pulled (the images then carry a -stand-in tag).
#   docker/images.sh test    `make docker-test`: both images built (stand-in bases where the pinned
#                            ones cannot be pulled, the GPU image without TensorRT where its lock or
#                            index is out of reach: test images, tagged and labelled as such), then
#                            run as a user would (docker/smoke.sh): the CPU image end to end, the
#                            GPU image's command line and environment. Exit 0 when all of it passed.
#
# A stand-in base is built from Debian's archive (mmdebstrap) where the pinned base cannot be
# pulled: for python:<X.Y>-...-<suite>, Debian <suite> minbase with its python3 (the same minor, or
# no stand-in), copied under /usr/local as the python image lays it out; for
# nvidia/cuda:...-ubuntu24.04, Debian trixie minbase (the release Ubuntu 24.04 was cut from: the
# same t64 library names; no CUDA libraries, so no GPU backend works in a test image). It is kept
# (localhost/pbkit-stand-in/<tag>) and used by its digest, so the layer cache holds from one run
# to the next; STAND_IN_REFRESH=1 builds it again (the archive's updates).
#
# Environment: IMAGE (ghcr.io/pbkit/pbkit), VERSION, REVISION, CREATED (the Makefile passes them),
# IMAGES ("cpu gpu"), PIP_CA (a CA bundle for pip inside the build, passed as the build secret
# pip-ca; default: the system bundle), DEBIAN_MIRROR, LOGS (build/docker).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=docker/engine.sh
source docker/engine.sh

IMAGE=${IMAGE:-ghcr.io/pbkit/pbkit}
VERSION=${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)}
REVISION=${REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
CREATED=${CREATED:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}
IMAGES=${IMAGES:-cpu gpu}
LOGS=${LOGS:-build/docker}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
STAND_IN_PREFIX=localhost/pbkit-stand-in
declare -A STATUS=()
FAILED=0 # a build or a test that failed
MISSING=0 # an image that could not be built here (said why)

say() { echo "== $*" >&2; }

# the pinned reference of ARG $1 in Dockerfile $2
pinned() { sed -n "s/^ARG $1=//p" "$2" | head -1; }

have_image() { "${ENGINE[@]}" image inspect "$1" >/dev/null 2>&1; }

size_of() {
  local bytes
  bytes=$("${ENGINE[@]}" image inspect --format '{{.Size}}' "$1" 2>/dev/null || echo 0)
  awk -v b="$bytes" 'BEGIN { printf "%.2f GB", b / 1e9 }'
}

# pull a pinned base (already here counts); the reason on stdout when it cannot be pulled
pull_base() {
  local ref=$1 log=$LOGS/pull.log
  have_image "$ref" && return 0
  say "pulling $ref"
  if timeout 1800 "${ENGINE[@]}" pull -q "$ref" >>"$log" 2>&1; then
    return 0
  fi
  grep -v '^Trying\|^Getting\|^Copying\|^Writing\|^Storing' "$log" | tail -1 |
    sed -E 's/^Error: initializing source [^ ]*: //' | cut -c1-200
  return 1
}

# Debian suite and release facts of a stand-in for pinned tag $1 (python:3.11.14-slim-bookworm,
# cuda:13.0.3-cudnn-runtime-ubuntu24.04); prints "suite python-minor" (python-minor "-" for CUDA)
stand_in_for() {
  local tag=$1
  case $tag in
    python:*)
      local minor suite
      minor=$(sed -n 's/^python:\([0-9]*\.[0-9]*\).*/\1/p' <<<"$tag")
      suite=${tag##*-}
      [[ -n $minor && $suite =~ ^[a-z]+$ ]] || return 1
      echo "$suite $minor"
      ;;
    cuda:*-ubuntu24.04) echo "trixie -" ;;
    cuda:*-ubuntu22.04) echo "bookworm -" ;;
    *) return 1 ;;
  esac
}

# build the stand-in image $2 for pinned base $1 from Debian's archive
make_stand_in() {
  local pinned=$1 name=$2 tag suite minor facts tar hooks=()
  tag=${pinned%@*}
  tag=${tag##*/}
  facts=$(stand_in_for "$tag") || {
    echo "no stand-in is known for $tag"
    return 1
  }
  read -r suite minor <<<"$facts"
  need mmdebstrap mmdebstrap || {
    echo "$NEED_WHY (mmdebstrap builds the stand-in for $tag)"
    return 1
  }
  local include=passwd,ca-certificates
  if [[ $minor != - ]]; then
    include+=,python3,python3-venv,python-is-python3
    # the same Python minor as the pinned image, or no stand-in; then that Python under /usr/local,
    # where the python image has it (the GPU image copies /usr/local from it)
    hooks+=(--customize-hook="chroot \"\$1\" python3 -c 'import sys; v = \"%d.%d\" % sys.version_info[:2]; assert v == \"$minor\", \"Debian $suite has Python \" + v + \", not $minor\"'")
    hooks+=(--customize-hook="chroot \"\$1\" sh -ec 'mkdir -p /usr/local/lib/python$minor && cp -aL /usr/lib/python$minor/. /usr/local/lib/python$minor/ && cp -aL /usr/bin/python$minor /usr/local/bin/ && ln -sf python$minor /usr/local/bin/python3 && ln -sf python3 /usr/local/bin/python'")
  fi
  tar=$(mktemp "${TMPDIR:-/tmp}/pbkit-stand-in.XXXXXX.tar")
  say "building a stand-in for $pinned: Debian $suite minbase ($include) from $DEBIAN_MIRROR"
  local security=${DEBIAN_MIRROR%/debian}/debian-security
  local runner=()
  ! as_root true 2>/dev/null || runner=(as_root) # (else mmdebstrap's unshare mode, unprivileged)
  if ! "${runner[@]}" mmdebstrap --variant=minbase --include="$include" "${hooks[@]}" "$suite" "$tar" \
    "deb $DEBIAN_MIRROR $suite main" "deb $DEBIAN_MIRROR $suite-updates main" \
    "deb $security $suite-security main" >"$LOGS/stand-in-${tag%%:*}.log" 2>&1; then
    rm -f "$tar"
    echo "mmdebstrap failed: $(grep -m1 -i 'error\|assert' "$LOGS/stand-in-${tag%%:*}.log" | cut -c1-160) (log: $LOGS/stand-in-${tag%%:*}.log)"
    return 1
  fi
  local path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  [[ $minor == - ]] || path=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
  "${ENGINE[@]}" import \
    --change "ENV PATH=$path" --change "ENV LANG=C.UTF-8" \
    --change "LABEL io.github.pbkit.stand-in-for=$pinned" \
    --change "LABEL io.github.pbkit.stand-in-of=Debian $suite minbase ($include) from $DEBIAN_MIRROR" \
    --change 'CMD ["bash"]' "$tar" "$name" >/dev/null
  rm -f "$tar"
}

# the base to build on for ARG $1 of Dockerfile $2: the pinned one where it can be pulled, else
# (STAND_IN set) a stand-in. Sets BASE (the reference) and BASE_STAND_IN (what it stands in
# for, or empty); returns 1 with the reason in BASE_WHY
resolve_base() {
  local pinned why tag name
  pinned=$(pinned "$1" "$2")
  BASE=$pinned BASE_STAND_IN='' BASE_WHY=''
  why=$(pull_base "$pinned") && return 0
  if [[ -z ${STAND_IN:-} ]]; then
    BASE_WHY="its base $pinned cannot be pulled ($why)"
    return 1
  fi
  tag=${pinned%@*}
  tag=${tag##*/}
  name=$STAND_IN_PREFIX/$tag
  if [[ -n ${STAND_IN_REFRESH:-} ]] || ! have_image "$name"; then
    local made
    made=$(make_stand_in "$pinned" "$name") || {
      BASE_WHY="its base $pinned cannot be pulled ($why), and no stand-in could be built: $made"
      return 1
    }
  fi
  if [[ $ENGINE_KIND == podman ]]; then # by digest: what the layer cache was built on
    BASE=$name@$("${ENGINE[@]}" image inspect --format '{{.Digest}}' "$name")
  else
    BASE=$name
  fi
  BASE_STAND_IN=$pinned
  say "$pinned cannot be pulled ($why): building on the stand-in $BASE"
}

# build_image KIND TAG DOCKERFILE [--build-arg ...]: the build's output in $LOGS/build-KIND.log
build_image() {
  local kind=$1 tag=$2 file=$3
  shift 3
  local log=$LOGS/build-$kind.log t0=$SECONDS flags=("${LIMITS[@]}")
  local ca=${PIP_CA:-/etc/ssl/certs/ca-certificates.crt}
  [[ ! -s $ca ]] || flags+=(--secret "id=pip-ca,src=$ca")
  # podman: the bases are here (pulled or stand-ins); Docker's image format, as Docker builds it
  # (the OCI format drops SHELL, so RUN steps would run without pipefail)
  [[ $ENGINE_KIND != podman ]] || flags+=(--pull=never --format docker)
  [[ $ENGINE_KIND != docker ]] || flags+=(--progress=plain)
  say "building $tag ($file, $ENGINE_KIND; the build's output: $log)"
  local rc=0 pid
  env DOCKER_BUILDKIT=1 "${ENGINE[@]}" build "${flags[@]}" -f "$file" -t "$tag" \
    --build-arg IMAGE_TAG="$tag" --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" \
    --build-arg CREATED="$CREATED" "$@" . >"$log" 2>&1 &
  pid=$!
  # its steps as they start, and its errors
  tail -n +1 -f --pid="$pid" "$log" |
    grep --line-buffered -E '^(\[[0-9]+/[0-9]+\] )?STEP|^#[0-9]+ \[|^error: |^Error: ' >&2 || true
  wait "$pid" || rc=$?
  if [[ $rc == 0 ]] && have_image "$tag"; then
    STATUS[$kind]="built $tag: $(size_of "$tag"), $((SECONDS - t0)) s"
    return 0
  fi
  local why
  why=$(grep -m1 '^error: ' "$log" || grep -m1 -i 'error' "$log" || tail -1 "$log")
  STATUS[$kind]="not built ($tag): ${why#error: } (log: $log)"
  return 1
}

# the image's name, with a suffix naming what makes it a test build
tag_for() {
  local kind=$1 suffix=$2 name=$IMAGE
  [[ $kind != cpu ]] || name=$IMAGE-cpu
  echo "$name:$VERSION$suffix"
}

build_cpu() {
  local suffix=
  if ! resolve_base PYTHON_IMAGE docker/Dockerfile.cpu; then
    STATUS[cpu]="not built: $BASE_WHY; make docker-test builds it on a stand-in"
    MISSING=1
    return 1
  fi
  [[ -z $BASE_STAND_IN ]] || suffix=-stand-in
  CPU_TAG=$(tag_for cpu "$suffix")
  build_image cpu "$CPU_TAG" docker/Dockerfile.cpu --build-arg PYTHON_IMAGE="$BASE" \
    --build-arg STAND_IN="$BASE_STAND_IN" || {
    FAILED=1
    return 1
  }
}

build_gpu() {
  local suffix='' python python_for cuda cuda_for trt=install trt_why
  if ! trt_why=$(bash docker/tensorrt.sh check 2>&1); then
    if [[ $MODE == build ]]; then
      STATUS[gpu]="not built: ${trt_why#error: }"
      MISSING=1
      return 1
    fi
    trt=skip
    say "TensorRT: ${trt_why#error: }: the GPU test image is built without it (TENSORRT=skip)"
  fi
  if ! resolve_base PYTHON_IMAGE docker/Dockerfile; then
    STATUS[gpu]="not built: $BASE_WHY"
    MISSING=1
    return 1
  fi
  python=$BASE python_for=$BASE_STAND_IN
  if ! resolve_base CUDA_IMAGE docker/Dockerfile; then
    STATUS[gpu]="not built: $BASE_WHY"
    MISSING=1
    return 1
  fi
  cuda=$BASE cuda_for=$BASE_STAND_IN
  [[ -z $python_for$cuda_for ]] || suffix=-stand-in
  [[ $trt == install ]] || suffix+=-no-tensorrt
  GPU_TAG=$(tag_for gpu "$suffix")
  build_image gpu "$GPU_TAG" docker/Dockerfile --build-arg PYTHON_IMAGE="$python" \
    --build-arg CUDA_IMAGE="$cuda" --build-arg TENSORRT="$trt" \
    --build-arg STAND_IN="$(printf '%s\n' "$cuda_for" "$python_for" | grep . | paste -sd, - | sed 's/,/, /g')" || {
    FAILED=1
    return 1
  }
}

summary() {
  local kind
  echo
  for kind in $IMAGES; do
    echo "docker-$MODE: $kind image: ${STATUS[$kind]:-not attempted}"
  done
}

# sourced (the tests): the functions only, nothing built
[[ ${BASH_SOURCE[0]} == "$0" ]] || return 0

mkdir -p "$LOGS"
MODE=${1:-}
case $MODE in
  build | test) ;;
  *)
    echo "usage: docker/images.sh build|test" >&2
    exit 2
    ;;
esac
[[ $MODE == build ]] || STAND_IN=${STAND_IN:-auto}
pick_engine || exit 2
say "engine: ${ENGINE[*]} (${LIMITS[*]:-default limits})"

t_all=$SECONDS
for kind in $IMAGES; do
  case $kind in
    cpu) build_cpu || true ;;
    gpu) build_gpu || true ;;
    *)
      echo "error: IMAGES: unknown image $kind (cpu, gpu)" >&2
      exit 2
      ;;
  esac
  if [[ $MODE == test && ${STATUS[$kind]:-} == built* ]]; then
    tag=$CPU_TAG level=full
    [[ $kind == cpu ]] || tag=$GPU_TAG level=light
    t0=$SECONDS
    if LOGS=$LOGS/smoke-$kind bash docker/smoke.sh "$tag" "$level"; then
      STATUS[$kind]+="; smoke test passed in $((SECONDS - t0)) s"
    else
      STATUS[$kind]+="; smoke test FAILED after $((SECONDS - t0)) s (logs: $LOGS/smoke-$kind)"
      FAILED=1
    fi
  fi
done
# the stale layers of earlier builds (every layer of ours carries the label; the current ones
# stay: they are the cache of the next build), so the engine's storage does not grow with each
# change of a lock
if [[ $MODE == test || $ENGINE_KIND == podman ]]; then
  "${ENGINE[@]}" image prune -f --filter label=io.github.pbkit.image >/dev/null 2>&1 || true
fi
summary
echo "docker-$MODE: $((SECONDS - t_all)) s in all"
if ((FAILED)); then
  exit 1
elif ((MISSING)); then
  exit 2
fi
