"""Why a pruned model is (or is not) faster, layer by layer: each backend's own profiler times the
dense and the pruned model's layers, every timed kernel is mapped back to the model's module (and
its block), and each layer's measured ratio is set against its MACs ratio.

Profilers: ONNX Runtime's (``SessionOptions.enable_profiling``: one event per kernel of the
optimized graph), OpenVINO's per-layer counters (``PERF_COUNT``: one entry per node of the
compiled graph), the PyTorch profiler (a ``record_function`` around each leaf module), TensorRT's
``IProfiler`` (one callback per engine layer; written for the GPU image, type-checked here).

Mapping (deployment.md, section 5): a kernel of ONNX Runtime's optimized graph, or a node of
OpenVINO's compiled one, carries a source node's name, or a source tensor's name (a model output's,
where OpenVINO names the last layer after it), possibly with a suffix (``_nchwc``,
``/QuickGeluFusion/``, OpenVINO's ``/WithoutBiases``, ...); the
source node's module is its ``pkg.torch.onnx.name_scopes`` (dynamo exporter) or its name
(``/layer1/layer1.0/conv1/Conv``, TorchScript exporter). A fused kernel (convolution with its batch
norm and activation) counts for the module of its weighted operator: from a batch norm or an
activation the mapping walks back to the convolution or linear layer that feeds it. Layout
conversions (``Reorder*``) are their own row, ``(layout)``; time outside every profiled layer is
``(other)``.
"""

from __future__ import annotations

import ast
import json
import re
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pbkit.core import record
from pbkit.core.clock import utc_now
from pbkit.core.errors import PbkitError
from pbkit.models import counts

LAYOUT = "(layout)"
OTHER = "(other)"
WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}  # source ONNX ops a fused kernel belongs to
# ops a fused kernel may carry after its weighted op: the mapping walks back through them
FOLLOWERS = {
    "BatchNormalization",
    "Relu",
    "LeakyRelu",
    "Clip",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Mul",
    "Add",
    "Tanh",
    "Gelu",
    "Erf",
    "Div",
}
_SUFFIXES = (
    re.compile(r"_nchwc$"),
    re.compile(r"/QuickGeluFusion/$"),
    re.compile(r"/duplicated$"),
    re.compile(r"/WithoutBiases$"),  # OpenVINO: a convolution whose bias became its own Add
)
_TOKEN = re.compile(r"_token_\d+$")
NOTE = (
    "per-layer times from the backend's profiler in one process on this machine (profiler "
    "overhead included): where the time went, not the end-to-end speed-up `pbkit bench` measures"
)


@dataclass
class Profile:
    """One model's per-layer time: layer -> median milliseconds per forward pass."""

    profiler: str
    runs: int
    ms: dict[str, float]
    kinds: dict[str, set[str]] = field(default_factory=dict)


# a profiler: (model, its ONNX file or None, input, threads, runs) -> Profile
Profiler = Callable[[nn.Module, Path | None, torch.Tensor, int | None, int], Profile]


# ------------------------------------------------------------------------------ modules


def module_path(scopes: list[str]) -> str:
    """A module path from the dynamo exporter's name scopes (``['', 'model.0', 'conv', 'conv2d']``:
    entries are full paths or child names; the last is the operator) or from a TorchScript node
    name's parts (``['', 'layer1', 'layer1.0', 'conv1', 'Conv']``)."""
    path = ""
    for s in scopes[:-1]:
        if not s:
            continue
        if path and s.startswith(path + "."):
            path = s
        else:
            path = f"{path}.{s}" if path else s
    return path


def owner(modules: dict[str, nn.Module], order: list[str], path: str, op: str) -> str:
    """The module a source node belongs to: the nearest existing module on its path; for a
    weighted op that landed on a batch norm (the exporter fused them), the convolution or linear
    layer right before it."""
    while path and path not in modules:
        path = path.rpartition(".")[0]
    mod = modules.get(path)
    weighted = (nn.modules.conv._ConvNd, nn.Linear)
    if op in WEIGHTED and mod is not None and not isinstance(mod, weighted):
        i = order.index(path) if path in order else len(order)
        for prev in reversed(order[:i]):
            if isinstance(modules[prev], weighted):
                return prev
    return path


@dataclass
class _Node:
    op: str
    module: str
    inputs: list[str]


class OnnxIndex:
    """A source ONNX graph: each node's op and module, each tensor's producer."""

    def __init__(self, path: Path, model: nn.Module) -> None:
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
        modules = dict(model.named_modules())
        order = list(modules)
        self.nodes: dict[str, _Node] = {}
        self.producer: dict[str, str] = {}
        for i, n in enumerate(graph.node):
            name = n.name or f"#{i}"
            meta = {p.key: p.value for p in n.metadata_props}
            scopes = _scopes(meta.get("pkg.torch.onnx.name_scopes"), name)
            self.nodes[name] = _Node(
                n.op_type, owner(modules, order, module_path(scopes), n.op_type), list(n.input)
            )
            for out in n.output:
                self.producer[out] = name
        self.kinds = {p: type(m).__name__ for p, m in modules.items()}

    def source(self, kernel: str) -> str | None:
        """The source node an optimized graph's kernel came from, by name or output tensor."""
        names = [kernel]
        base = kernel
        for rx in (*_SUFFIXES, _TOKEN):
            base = rx.sub("", base)
        names.append(base)
        for n in names:
            if n in self.nodes:
                return n
            if n in self.producer:
                return self.producer[n]
        return None

    def module_kinds(self, kinds: dict[str, set[str]]) -> dict[str, set[str]]:
        """Each profiled layer's kind: its module's class (the kernel ops it ran, for
        ``(layout)`` and ``(other)``)."""
        return {
            layer: ops if layer in (LAYOUT, OTHER) else {self.kinds.get(layer, "?")}
            for layer, ops in kinds.items()
        }

    def layer(self, kernel: str, kernel_op: str) -> str:
        """The module a kernel's time counts for."""
        if kernel_op.startswith("Reorder"):
            return LAYOUT
        name = self.source(kernel)
        if name is None:
            return OTHER
        node = self.nodes[name]
        weighted = any(w in kernel_op for w in ("Conv", "Gemm", "MatMul"))
        for _ in range(6):  # a fused kernel: walk back from its last op to its weighted one
            if not weighted or node.op in WEIGHTED or node.op not in FOLLOWERS or not node.inputs:
                break
            prev = self.producer.get(node.inputs[0])
            if prev is None:
                break
            node = self.nodes[prev]
        return node.module or OTHER


def _scopes(raw: str | None, name: str) -> list[str]:
    if raw:
        try:
            value = ast.literal_eval(raw)
            if isinstance(value, list):
                return [str(v) for v in value]
        except (ValueError, SyntaxError):
            pass
    return name.split("/")  # TorchScript: /layer1/layer1.0/conv1/Conv


# ------------------------------------------------------------------------------ profilers


def _median_per_run(per_run: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for run in per_run for k in run}
    return {k: statistics.median(run.get(k, 0.0) for run in per_run) for k in keys}


def profile_ort(
    model: nn.Module, onnx_path: Path | None, x: torch.Tensor, threads: int | None, runs: int
) -> Profile:
    """ONNX Runtime's own profiler on the CPU provider, all graph optimizations on (as measured)."""
    if onnx_path is None:
        raise PbkitError("ONNX Runtime profiles an ONNX file: export the run first")
    from pbkit.measure.runner import ort_feed, ort_session

    index = OnnxIndex(onnx_path, model)
    with tempfile.TemporaryDirectory(prefix="pbkit-explain-") as tmp:
        sess = ort_session(onnx_path, threads or 1, profile_prefix=str(Path(tmp) / "ort"))
        feed = ort_feed(sess, x.numpy(), onnx_path)
        warmup = max(3, runs // 5)
        for _ in range(warmup + runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    starts = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    )[warmup:]
    per_run: list[dict[str, float]] = [defaultdict(float) for _ in starts]
    kinds: dict[str, set[str]] = defaultdict(set)
    for e in events:
        name = str(e.get("name", ""))
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        i = _run_of(starts, e["ts"])
        if i is None:
            continue
        op = str((e.get("args") or {}).get("op_name", ""))
        layer = index.layer(name.removesuffix("_kernel_time"), op)
        per_run[i][layer] += e["dur"] / 1000.0
        kinds[layer].add(op)
    return Profile("onnxruntime", len(per_run), _median_per_run(per_run), index.module_kinds(kinds))


def _run_of(runs: list[tuple[int, int]], ts: int) -> int | None:
    for i, (a, b) in enumerate(runs):
        if a <= ts <= b:
            return i
    return None


def _leaves(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, m in model.named_modules():
        if name and not any(True for _ in m.children()):
            yield name, m


@torch.no_grad()
def profile_torch(
    model: nn.Module, onnx_path: Path | None, x: torch.Tensor, threads: int | None, runs: int
) -> Profile:
    """The PyTorch profiler, a labelled range around each leaf module and the whole forward."""
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    model.eval()
    open_: list[Any] = []
    handles = []
    for name, m in _leaves(model):

        def pre(_m: nn.Module, _a: Any, name: str = name) -> None:
            rf = record_function(f"pbkit::{name}")
            rf.__enter__()
            open_.append(rf)

        def post(_m: nn.Module, _a: Any, _o: Any) -> None:
            open_.pop().__exit__(None, None, None)

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    before = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        for _ in range(max(3, runs // 5)):
            model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                with record_function("pbkit::(forward)"):
                    model(x)
    finally:
        torch.set_num_threads(before)
        for h in handles:
            h.remove()
    calls: dict[str, list[float]] = defaultdict(list)
    for ev in prof.events():
        if ev.name.startswith("pbkit::"):
            calls[ev.name.removeprefix("pbkit::")].append(ev.cpu_time_total / 1000.0)
    total = calls.pop("(forward)", [])
    ms = {k: statistics.median(v) * len(v) / runs for k, v in calls.items()}
    if total:
        ms[OTHER] = max(0.0, statistics.median(total) - sum(ms.values()))
    kinds = {name: {type(m).__name__} for name, m in _leaves(model)}
    kinds[OTHER] = {"outside leaf modules"}
    return Profile("torch.profiler", runs, ms, kinds)


class TrtLayerTimes:
    """A TensorRT ``IProfiler``: engine layer -> milliseconds per call (set as the execution
    context's ``profiler``; TensorRT calls ``report_layer_time`` once per layer per execution).
    Engine layer names join fused ONNX node names with `` + `` and wrap pointwise fusions in
    ``PWN(...)``: :func:`trt_sources` splits them back."""

    def __init__(self) -> None:
        import tensorrt as trt

        class _P(trt.IProfiler):
            def __init__(self, sink: dict[str, list[float]]) -> None:
                trt.IProfiler.__init__(self)
                self.sink = sink

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                self.sink[layer_name].append(ms)

        self.times: dict[str, list[float]] = defaultdict(list)
        self.profiler = _P(self.times)


def trt_sources(layer_name: str) -> list[str]:
    """The ONNX node names an engine layer fused (``/a/Conv + PWN(PWN(/a/Sigmoid), /a/Mul)``)."""
    names = re.split(r"\s*\+\s*|,\s*", re.sub(r"PWN\(|\)", " ", layer_name))
    return [n.strip() for n in names if n.strip()]


def profile_ov(
    model: nn.Module, onnx_path: Path | None, x: torch.Tensor, threads: int | None, runs: int
) -> Profile:
    """OpenVINO's per-layer counters on the CPU plugin (``PERF_COUNT``: one entry per executed
    node of the compiled graph, named after the source ONNX node it kept, fused ones after their
    main node), on the runner ``ov-cpu`` measures with (latency hint, one stream, f32)."""
    if onnx_path is None:
        raise PbkitError("OpenVINO profiles an ONNX file: export the run first")
    from pbkit.measure.openvino import OvRunner, version
    from pbkit.measure.runner import RunSpec

    index = OnnxIndex(onnx_path, model)
    runner = OvRunner(RunSpec(onnx_path, x, threads=threads or 1), "CPU", perf_count=True)
    warmup = max(3, runs // 5)
    per_run: list[dict[str, float]] = []
    kinds: dict[str, set[str]] = defaultdict(set)
    try:
        for i in range(warmup + runs):
            runner()
            if i < warmup:
                continue
            run: dict[str, float] = defaultdict(float)
            for info in runner.request.get_profiling_info():
                if str(info.status).rsplit(".", 1)[-1] != "EXECUTED":
                    continue
                op = str(info.node_type)
                layer = index.layer(str(info.node_name), op)
                run[layer] += info.real_time.total_seconds() * 1000.0
                kinds[layer].add(op)
            per_run.append(run)
    finally:
        runner.close()
    return Profile(
        f"openvino {version()}", len(per_run), _median_per_run(per_run), index.module_kinds(kinds)
    )


PROFILERS: dict[str, Profiler] = {
    "ort-cpu": profile_ort,
    "ov-cpu": profile_ov,
    "torch-cpu": profile_torch,
}


# ------------------------------------------------------------------------------ the comparison


def layer_macs(model: nn.Module, input_size: int) -> dict[str, int]:
    """MACs of one forward pass per module path (every level of the hierarchy)."""
    _, per_module = counts._count(model, input_size)
    out: dict[str, int] = {}
    root = type(model).__name__
    for key, ops in per_module.items():
        if key == "Global":
            continue
        path = key.removeprefix(root).removeprefix(".")
        out[path] = int(sum(ops.values()) // 2)
    # a module's own MACs (what its forward does outside its children: a block's residual add),
    # the whole model's under ""
    own = dict(out)
    for path, macs in out.items():
        if path:
            parent = path.rpartition(".")[0]
            if parent in own and parent:
                own[parent] -= macs
    return own


def compare(
    dense: Profile,
    pruned: Profile,
    macs_dense: dict[str, int],
    macs_pruned: dict[str, int],
    where: tuple[str, str, int],
) -> record.Explained:
    """Dense against pruned, layer by layer; the layers where pruning bought least first."""
    backend, precision, batch = where
    total_d, total_p = macs_dense.get("", 0), macs_pruned.get("", 0)
    model_ratio = total_d / total_p if total_p else 1.0
    rows = []
    for layer in sorted(set(dense.ms) | set(pruned.ms)):
        d, p = dense.ms.get(layer, 0.0), pruned.ms.get(layer, 0.0)
        md = macs_dense.get(layer, 0) if layer not in (LAYOUT, OTHER) else 0
        mp = macs_pruned.get(layer, 0) if layer not in (LAYOUT, OTHER) else 0
        macs_ratio = md / mp if md and mp else None
        measured = d / p if p > 0 else None
        expected = d / (macs_ratio or model_ratio)
        kinds = sorted(dense.kinds.get(layer, set()) | pruned.kinds.get(layer, set()))
        rows.append(
            record.ExplainedLayer(
                layer=layer,
                kind="+".join(kinds) or "?",
                group=layer.rpartition(".")[0] if layer not in (LAYOUT, OTHER) else None,
                macs_dense=md,
                macs_pruned=mp,
                dense_ms=round(d, 6),
                pruned_ms=round(p, 6),
                macs_ratio=round(macs_ratio, 4) if macs_ratio else None,
                measured_ratio=round(measured, 4) if measured else None,
                realisation=round(measured / macs_ratio, 4) if measured and macs_ratio else None,
                lost_ms=round(p - expected, 6),
            )
        )
    rows.sort(key=lambda r: r.lost_ms, reverse=True)
    sum_d, sum_p = sum(dense.ms.values()), sum(pruned.ms.values())
    return record.Explained(
        backend=backend,
        precision=precision,
        batch=batch,
        profiler=dense.profiler,
        runs=min(dense.runs, pruned.runs),
        utc=utc_now(),
        dense_ms=round(sum_d, 6),
        pruned_ms=round(sum_p, 6),
        macs_ratio=round(model_ratio, 4),
        measured_ratio=round(sum_d / sum_p, 4) if sum_p else 0.0,
        layers=rows,
        note=NOTE,
    )


def explain(
    profiler: Profiler,
    models: tuple[nn.Module, nn.Module],
    onnx: tuple[Path | None, Path | None],
    x: torch.Tensor,
    input_size: int,
    threads: int | None,
    runs: int,
    where: tuple[str, str, int],
) -> record.Explained:
    """Profile dense and pruned with one profiler and compare them layer by layer."""
    dense = profiler(models[0], onnx[0], x, threads, runs)
    pruned = profiler(models[1], onnx[1], x, threads, runs)
    macs = tuple(layer_macs(m, input_size) for m in models)
    return compare(dense, pruned, macs[0], macs[1], where)
