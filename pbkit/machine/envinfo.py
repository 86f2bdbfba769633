"""The machine record: collected, never typed by hand. Fields that cannot be read are null, with
the reason under ``unavailable``. Embedded in every record and printed by ``pbkit env``.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from pbkit import __version__
from pbkit.core.fileio import sha256_file
from pbkit.machine import gpumon

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCK_FILES = (
    "requirements/base.lock",
    "requirements/gpu.lock",
    "requirements/tensorrt.lock",
    "requirements/dev.lock",
)
PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "torch-pruning",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "onnxruntime-gpu",
    "ultralytics",
    "numpy",
    "nvidia-ml-py",
    "pydantic",
    "click",
    "triton",
)
TENSORRT_DISTS = (
    "tensorrt",
    "tensorrt-cu13",
    "tensorrt-cu12",
)  # one of them provides `import tensorrt`


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("PBKIT_REVISION")


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine(env: dict[str, Any]) -> str:
    """A short name of the machine a record was measured on: the GPU, else the CPU and cores."""
    if env.get("gpus"):
        return str(env["gpus"][0]["name"])
    host = env.get("host", {})
    return f"{host.get('cpu') or 'cpu'} x{host.get('cores_logical') or '?'}"


def _first_version(dists: tuple[str, ...]) -> str | None:
    for d in dists:
        try:
            return md.version(d)
        except md.PackageNotFoundError:
            continue
    return None


def collect() -> dict[str, Any]:
    unavailable: dict[str, str] = {}
    versions: dict[str, str | None] = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
            unavailable[f"software.{pkg}"] = "not installed"
    versions["tensorrt"] = _first_version(TENSORRT_DISTS)
    if versions["tensorrt"] is None:
        unavailable["software.tensorrt"] = f"not installed (none of {', '.join(TENSORRT_DISTS)})"
    versions["python"] = platform.python_version()

    import psutil
    import torch

    versions["torch_cuda"] = torch.version.cuda
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    versions["cudnn"] = str(cudnn) if cudnn else None
    try:
        os.environ["ORT_DISABLE_TELEMETRY"] = "1"  # before ONNX Runtime starts: no telemetry
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    except ImportError:
        providers = []
    locks: dict[str, str | None] = {}
    lock_dir = (
        Path(os.environ["PBKIT_LOCK_DIR"])
        if os.environ.get("PBKIT_LOCK_DIR")
        else REPO_ROOT / "requirements"
    )
    for rel in LOCK_FILES:
        p = lock_dir / Path(rel).name
        locks[rel] = sha256_file(p) if p.is_file() else None
        if locks[rel] is None:
            unavailable[f"lock.{rel}"] = f"not found in {lock_dir} (set PBKIT_LOCK_DIR)"

    gpus: list[dict[str, Any]] = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            uuid = str(getattr(p, "uuid", "") or "") or None
            props = {
                "index": i,
                "name": p.name,
                "compute_capability": f"{p.major}.{p.minor}",
                "memory_bytes": p.total_memory,
                "uuid": f"GPU-{uuid}" if uuid and not uuid.startswith("GPU-") else uuid,
                "multiprocessors": p.multi_processor_count,
            }
            gpus.append(gpumon.gpu_record(i, props, unavailable))
    else:
        unavailable["gpu"] = "torch.cuda.is_available() is False"

    vm = psutil.virtual_memory()
    return {
        "kit_version": __version__,
        "git_revision": git_revision(),
        "host": {
            "hostname": platform.node(),
            "cpu": _cpu_model(),
            "cores_logical": psutil.cpu_count(logical=True),
            "cores_physical": psutil.cpu_count(logical=False),
            "cpu_affinity": (
                len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
            ),
            "memory_bytes": vm.total,
            "os": platform.platform(),
            "kernel": platform.release(),
            "machine": platform.machine(),
        },
        "gpus": gpus,
        "software": versions,
        "onnxruntime_providers": providers,
        "torch_threads": torch.get_num_threads(),
        "lock_sha256": locks,
        "container": {
            "image": os.environ.get("PBKIT_IMAGE"),  # the tag the image was built as
            "digest": os.environ.get("PBKIT_IMAGE_DIGEST"),
            "base": os.environ.get("PBKIT_IMAGE_BASE"),  # the base it was built on (or stand-in)
        },
        "unavailable": unavailable,
    }
