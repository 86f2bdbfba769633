"""Building a runner while watching memory: NVML used memory before / peak (sampled) / after, torch
peak allocated and reserved, the process RSS, and the backend's own figures (engine memory)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pbkit.machine import gpumon
from pbkit.measure.backends import Backend
from pbkit.measure.protocol import warm_up
from pbkit.measure.runner import Runner, RunSpec
from pbkit.measure.settings import BenchSettings


@dataclass(kw_only=True)
class GpuMemory:
    """What a CUDA runner took while it was built and warmed up (bytes)."""

    nvml_used_before_bytes: int | None  # None: no NVML handle
    torch_allocated_before_bytes: int
    nvml_used_peak_bytes: int | None  # sampled every 5 ms
    nvml_used_after_bytes: int | None
    torch_peak_allocated_bytes: int
    torch_peak_reserved_bytes: int
    nvml: str | None = None  # why the NVML figures are missing


@dataclass(kw_only=True)
class MemoryFigures:
    """A runner's memory, as the record's ``latency[].memory`` holds it."""

    rss_before_bytes: int
    rss_peak_bytes: int  # sampled every 5 ms
    rss_after_bytes: int
    samples: int  # how many times the sampler looked
    gpu: GpuMemory | None = None
    backend: dict[str, Any] = field(default_factory=dict)  # the runner's own (Runner.memory)

    def as_dict(self) -> dict[str, Any]:
        """The figures in the record's layout (the GPU's among the host's, as measured)."""
        out: dict[str, Any] = {"rss_before_bytes": self.rss_before_bytes}
        g = self.gpu
        if g is not None:
            out.update(
                nvml_used_before_bytes=g.nvml_used_before_bytes,
                torch_allocated_before_bytes=g.torch_allocated_before_bytes,
            )
        out.update(
            rss_peak_bytes=self.rss_peak_bytes,
            rss_after_bytes=self.rss_after_bytes,
            samples=self.samples,
        )
        if g is not None:
            out.update(
                nvml_used_peak_bytes=g.nvml_used_peak_bytes,
                nvml_used_after_bytes=g.nvml_used_after_bytes,
                torch_peak_allocated_bytes=g.torch_peak_allocated_bytes,
                torch_peak_reserved_bytes=g.torch_peak_reserved_bytes,
            )
            if g.nvml is not None:
                out["nvml"] = g.nvml
        out.update(self.backend)
        return out


def build_runner(
    be: Backend, spec: RunSpec, settings: BenchSettings, handle: Any, track: bool
) -> tuple[Runner, MemoryFigures | None, tuple[float, int]]:
    """Make a runner and warm it up (the first call timed apart), measuring memory meanwhile:
    NVML used memory before / peak (sampled) / after, torch peak allocated and reserved, RSS."""
    import torch

    cuda = be.device == "cuda"
    if not track:
        runner = be.make(spec)
        return runner, None, warm_up(runner, settings.warmup_s, settings.warmup_iters)
    import psutil

    proc = psutil.Process()
    rss_before = proc.memory_info().rss
    nvml_before, torch_before = None, 0
    if cuda:
        torch.cuda.synchronize(spec.device_index)
        torch.cuda.reset_peak_memory_stats(spec.device_index)
        nvml_before = gpumon.used_memory(handle)
        torch_before = torch.cuda.memory_allocated(spec.device_index)
    with gpumon.Sampler(handle if cuda else None, 0.005) as sampler:
        runner = be.make(spec)
        warm = warm_up(runner, settings.warmup_s, settings.warmup_iters)
    mem = MemoryFigures(
        rss_before_bytes=rss_before,
        rss_peak_bytes=sampler.rss_peak,
        rss_after_bytes=proc.memory_info().rss,
        samples=sampler.samples,
    )
    if cuda:
        torch.cuda.synchronize(spec.device_index)
        mem.gpu = GpuMemory(
            nvml_used_before_bytes=nvml_before,
            torch_allocated_before_bytes=torch_before,
            nvml_used_peak_bytes=sampler.nvml_peak,
            nvml_used_after_bytes=gpumon.used_memory(handle),
            torch_peak_allocated_bytes=torch.cuda.max_memory_allocated(spec.device_index),
            torch_peak_reserved_bytes=torch.cuda.max_memory_reserved(spec.device_index),
            nvml="unavailable (no NVML handle; see env.unavailable)" if handle is None else None,
        )
    mem.backend = dict(runner.memory())
    return runner, mem, warm
