# shellcheck shell=bash
# The container engine `make docker-build` and `make docker-test` use, chosen here rather than by
# hand (sourced by docker/images.sh and docker/smoke.sh):
# - Docker where a Docker daemon answers (`docker info`);
# - else podman, installed with apt-get where it can be (root or passwordless sudo), as `make test`
#   installs chromium: rootful podman runs runc where it is installed (crun refuses cgroup v1
#   machines), and every build step and container gets the host's own hard limits for open files
#   and processes (podman's defaults, 1048576 files and 4194304 processes, are above what a
#   machine with lower hard limits lets a container set: "error setting rlimit ...").
# CONTAINER_ENGINE=docker|podman forces one.
# Sets: ENGINE (the command and its global options), ENGINE_KIND, LIMITS (per build and run).
# shellcheck disable=SC2034  # (used by the scripts that source it)

as_root() {
  if [[ $(id -u) == 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    return 1
  fi
}

# need COMMAND PACKAGE...: install the Debian packages where COMMAND is missing (apt-get, as root);
# where that cannot be done, return 1 with why in NEED_WHY (one line)
need() {
  local cmd=$1 out
  shift
  NEED_WHY=
  command -v "$cmd" >/dev/null && return 0
  if ! command -v apt-get >/dev/null; then
    NEED_WHY="$cmd is not installed and there is no apt-get to install it ($*)"
    return 1
  fi
  if ! as_root true 2>/dev/null; then
    NEED_WHY="$cmd is not installed, and apt-get needs root or passwordless sudo to install it ($*)"
    return 1
  fi
  echo "installing $* (apt-get) for $cmd" >&2
  if ! out=$({ as_root apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@"; } 2>&1 >/dev/null); then
    NEED_WHY="apt-get could not install $* ($(grep -v '^\s*$' <<<"$out" | tail -1 | cut -c1-200))"
    return 1
  fi
  command -v "$cmd" >/dev/null || {
    NEED_WHY="apt-get installed $* but there is still no $cmd"
    return 1
  }
}

docker_answers() {
  command -v docker >/dev/null && ! docker --version 2>/dev/null | grep -qi podman &&
    docker info >/dev/null 2>&1
}

pick_engine() {
  ENGINE=()
  LIMITS=()
  local want=${CONTAINER_ENGINE:-}
  if [[ $want == docker ]] || { [[ -z $want ]] && docker_answers; }; then
    docker_answers || { echo "error: CONTAINER_ENGINE=docker but no Docker daemon answers (docker info)" >&2; return 2; }
    ENGINE=(docker)
    ENGINE_KIND=docker
    return 0
  fi
  if ! need podman podman runc; then
    echo "error: no container engine: no Docker daemon answers (docker info), and $NEED_WHY:" \
      "install podman and runc (apt-get install podman runc), or start Docker" >&2
    return 2
  fi
  ENGINE=(podman)
  ENGINE_KIND=podman
  if command -v runc >/dev/null; then
    ENGINE+=(--runtime runc)
  fi
  local files procs pid_max
  files=$(ulimit -Hn)
  procs=$(ulimit -Hu)
  pid_max=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo unlimited)
  # podman gives its own processes at most pid_max processes: a container cannot be given more
  if [[ $procs == unlimited ]] || { [[ $pid_max != unlimited ]] && ((pid_max < procs)); }; then
    procs=$pid_max
  fi
  [[ $files == unlimited ]] || LIMITS+=(--ulimit "nofile=$files:$files")
  [[ $procs == unlimited ]] || LIMITS+=(--ulimit "nproc=$procs:$procs")
}
