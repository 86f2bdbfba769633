#!/usr/bin/env bash
# Run an image as a user would and check what they would see (make docker-test; the images workflow
# runs it on the published CPU image).
#
#   docker/smoke.sh IMAGE full    the CPU image: --help, env --json (the record names the tag and
#                                 the base), Python's extension modules, list backends, the
#                                 resnet18 and YOLOv8 quick runs, a second bench of the same run
#                                 (and the same as another user: one line, exit 2), a report
#   docker/smoke.sh IMAGE light   the GPU image (no GPU here): --help, env --json, Python's extension
#                                 modules, list backends (every GPU backend unavailable, with why)
#
# Every container runs with --network none, as a non-root host user (--user "$(id -u):$(id -g)";
# as root, TEST_UID, default 1000) on a results folder that user owns. Checked after: the results
# are readable and removable by that user and follow its umask (no file without g+r,o+r under 022);
# nothing tried the network: rootful podman runs under strace (-f, from the engine down to the
# container's processes), and no process connected or sent to an internet address (AF_INET or
# AF_INET6) nor opened an internet stream socket (and a container that does try is caught: the
# check's own control); OpenVINO's telemetry is declined; every output is free of name-resolution
# and telemetry messages; ONNX Runtime left no telemetry store (~/.cache/Microsoft) in the container. Logs: $LOGS (build/docker/smoke).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
# shellcheck source=docker/engine.sh
source docker/engine.sh

IMAGE=${1:?usage: docker/smoke.sh IMAGE [full|light]}
LEVEL=${2:-full}
LOGS=${LOGS:-build/docker/smoke}
CONFIGS=/opt/pbkit/share/configs/bench
rm -rf "$LOGS"
mkdir -p "$LOGS"
LOGS=$(cd "$LOGS" && pwd)
pick_engine || exit 2

FAILS=0
fail() {
  echo "FAIL: $*" >&2
  FAILS=$((FAILS + 1))
}
ok() { echo "ok: $*" >&2; }

# the host user the containers run as
if [[ $(id -u) != 0 ]]; then
  uid=$(id -u) gid=$(id -g)
  as_user=()
else
  uid=${TEST_UID:-1000} gid=${TEST_GID:-${TEST_UID:-1000}}
  as_user=(setpriv --reuid="$uid" --regid="$gid" --clear-groups --)
fi
results=$(mktemp -d "${TMPDIR:-/tmp}/pbkit-docker-test.XXXXXX")
chmod 0755 "$results"
[[ $(id -u) != 0 ]] || chown "$uid:$gid" "$results"
trap 'rm -rf "$results"' EXIT

TRACE=0
if [[ $ENGINE_KIND == podman && $(id -u) == 0 ]] && need strace strace; then
  TRACE=1
else
  echo "note: network attempts are not traced here (rootful podman and strace trace them); the" \
    "containers still run with --network none" >&2
fi

# crun NAME EXPECTED_RC [--as-image-user] [--keep] ARGS...: one container; its output in $LOGS/NAME.*
crun() {
  local name=$1 want=$2 user=(--user "$uid:$gid") keep=(--rm) trace=() rc t0=$SECONDS
  shift 2
  if [[ ${1:-} == --as-image-user ]]; then
    user=()
    shift
  fi
  if [[ ${1:-} == --keep ]]; then
    keep=(--name "pbkit-smoke-$$-$name")
    shift
  fi
  local entry=()
  if [[ ${1:-} == --entrypoint ]]; then
    entry=(--entrypoint "$2")
    shift 2
  fi
  local syscalls=socket,connect,sendto,sendmsg,sendmmsg
  ((TRACE)) && trace=(strace -f -qq --seccomp-bpf -e "trace=$syscalls" -e signal=none
    -o "$LOGS/$name.strace")
  "${trace[@]}" "${ENGINE[@]}" run "${keep[@]}" --network none "${LIMITS[@]}" "${user[@]}" \
    "${entry[@]}" -v "$results:/results" "$IMAGE" "$@" >"$LOGS/$name.out" 2>"$LOGS/$name.err"
  rc=$?
  echo "$name: exit $rc in $((SECONDS - t0)) s: $(head -1 <<<"${*:1:4}")" >>"$LOGS/times.txt"
  if [[ $rc != "$want" ]]; then
    fail "$name: exit $rc, not $want ($*): $(grep -v '^\s*$' "$LOGS/$name.err" | tail -2 | cut -c1-300)"
    return 1
  fi
  ok "$name (exit $rc, $((SECONDS - t0)) s)"
}

# json NAME EXPR: evaluate a Python expression on the JSON that NAME printed (as `d`); prints it
json() {
  python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' \
    "$LOGS/$1.out" "$2"
}

# ---------------------------------------------------------------------------------- the runs
if crun help 0 --help; then
  grep -q "Usage: pbkit" "$LOGS/help.out" || fail "help: no usage"
fi

if crun env 0 env --json; then
  [[ $(json env 'd["container"]["image"]') == "$IMAGE" ]] ||
    fail "env: container.image is $(json env 'd["container"]["image"]'), not the tag built, $IMAGE"
  [[ $(json env 'd["container"]["base"] is not None') == True ]] || fail "env: no container.base"
  lock=requirements/base.lock
  [[ $LEVEL == full ]] || lock=requirements/gpu.lock
  [[ $(json env "d['lock_sha256']['$lock'] is not None") == True ]] || fail "env: no hash of $lock"
  echo "env: torch $(json env 'd["software"]["torch"]'), onnxruntime providers" \
    "$(json env '",".join(d["onnxruntime_providers"])'), base $(json env 'd["container"]["base"]')" >&2
fi

# the interpreter's extension modules load (the GPU image copies Python onto another base: a
# library its modules link against and that base lacks shows here)
crun python-modules 0 --entrypoint python -c 'import importlib, sys
bad = []
for m in "_ssl _hashlib _ctypes _sqlite3 _decimal _lzma _bz2 zlib readline _curses _uuid pyexpat".split():
    try:
        importlib.import_module(m)
    except ImportError as e:
        bad.append(f"{m}: {e}")
print("\n".join(bad), file=sys.stderr)
sys.exit(1 if bad else 0)'

# OpenVINO's telemetry is declined (import openvino would send an event otherwise), and importing
# it tries nothing (traced: the sender would be a process of its own, given time to run)
crun openvino-telemetry 0 --entrypoint python -c 'import sys, time
from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
if OptInChecker().check(False, True) != ConsentCheckResult.DECLINED:
    sys.exit("OpenVINO telemetry is not declined (~/intel/openvino_telemetry)")
import openvino
time.sleep(3)'

if crun backends 0 list backends --json; then
  # no C++ compiler in the images: torch.compile on the CPU is listed unavailable, with the reason
  why=$(json backends 'next(b for b in d["backends"] if b["name"] == "torch-compile-cpu")["reason"]')
  [[ $why == *"C++ compiler"* ]] || fail "backends: torch-compile-cpu is not unavailable for want of a compiler: $why"
  if [[ $LEVEL == light ]]; then
    for b in torch-cuda ort-cuda ort-trt tensorrt; do
      r=$(json backends "next(b for b in d['backends'] if b['name'] == '$b')['reason']")
      [[ $r != None ]] || fail "backends: $b is listed available without a GPU"
      echo "backends: $b: $r" >&2
    done
  fi
fi

if [[ $LEVEL == full ]]; then
  run_id() { sed -n 's/^run: *//p' "$LOGS/$1.out" | tail -1; }
  crun resnet18 0 --keep run "$CONFIGS/resnet18_cifar.yaml" --set bench.quick=true
  resnet=$(run_id resnet18)
  if [[ -n $resnet && -f $results/runs/$resnet/record.json ]]; then
    # the record names the tag built and the base (a stand-in says so: make docker-test's images)
    named=$(python3 -c 'import json, sys; c = json.load(open(sys.argv[1]))["env"]["container"]
print(c["image"]); print(c["base"])' "$results/runs/$resnet/record.json")
    [[ $(head -1 <<<"$named") == "$IMAGE" ]] || fail "resnet18: the record names $(head -1 <<<"$named"), not $IMAGE"
    base=$(tail -1 <<<"$named")
    if [[ $base == None ]] || { [[ $IMAGE == *-stand-in* ]] && [[ $base != *"(stand-in for "* ]]; }; then
      fail "resnet18: the record's base does not say what it was built on: $base"
    else
      echo "resnet18: the record names $IMAGE, on $base" >&2
    fi
  else
    fail "resnet18: no record on the host (run ${resnet:-?})"
  fi
  crun yolov8 0 run "$CONFIGS/yolov8.yaml" --set bench.quick=true
  yolo=$(run_id yolov8)
  [[ -n $yolo && -f $results/runs/$yolo/record.json ]] || fail "yolov8: no record on the host (run ${yolo:-?})"
  # the same run again (a second `bench`), as the same user
  crun bench-again 0 bench "/results/runs/$resnet"
  # ... and as the image's own user (the manual's second command once had no --user): the run's
  # folder is not its to write: one line, exit 2, never an internal error
  crun bench-other-user 2 --as-image-user bench "/results/runs/$resnet"
  if [[ $(grep -c '^error: ' "$LOGS/bench-other-user.err") != 1 ]] ||
    grep -q 'internal error\|Traceback' "$LOGS/bench-other-user.err"; then
    fail "bench-other-user: not one error line: $(tail -3 "$LOGS/bench-other-user.err")"
  else
    echo "bench-other-user: $(grep '^error: ' "$LOGS/bench-other-user.err" | cut -c1-200)" >&2
  fi
  crun report 0 report /results/runs --format md
  grep -q "resnet18" "$LOGS/report.out" || fail "report: resnet18 is not in the leaderboard"
  crun report-html 0 report /results/runs --format html -o /results/report.html
  [[ -s $results/report.html ]] || fail "report-html: no /results/report.html on the host"

  # ONNX Runtime's telemetry store: none in the container the resnet18 run left behind
  changes=$("${ENGINE[@]}" diff "pbkit-smoke-$$-resnet18" 2>&1)
  "${ENGINE[@]}" rm -f "pbkit-smoke-$$-resnet18" >/dev/null 2>&1
  echo "$changes" >"$LOGS/resnet18.diff"
  if grep -qi 'Microsoft\|onnxruntime' <<<"$changes"; then
    fail "resnet18: ONNX Runtime wrote its telemetry store: $(grep -i 'Microsoft\|onnxruntime' <<<"$changes" | head -2 | xargs)"
  else
    ok "no telemetry store in the container ($(wc -l <<<"$changes") paths changed outside /results)"
  fi

  # ----------------------------------------------------------- the results, for the host user
  unreadable=$("${as_user[@]}" find "$results" ! -readable 2>&1 | head -3)
  [[ -z $unreadable ]] || fail "results: not readable by uid $uid: $unreadable"
  private=$(find "$results" -type f ! -perm -044 | head -3)
  [[ -z $private ]] || fail "results: files without group/other read under umask 022: $private"
  files=$(find "$results" -type f | wc -l)
  if "${as_user[@]}" rm -rf "$results/runs" "$results/report.html" && [[ -z $(ls -A "$results") ]]; then
    ok "results: $files files, readable and removable by uid $uid, modes from the umask"
  else
    fail "results: not removable by uid $uid: $(find "$results" -mindepth 1 | head -3 | xargs)"
  fi
fi

# ------------------------------------------------------------------------- network attempts
# (the strace of each container: the engine, conmon, runc and every process in the container)
ATTEMPT='sa_family=AF_INET6?[,}]|socket\(AF_INET6?, SOCK_STREAM'
if ((TRACE)); then
  # the check itself, first: a container that does try (a name lookup, a connection) is caught
  crun canary 0 --entrypoint python -c 'import socket
for f in (lambda: socket.getaddrinfo("pypi.org", 443), lambda: socket.create_connection(("192.0.2.1", 443), 2)):
    try: f()
    except OSError: pass'
  if grep -qE "$ATTEMPT" "$LOGS/canary.strace" 2>/dev/null; then
    ok "network: the check catches a container that tries ($(grep -cE "$ATTEMPT" "$LOGS/canary.strace") attempts traced)"
  else
    fail "network: the check missed the attempts of a container that tries (canary.strace)"
  fi
  mv "$LOGS/canary.strace" "$LOGS/canary.strace-control" 2>/dev/null
  # an attempt: a connect or a send to an internet address (a DNS lookup is one), or a stream
  # socket of the internet family; an AF_INET datagram socket that is never connected nor sent on
  # is libuuid reading the interfaces' MAC address by ioctl (uuid.getnode(): ultralytics' settings)
  traces=("$LOGS"/*.strace)
  inet=$(cat "${traces[@]}" | grep -E "$ATTEMPT" | head -5)
  calls=$(cat "${traces[@]}" | grep -c '(' || true)
  local_inet=$(cat "${traces[@]}" | grep -c 'socket(AF_INET6\?, SOCK_DGRAM' || true)
  if [[ -n $inet ]]; then
    fail "network: an internet address was tried: $inet"
  else
    ok "network: no connect or send to an internet address in ${#traces[@]} traced containers" \
      "($calls socket calls; $local_inet internet datagram sockets never connected nor sent on)"
  fi
fi
hits=$(grep -i -h -E 'name resolution|Name or service not known|getaddrinfo|Network is unreachable|telemetry|urlopen|Max retries|ConnectionError|Failed to resolve' "$LOGS"/*.out "$LOGS"/*.err | head -3)
[[ -z $hits ]] || fail "outputs: network or telemetry messages: $hits"

cat "$LOGS/times.txt" >&2
if ((FAILS)); then
  echo "smoke test of $IMAGE: $FAILS failed (logs: $LOGS)" >&2
  exit 1
fi
echo "smoke test of $IMAGE ($LEVEL): passed (logs: $LOGS)" >&2
