"""Timings for latency-targeted pruning, on any backend ``pbkit bench`` has: the per-layer latency
table (each tabled layer over its width grid, cached by machine, backend, precision, batch and
layer signature) and the closed loop's end-to-end measurement of the pruned model against the
dense one, with the bench protocol (alternating blocks, the speed-up's bootstrap interval).

A layer or a model is turned into what the backend runs: the module itself (torch backends), an
ONNX file (ONNX Runtime) or a TensorRT engine built from it (one build per timed width: that is
what a TensorRT table costs).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata as md
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pbkit.core import config
from pbkit.core.console import Steps
from pbkit.core.errors import PbkitError
from pbkit.core.fileio import atomic_write_json, cache_dir
from pbkit.export.onnx import to_onnx
from pbkit.machine import envinfo
from pbkit.measure import protocol
from pbkit.measure.backends import Backend
from pbkit.measure.results import PointResult
from pbkit.measure.runner import Runner, RunSpec
from pbkit.measure.settings import BenchSettings, for_device
from pbkit.models import counts
from pbkit.pruning import latency
from pbkit.pruning.latency import Cost, Layer, Measured, Table

TABLE_FORMAT = 2  # 2: timings less the per-call overhead
# one layer at one width: short, since hundreds are timed; the whole model uses the bench settings
LAYER_SETTINGS = BenchSettings(
    warmup_s=0.01,
    warmup_iters=5,
    min_time_s=0.04,
    min_iters=15,
    rounds=1,
    block_s=0.04,
    ci_target=None,
    max_time_s=0.04,
    cov_limit=1.0,
    max_repeats=1,
)
LAYER_QUICK = dataclasses.replace(
    LAYER_SETTINGS,
    warmup_iters=2,
    min_time_s=0.005,
    min_iters=5,
    block_s=0.005,
    max_time_s=0.005,
)


def default_cache() -> Path:
    return cache_dir("latency-tables")


@dataclass
class Timings:
    """Times layers and models on one backend, precision, batch and thread count."""

    backend: Backend
    precision: str
    batch: int
    threads: int
    model_settings: BenchSettings  # the bench protocol's (cpu or gpu, quick honoured)
    input_size: int
    quick: bool = False
    exporter: str = "dynamo"
    opset: int = 18
    anchors: int = 6
    cache_dir: Path | None = None  # None: no cache
    device_index: int = 0
    trt: dict[str, Any] = field(default_factory=dict)  # workspace_bytes, optimization_level
    quiet: bool = True
    table_built: Table | None = None  # the last table made (saved with the run)

    @classmethod
    def of(
        cls,
        cfg: config.Config,
        be: Backend,
        precision: str,
        batch: int,
        input_size: int,
        quiet: bool,
    ) -> Timings:
        """Timings as a configuration asks for them: the bench's threads and protocol, the
        export's exporter and opset, the latency table's anchors and cache, TensorRT's build."""
        p, t = cfg.prune, cfg.export.tensorrt
        return cls(
            backend=be,
            precision=precision,
            batch=batch,
            threads=cfg.bench.threads or protocol.default_threads(),
            model_settings=for_device(cfg.bench, be.device),
            input_size=input_size,
            quick=cfg.bench.quick,
            exporter=cfg.export.exporter,
            opset=cfg.export.opset,
            anchors=p.latency.anchors,
            cache_dir=Path(p.latency.cache).expanduser() if p.latency.cache else default_cache(),
            device_index=cfg.bench.device,
            quiet=quiet,
            trt={
                "workspace_bytes": int(t.workspace_gib * (1 << 30)),
                "optimization_level": t.optimization_level,
            },
        )

    def __post_init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="pbkit-latency-"))
        self.count = 0
        self.torch_threads = (
            torch.get_num_threads()
        )  # the CPU runners set theirs; pruning gets its own back

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    # --- artifacts and runners ---

    def _runner(
        self, module: nn.Module, x: torch.Tensor, exporter: str, keep: str | None = None
    ) -> Runner:
        """A runner for ``module`` on the backend; ``keep`` names an artifact made once and reused
        (the dense model, measured at every check)."""
        self.count += 1
        stem = self.work / (f"keep-{keep}" if keep else f"m{self.count}")
        module = module.eval()
        path = stem.with_suffix(
            {"model": ".pt", "onnx": ".onnx", "engine": ".plan"}[self.backend.artifact]
        )
        if self.backend.artifact != "model" and not (keep and path.is_file()):
            onnx_path = stem.with_suffix(".onnx")
            fp16 = (
                self.backend.artifact == "engine" and self.precision == "fp16" and _trt_fp16_onnx()
            )
            to_onnx(
                copy.deepcopy(module).half() if fp16 else module,
                self.input_size,
                onnx_path,
                self.opset,
                exporter,
                dtype=torch.float16 if fp16 else torch.float32,
                example=x,
            )
            if self.backend.artifact == "engine":
                from pbkit.export import tensorrt

                tensorrt.build_engine(
                    onnx_path,
                    path,
                    tensorrt.BuildOptions(
                        precision=self.precision, batches=(self.batch,), **self.trt
                    ),
                )
        spec = RunSpec(
            path=path,
            x=x,
            precision=self.precision,
            threads=self.threads,
            cache_dir=self.work / "trt-cache",
            device_index=self.device_index,
            module=module if self.backend.artifact == "model" else None,
        )
        return self.backend.make(spec)

    def _measure(self, runners: dict[str, Runner], settings: BenchSettings) -> PointResult:
        cpu = self.backend.device == "cpu"
        try:
            with protocol.pinned(self.threads if cpu else 0):
                return protocol.measure_alternating(dict[str, protocol.Runner](runners), settings)
        finally:
            for r in runners.values():
                r.close()
            torch.set_num_threads(self.torch_threads)
            for f in self.work.iterdir():
                if f.is_file() and not f.name.startswith("keep-"):
                    f.unlink()

    def time_layer(self, layer: Layer, cin: int, cout: int) -> float:
        """Median ms of one layer at these widths, on the backend."""
        with (
            torch.random.fork_rng()
        ):  # the layer's random weights leave the pruning run's RNG as it was
            torch.manual_seed(0)
            module = layer.module(cin, cout)
        runner = self._runner(module, layer.input(cin), "torchscript")
        return self._measure({"layer": runner}, self._layer_settings())["layer"].median_ms

    def time_overhead(self, x: torch.Tensor) -> float:
        """Median ms of a call that does next to nothing with ``x``: the backend's per-call overhead
        (feeding the input, launching, returning), which the table takes off its timings."""
        runner = self._runner(_Null(), x, "torchscript")
        return self._measure({"null": runner}, self._layer_settings())["null"].median_ms

    def _layer_settings(self) -> BenchSettings:
        return LAYER_QUICK if self.quick else LAYER_SETTINGS

    def example(self) -> torch.Tensor:
        return counts.example_input(self.input_size, batch=self.batch, seed=2)

    def time_model(self, model: nn.Module) -> float:
        """Median ms of the whole model, alone (the table's scale)."""
        runner = self._runner(model, self.example(), self.exporter)
        settings = dataclasses.replace(self.model_settings, ci_target=None)
        return self._measure({"model": runner}, settings)["model"].median_ms

    def pair(self, dense: nn.Module, pruned: nn.Module) -> Measured:
        """The pruned model against the dense one, alternating, as ``pbkit bench`` measures them."""
        t0 = time.perf_counter()
        x = self.example()
        runners = {
            "dense": self._runner(dense, x, self.exporter, keep="dense"),
            "pruned": self._runner(pruned, x, self.exporter),
        }
        res = self._measure(runners, self.model_settings)
        p, sp = res["pruned"], res.speedup
        assert sp is not None  # two runners
        return Measured(
            speedup=sp.value,
            ci=(sp.ci[0], sp.ci[1]),
            dense_ms=res["dense"].median_ms,
            pruned_ms=p.median_ms,
            cov=p.cov,
            seconds=time.perf_counter() - t0,
            extra={
                "blocks": sp.how.blocks,
                "stop": sp.how.stop,
                "relative_half_width": sp.how.relative_half_width,
            },
        )

    # --- the table ---

    def key(self) -> dict[str, Any]:
        env = envinfo.collect()
        versions = {}
        for dist in (
            "torch",
            "onnxruntime",
            "onnxruntime-gpu",
            "tensorrt",
            "tensorrt-cu12",
            "tensorrt-cu13",
        ):
            try:
                versions[dist] = md.version(dist)
            except md.PackageNotFoundError:
                continue
        gpu = (
            env["gpus"][self.device_index]["name"]
            if self.backend.device == "cuda" and env.get("gpus")
            else None
        )
        return {
            "format": TABLE_FORMAT,
            "cpu": env["host"].get("cpu"),
            "cores": env["host"].get("cores_logical"),
            "gpu": gpu,
            "backend": self.backend.name,
            "precision": self.precision,
            "batch": self.batch,
            "threads": self.threads,
            "quick": self.quick,
            "anchors": self.anchors,
            "versions": versions,
        }

    def _cache_file(self, key: dict[str, Any]) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return self.cache_dir / f"{self.backend.name}-{self.precision}-b{self.batch}-{digest}.json"

    def table(self, model: nn.Module) -> Table:
        """The model's latency table: cached entries reused, the others timed (and cached), the
        scale set from the whole dense model's measured latency."""
        key = self.key()
        path = self._cache_file(key)
        cached: dict[str, Cost] = {}
        if path is not None and path.is_file():
            try:
                cached = {
                    s: Cost.from_json(c) for s, c in json.loads(path.read_text())["costs"].items()
                }
            except (ValueError, KeyError, TypeError):
                cached = {}  # an unreadable cache is rebuilt, not trusted
        layers = latency.probe(model, self.example())
        if not layers:
            raise PbkitError(
                "a latency target needs convolution or linear layers to table; this model has none"
            )
        t0 = time.perf_counter()
        todo = len({layer.signature for layer in layers.values()} - set(cached))
        steps = Steps(
            f"latency table on {self.backend.name}/{self.precision} b{self.batch}: {todo} layer "
            f"signature(s) to time, {len(cached)} cached",
            max(todo, 1),
            self.quiet or todo == 0,
        )
        done = [0]

        def timed(i: int, n: int, sig: str) -> None:
            if sig not in cached:
                done[0] += 1
                steps.update(done[0], sig.split(":in")[0])

        table, n = latency.build_table(
            layers,
            self.time_layer,
            self.anchors,
            cached,
            timed,
            overhead=lambda layer: self.time_overhead(layer.input(layer.cin)),
        )
        steps.close()
        if path is not None and n:
            merged = {
                **{s: c.to_json() for s, c in cached.items()},
                **{s: c.to_json() for s, c in table.costs.items()},
            }
            atomic_write_json(path, {"key": key, "costs": merged})
        dense_ms = self.time_model(model)
        overhead_ms = self.time_overhead(self.example())
        raw = table.calibrate(dense_ms, latency.widths_of(model, layers), overhead_ms)
        table.info = {
            "backend": self.backend.name,
            "precision": self.precision,
            "batch": self.batch,
            "threads": self.threads,
            "timed": n,
            "cached": len(table.costs) - n,
            "cache_file": str(path) if path else None,
            "dense_ms": dense_ms,
            "layers_ms": raw,
            "overhead_ms": overhead_ms,
            "fixed_ms": table.fixed_ms,
            "build_s": round(time.perf_counter() - t0, 3),
            "anchors": self.anchors,
        }
        self.table_built = table
        return table


class _Null(nn.Module):
    """Next to nothing: one element of the input, plus one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten()[:1] + 1.0


def _trt_fp16_onnx() -> bool:
    from pbkit.export import tensorrt

    return tensorrt.needs_fp16_onnx("fp16", tensorrt.version())
