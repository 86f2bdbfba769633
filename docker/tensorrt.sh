#!/usr/bin/env bash
# TensorRT's libraries, pinned by hash. PyPI's tensorrt-cu13-libs is a stub: building it downloads
# the real wheel from NVIDIA's index (https://pypi.nvidia.com/) while pip runs, so a lock's hash
# of the stub never covers the TensorRT that gets installed. requirements/gpu.lock therefore holds
# everything PyPI serves (tensorrt-cu13, TensorRT's Python front, and its bindings among them) and
# requirements/tensorrt.lock holds the one wheel NVIDIA's index serves, by its sha256. Both
# follow the tensorrt-cu13 pin of requirements/gpu.in, the one place TensorRT's version is set.
#
#   docker/tensorrt.sh lock                         write requirements/tensorrt.lock (`make
#                                                   lock-tensorrt`; needs NVIDIA's index)
#   docker/tensorrt.sh check [LOCK_DIR]             exit 0 where `install` can work, else say why in
#                                                   one line (exit 2)
#   docker/tensorrt.sh install PYTHON [LOCK_DIR]    install it into PYTHON's environment, every byte
#                                                   checked against the lock (the GPU image; a GPU
#                                                   machine after gpu.lock); TENSORRT=skip skips it
#
# TENSORRT_INDEX overrides the index (a mirror of it).
set -euo pipefail

INDEX=${TENSORRT_INDEX:-https://pypi.nvidia.com/}
DIST=tensorrt-cu13-libs
FRONT=tensorrt-cu13
HERE=$(cd "$(dirname "$0")" && pwd)

die() {
  echo "error: $*" >&2
  exit 2
}

# the version pinned for $2 in lock or requirements file $1 (empty when none)
pin() { sed -n "s/^$2==\([^ \\;]*\).*/\1/p" "$1" | head -1; }

# empty, or why NVIDIA's index cannot be reached from here (one line)
unreachable() {
  "$1" - "$INDEX$DIST/" <<'EOF' 2>/dev/null || echo "no answer"
import os, ssl, sys, urllib.request
try:  # with pip's CA bundle where one is set (a TLS-inspecting proxy)
    ctx = ssl.create_default_context(cafile=os.environ.get("PIP_CERT") or None)
    urllib.request.urlopen(sys.argv[1], timeout=20, context=ctx).close()
except Exception as e:  # any failure is the answer
    why = str(getattr(e, "reason", "") or e)
    print(why.splitlines()[0] if why else type(e).__name__)
EOF
}

# exit 2 with one line unless tensorrt.lock in $2 holds the wheel for gpu.lock's TensorRT and
# NVIDIA's index answers ($1: a Python to ask with)
ready() {
  local python=$1 dir=$2 want have why
  [[ -f $dir/tensorrt.lock ]] || die "$dir/tensorrt.lock is missing"
  want=$(pin "$dir/gpu.lock" "$FRONT")
  [[ -n $want ]] || die "$dir/gpu.lock pins no $FRONT"
  grep -q -- '--hash=sha256:' "$dir/tensorrt.lock" ||
    die "requirements/tensorrt.lock holds no TensorRT wheel yet: run \`make lock-tensorrt\` where $INDEX is reachable, and commit it (make docker-test builds a test image without TensorRT)"
  have=$(pin "$dir/tensorrt.lock" "$DIST")
  [[ $have == "$want" ]] ||
    die "requirements/tensorrt.lock pins $DIST==${have:-nothing} but gpu.lock pins $FRONT==$want: run \`make lock-tensorrt\`"
  why=$(unreachable "$python")
  [[ -z $why ]] || die "NVIDIA's index $INDEX is not reachable ($why): TensorRT's libraries cannot be installed here; build where it is"
}

TMP=
trap '[[ -z $TMP ]] || rm -rf "$TMP"' EXIT

lock() {
  local root python want tmp wheel sha
  root=$(cd "$HERE/.." && pwd)
  python=$root/.venv/bin/python
  [[ -x $python ]] || python=python3
  want=$(pin "$root/requirements/gpu.in" "$FRONT")
  [[ -n $want ]] || die "requirements/gpu.in pins no $FRONT"
  local why
  why=$(unreachable "$python")
  [[ -z $why ]] || die "NVIDIA's index $INDEX is not reachable ($why): run \`make lock-tensorrt\` where it is"
  TMP=$(mktemp -d)
  tmp=$TMP
  # the x86_64 wheel for CPython 3.11 (the platform and Python every lock is resolved for), never an sdist
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --index-url "$INDEX" --python-version 3.11 --implementation cp --abi cp311 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$tmp" "$DIST==$want" ||
    die "pip could not download $DIST==$want (a wheel) from $INDEX"
  wheel=$(find "$tmp" -name '*.whl' | head -1)
  [[ -n $wheel ]] || die "no wheel of $DIST==$want on $INDEX"
  sha=$(sha256sum "$wheel" | cut -d' ' -f1)
  # what the wheel requires must already be in gpu.lock (it is installed with --no-deps)
  "$python" - "$wheel" "$root/requirements/gpu.lock" <<'EOF' || exit 2
import re, sys, zipfile
from pip._vendor.packaging.requirements import Requirement
wheel, lock = sys.argv[1:]
pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", open(lock).read(), re.M))
pins = {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in pins.items()}
with zipfile.ZipFile(wheel) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    reqs = [l.split(":", 1)[1].strip() for l in z.read(meta).decode().splitlines() if l.startswith("Requires-Dist:")]
env = {"python_version": "3.11", "python_full_version": "3.11.14", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
bad = []
for text in reqs:
    r = Requirement(text)
    if r.marker is not None and not r.marker.evaluate(env):
        continue
    have = pins.get(re.sub(r"[-_.]+", "-", r.name).lower())
    if have is None or not r.specifier.contains(have, prereleases=True):
        bad.append(f"{text} (gpu.lock: {have or 'absent'})")
if bad:
    print(f"error: {wheel.rsplit('/', 1)[-1]} requires what requirements/gpu.lock does not pin: "
          + "; ".join(bad) + " (add it to gpu.in, make lock, then make lock-tensorrt)", file=sys.stderr)
    sys.exit(2)
EOF
  cat >"$root/requirements/tensorrt.lock" <<EOF
# TensorRT's libraries from NVIDIA's index ($INDEX), pinned by hash: PyPI's $DIST is a
# stub that downloads this wheel unchecked. Written by \`make lock-tensorrt\` (docker/tensorrt.sh
# lock) for the $FRONT pin of gpu.in; installed after gpu.lock by docker/tensorrt.sh install.
$DIST==$want \\
    --hash=sha256:$sha
    # $(basename "$wheel")
EOF
  echo "requirements/tensorrt.lock: $DIST==$want $(basename "$wheel") sha256:$sha"
}

case ${1:-} in
  lock)
    lock
    ;;
  check)
    dir=${2:-$(cd "$HERE/.." && pwd)/requirements}
    python=$(cd "$HERE/.." && pwd)/.venv/bin/python
    [[ -x $python ]] || python=python3
    ready "$python" "$dir"
    echo "TensorRT: $DIST==$(pin "$dir/tensorrt.lock" "$DIST") can be installed from $INDEX"
    ;;
  install)
    python=${2:?usage: docker/tensorrt.sh install PYTHON [LOCK_DIR]}
    dir=${3:-$(cd "$HERE/.." && pwd)/requirements}
    if [[ ${TENSORRT:-install} == skip ]]; then
      echo "TensorRT: not installed (TENSORRT=skip): a test build; the tensorrt and ort-trt backends are unavailable in it"
      exit 0
    fi
    [[ ${TENSORRT:-install} == install ]] || die "TENSORRT=${TENSORRT} (install or skip)"
    ready "$python" "$dir"
    "$python" -m pip install --disable-pip-version-check --root-user-action=ignore --no-deps \
      --require-hashes --only-binary=:all: --index-url "$INDEX" -r "$dir/tensorrt.lock"
    "$python" -m pip check
    ;;
  *)
    echo "usage: docker/tensorrt.sh lock | check [LOCK_DIR] | install PYTHON [LOCK_DIR]" >&2
    exit 2
    ;;
esac
