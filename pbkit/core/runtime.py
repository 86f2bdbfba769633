"""Process-wide state, set only inside scopes that restore it.

A run changes state that belongs to the whole process: torch's thread count, the TF32 and
matmul-precision flags, cuDNN switches, the random generators, environment variables, warning
filters, print options, OpenCV's thread count, and what a higher layer registers as a
:class:`Guard` (ultralytics' module settings: :mod:`pbkit.models.ultralytics_env`). In a worker that
runs many trials one after another, whatever one trial leaves behind would change the next.
:func:`isolated` captures all of it on entry and puts it back on exit; every stage runs inside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import random
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

# torch's fp32 precision settings (TF32 and friends), new API only: torch 2.9+ refuses to read the
# legacy flags (allow_tf32, get_float32_matmul_precision) once the new ones were set
PRECISION_FLAGS = (
    "fp32_precision",
    "cuda.matmul.fp32_precision",
    "cudnn.fp32_precision",
    "cudnn.conv.fp32_precision",
    "cudnn.rnn.fp32_precision",
    "mkldnn.fp32_precision",
    "mkldnn.matmul.fp32_precision",
    "mkldnn.conv.fp32_precision",
    "mkldnn.rnn.fp32_precision",
)


def _backend_attr(path: str) -> tuple[Any, str]:
    *parents, leaf = path.split(".")
    obj: Any = torch.backends
    for p in parents:
        obj = getattr(obj, p)
    return obj, leaf


def _cudnn_allow_tf32() -> bool | None:
    """torch's legacy cuDNN TF32 flag, or None where torch refuses to read it (its conv and RNN
    precisions disagree with it)."""
    try:
        return bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:
        return None


def _torch_flags() -> dict[str, Any]:
    flags: dict[str, Any] = {
        "num_threads": torch.get_num_threads(),
        "cudnn.benchmark": torch.backends.cudnn.benchmark,
        "cudnn.deterministic": torch.backends.cudnn.deterministic,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "mha_fastpath": torch.backends.mha.get_fastpath_enabled(),
        "grad_enabled": torch.is_grad_enabled(),
        "default_dtype": str(torch.get_default_dtype()),
        "cudnn.allow_tf32": _cudnn_allow_tf32(),
    }
    for path in PRECISION_FLAGS:
        obj, leaf = _backend_attr(path)
        flags[path] = getattr(obj, leaf, None)
    return flags


def _set_torch_flags(f: dict[str, Any]) -> None:
    """Put back what differs from ``f`` (only that: setting an unchanged precision flag would
    count as using torch's new precision API)."""
    now = _torch_flags()
    if now["num_threads"] != f["num_threads"]:
        torch.set_num_threads(f["num_threads"])
    torch.backends.cudnn.benchmark = f["cudnn.benchmark"]
    torch.backends.cudnn.deterministic = f["cudnn.deterministic"]
    if now["deterministic_algorithms"] != f["deterministic_algorithms"]:
        torch.use_deterministic_algorithms(f["deterministic_algorithms"])
    torch.backends.mha.set_fastpath_enabled(f["mha_fastpath"])
    torch.set_grad_enabled(f["grad_enabled"])
    torch.set_default_dtype(getattr(torch, f["default_dtype"].removeprefix("torch.")))
    if f["cudnn.allow_tf32"] is not None and now["cudnn.allow_tf32"] != f["cudnn.allow_tf32"]:
        torch.backends.cudnn.allow_tf32 = f[
            "cudnn.allow_tf32"
        ]  # (this resets cuDNN's conv and RNN precisions)
        now = _torch_flags()
    for path in PRECISION_FLAGS:
        if now[path] != f[path] and f[path] is not None:
            obj, leaf = _backend_attr(path)
            setattr(obj, leaf, f[path])


def strict_fp32() -> None:
    """fp32 means fp32: no TF32 in convolutions or matmuls (parity gates need it). Call it inside
    :func:`isolated`, which puts the previous precision back.

    cuDNN's legacy flag is turned off first and agrees with the conv and RNN precisions: torch
    reads it (``torch.export`` does, for the dynamo ONNX exporter) and refuses to where they differ.
    """
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    torch.backends.cudnn.rnn.fp32_precision = "ieee"
    torch.backends.mkldnn.matmul.fp32_precision = "ieee"  # oneDNN on CPUs may otherwise use bf16
    torch.backends.mkldnn.conv.fp32_precision = "ieee"


def _print_options() -> dict[str, Any]:
    opts: Any = torch._tensor_str.PRINT_OPTS
    fields = [f.name for f in dataclasses.fields(opts)] if dataclasses.is_dataclass(opts) else None
    torch_opts = {k: getattr(opts, k) for k in fields} if fields else dict(vars(opts))
    return {"numpy": np.get_printoptions(), "torch": torch_opts}


def _set_print_options(opts: dict[str, Any]) -> None:
    np.set_printoptions(**opts["numpy"])
    torch.set_printoptions(**opts["torch"])


def _cv2_threads() -> int | None:
    cv2 = sys.modules.get("cv2")
    return int(cv2.getNumThreads()) if cv2 is not None and hasattr(cv2, "getNumThreads") else None


def set_cv2_threads(n: int | None) -> None:
    """OpenCV's thread count back to ``n`` (where OpenCV is imported)."""
    cv2 = sys.modules.get("cv2")
    if n is not None and cv2 is not None and cv2.getNumThreads() != n:
        cv2.setNumThreads(n)


# environment keys a library ties to state it keeps for the rest of the process (Ray caches its
# authentication mode in its C++ config when it sets RAY_AUTH_MODE): putting the old value back
# would make the two disagree, and the next cluster this process starts would fail
_LIBRARY_OWNED: set[str] = set()


def library_owned_env(key: str) -> None:
    """Leave ``key`` as a library set it when a scope ends (see ``_LIBRARY_OWNED``)."""
    _LIBRARY_OWNED.add(key)


def _restore_environ(saved: dict[str, str]) -> None:
    for k in [k for k in os.environ if k not in saved and k not in _LIBRARY_OWNED]:
        del os.environ[k]
    for k, v in saved.items():
        if os.environ.get(k) != v and k not in _LIBRARY_OWNED:
            os.environ[k] = v


@dataclasses.dataclass(frozen=True)
class Guard:
    """State of a library that a higher layer uses and :func:`isolated` puts back: ``capture()``
    what it is now (comparable with ``==`` for :func:`snapshot`), ``restore(captured)``."""

    name: str
    capture: Callable[[], Any]
    restore: Callable[[Any], None]


_GUARDS: dict[str, Guard] = {}


def guard(g: Guard) -> None:
    """Have every :func:`isolated` scope from now on put ``g``'s state back (a library's settings
    that pbkit changes: :mod:`pbkit.models.ultralytics_env` registers ultralytics' own)."""
    _GUARDS[g.name] = g


@contextlib.contextmanager
def isolated() -> Iterator[None]:
    """Run a block with the process state it found restored afterwards: torch threads and
    numeric flags, every random generator (torch CPU and CUDA, NumPy, ``random``), environment
    variables, warning filters, NumPy and torch print options, OpenCV's thread count, and what the
    registered guards keep (:func:`guard`: ultralytics' settings). Nested scopes are fine."""
    environ = dict(os.environ)
    printing = _print_options()
    cv2_threads = _cv2_threads()
    flags = _torch_flags()
    rng_torch = torch.get_rng_state()
    rng_cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    rng_numpy = np.random.get_state()
    rng_python = random.getstate()
    guarded = {name: g.capture() for name, g in list(_GUARDS.items())}
    try:
        with warnings.catch_warnings():  # the warning filters, as they were
            yield
    finally:
        _restore_environ(environ)
        _set_print_options(printing)
        set_cv2_threads(cv2_threads)
        _set_torch_flags(flags)
        torch.set_rng_state(rng_torch)
        if rng_cuda is not None:
            torch.cuda.set_rng_state_all(rng_cuda)
        np.random.set_state(rng_numpy)
        random.setstate(rng_python)
        for name, value in guarded.items():
            _GUARDS[name].restore(value)


def snapshot() -> dict[str, Any]:
    """What :func:`isolated` guards, in comparable form (random states as digests)."""

    def digest(b: bytes) -> str:
        return hashlib.sha256(b).hexdigest()[:16]

    state: dict[str, Any] = dict(_torch_flags())
    state["rng.torch"] = digest(torch.get_rng_state().numpy().tobytes())
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state["rng.numpy"] = digest(np.asarray(keys).tobytes() + repr((pos, has_gauss, gauss)).encode())
    state["rng.python"] = digest(repr(random.getstate()).encode())
    state["environ"] = dict(os.environ)
    state["warnings.filters"] = repr(warnings.filters)
    state["print_options"] = repr(_print_options())
    state["cv2.threads"] = _cv2_threads()
    for name, g in _GUARDS.items():
        state[name] = g.capture()
    return state
