"""Building a runner while watching memory: NVML used memory before / peak (sampled) / after, torch
peak allocated and reserved, the process RSS, and the backend's own figures (engine memory)."""

from __future__ import annotations

from typing import Any

from pbkit.machine import gpumon
from pbkit.measure.backends import Backend
from pbkit.measure.protocol import warm_up
from pbkit.measure.runner import Runner, RunSpec


def build_runner(
    be: Backend, spec: RunSpec, settings: dict[str, Any], handle: Any, track: bool
) -> tuple[Runner, dict[str, Any] | None, tuple[float, int]]:
    """Make a runner and warm it up (the first call timed apart), measuring memory meanwhile:
    NVML used memory before / peak (sampled) / after, torch peak allocated and reserved, RSS."""
    import torch

    cuda = be.device == "cuda"
    if not track:
        runner = be.make(spec)
        return (
            runner,
            None,
            warm_up(runner, float(settings["warmup_s"]), int(settings["warmup_iters"])),
        )
    import psutil

    proc = psutil.Process()
    mem: dict[str, Any] = {"rss_before_bytes": proc.memory_info().rss}
    if cuda:
        torch.cuda.synchronize(spec.device_index)
        torch.cuda.reset_peak_memory_stats(spec.device_index)
        mem.update(
            nvml_used_before_bytes=gpumon.used_memory(handle),
            torch_allocated_before_bytes=torch.cuda.memory_allocated(spec.device_index),
        )
    with gpumon.Sampler(handle if cuda else None, 0.005) as sampler:
        runner = be.make(spec)
        warm = warm_up(runner, float(settings["warmup_s"]), int(settings["warmup_iters"]))
    mem.update(
        rss_peak_bytes=sampler.rss_peak,
        rss_after_bytes=proc.memory_info().rss,
        samples=sampler.samples,
    )
    if cuda:
        torch.cuda.synchronize(spec.device_index)
        mem.update(
            nvml_used_peak_bytes=sampler.nvml_peak,
            nvml_used_after_bytes=gpumon.used_memory(handle),
            torch_peak_allocated_bytes=torch.cuda.max_memory_allocated(spec.device_index),
            torch_peak_reserved_bytes=torch.cuda.max_memory_reserved(spec.device_index),
        )
        if handle is None:
            mem["nvml"] = "unavailable (no NVML handle; see env.unavailable)"
    mem.update(runner.memory())
    return runner, mem, warm
