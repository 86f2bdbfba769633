"""The result record: the contract between measuring and reporting (versioned JSON schema).

Every figure a leaderboard or a cross-GPU comparison shows comes from these records. Later
versions may ADD fields (readers ignore what they do not know); none is renamed or removed.
``pbkit schema`` prints the JSON Schema; every field the bench stage writes is declared in it,
down to its sections (``latency[].ci``, ``memory``, ``flags``, ``gpu_compute`` and ``bench``),
which are written with the keys given to them and read by attribute or, as before, by key.

1.1: ``stages`` maps each stage (prune, finetune, export, export-tensorrt, bench) to its own facts:
the configuration slice it ran with, the machine record and when it ran, so a model pruned on one
machine and measured on another says both; ``identity`` holds the hash that names the run (what
determines its result); ``model.task`` names the task. 1.0 records (``stages`` as a list) are
read and upgraded.

1.2: ``method.schedule`` (oneshot | interleaved) and ``method.interleave`` (the training between
pruning steps, CPD); ``finetune`` carries the whole recipe as run: ``kd`` (distillation),
``augmentation``, ``init`` (pruned | scratch; scratch: ``epochs_total`` and what it adds up),
``trainability`` (TA over the first LR stage, and whether the metric still rose at the first
decay); ``latency[].speedup_ci``, ``median_ci``, ``ci``, ``outliers``, ``blocks`` (how well each
figure is known) and ``bench.cpu_state`` (load, frequency, steal time around the measurement).
1.1 records read as oneshot runs without intervals.

1.3: ``accuracy.others`` (a task's other metrics), ``model.notes``, ``stages.<s>.device``.

1.4: ``method.target`` (macs | latency) and ``method.latency``: for a latency target, the backend,
precision and batch, the per-layer table's summary (``latency-table.json`` in the run folder), the
trajectory (per step MACs, predicted and, where measured, measured speed-up), the prediction
error, the final measured speed-up with its interval and CoV, and the realisation ratio (measured
/ MACs speed-up).

1.5: ``bench.sessions``; a point measured over several fresh sessions carries ``sessions``,
``session_medians_ms`` and ``pooled_median_ms`` (the median of all its samples); its ``median_ms``
is then the geometric mean of the sessions' medians, so the speed-up stays the ratio of the two
medians, and ``ci`` (method: t-interval over fresh sessions) lists ``session_speedups`` and
``session_cis``. Points of one session read as before.

1.6: ``model.origin``: where a model from outside pbkit's names comes from (a Python file and its
builder, an import path and its package's version, a pickled module, a Python object handed to the
API, an ultralytics checkpoint), with the sha256 that identifies it; ``model.source`` names that
kind and ``model.weights`` may be ``given`` (a pickled module's own weights);
``stages.<s>.redone_because``: why a stage ran again on files that were there (an artifact whose
sha256 no longer matched the record's).

1.7: ``quantization``: INT8 after pruning, the calibration (source, split, images, method,
per-channel weights, seed) and each quantized artifact (ONNX Runtime QDQ, OpenVINO NNCF IR,
TensorRT QDQ) with its sha256, or why it failed; ``engine_accuracy``: the task's metric on the
test split through each (backend, precision) point's runner, dense and pruned, with PyTorch's on
the same images and the top-1 agreement; ``parity[].gate`` may be ``int8`` (a sanity gate: cosine
>= ``cosine_min``); a latency point's ``flags`` may carry ``openvino`` and ``ov_properties``;
``explain``: per-layer latency of dense and pruned by backend (``pbkit explain``: each layer's
MACs, profiled time, realisation and the time pruning did not buy) and ``alignment``: the
channel-alignment advisor's timings and recommended ``prune.round_to``; ``bench.cpu_state`` may
carry ``others_share`` and ``busy`` (other processes' share of the CPU time while measuring).
Older records read without them.

1.8: ``method.round_to_auto`` (``prune.round_to: auto``: the advisor's timings on the unaligned
pruned widths and the ``round_to`` it chose, then in ``method.round_to``); a latency-targeted
run's ``method.latency.bench`` (the bench stage's re-measurement of the target's backend,
precision and batch in a fresh process, with the verdict ``met`` and ``within_10pct``; the
target is judged on it) and ``judged_on``; a GPU point measured again after throttling takes
every figure from its last attempt (``medians_ms`` still lists each attempt's);
``bench.processes`` and a point's ``flags.processes``: its sessions spread over that many fresh
processes and merged (``ci.stop``: processes). 1.7 records read as before.

1.9: a pruned point's ``repeat_ci`` (the repeat interval: where a later bench of the same files on
this machine lands, about as often as two estimates' intervals agree) and ``repeat`` (how it was
made: the bench's interval widened by this machine's measured drift between benches
(``bench.drift``), or the t-interval over ``bench.repeats`` benches spaced in time, with each
one's speed-up, interval and time, and the drift they measured); ``bench.repeats``,
``repeat_spacing_s`` and ``drift``. 1.8 records read as before, without a repeat interval.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from pbkit.core.errors import PbkitError, first_line
from pbkit.core.fileio import atomic_write_json
from pbkit.core.plain import plain

SCHEMA_VERSION = "1.9"
RECORD_NAME = "record.json"


class _Open(BaseModel):
    # fields it does not know are kept (later versions add them); a number is finite (JSON has
    # no NaN or Infinity: a record holding one would not be JSON)
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class ModelOrigin(_Open):
    """Where a model from outside pbkit's names comes from (1.6): a file and its builder, an import
    path and its package, a pickled module or a Python object, an ultralytics checkpoint."""

    kind: str  # file | import | pickle | object | ultralytics-checkpoint
    path: str | None = None  # the .py or .pt file, absolute
    sha256: str | None = None  # of that file (object: of the module's architecture and weights)
    function: str | None = None  # the builder the file or module defines
    module: str | None = None  # the import path
    package: str | None = (
        None  # the installed distribution that provides the module, and its version
    )
    version: str | None = None
    class_name: str | None = None  # the model's class
    arch: dict[str, Any] | None = None  # an ultralytics checkpoint's model yaml


class ModelInfo(_Open):  # type: ignore[no-redef]  # pydantic's mypy plugin: a field named kwargs
    name: str
    source: str  # pbkit | torchvision | timm | ultralytics | file | import | pickle | object
    family: str
    input_size: int
    num_classes: int
    kwargs: dict[str, Any] = {}
    # random | pretrained | checkpoint | trained | given (a pickled module's or object's own)
    weights: str
    weights_path: str | None = None
    weights_sha256: str
    seed: int = 0
    task: str = "classify"  # classify | detect | segment (1.0 records: detect for the yolo family)
    # the task's facts about its heads (segmentation: the auxiliary head dropped)
    notes: dict[str, Any] = {}
    origin: ModelOrigin | None = None  # a model from outside pbkit's names (1.6)

    @model_validator(mode="before")
    @classmethod
    def _task_of_older_records(cls, data: Any) -> Any:
        if isinstance(data, dict) and "task" not in data:
            data = {**data, "task": "detect" if data.get("family") == "yolo" else "classify"}
        return data


class MethodInfo(_Open):
    key: str
    name: str
    stage: str
    scope: str
    target_speedup: float
    achieved_speedup: float
    steps: int
    round_to: int | None = None
    round_to_auto: Alignment | None = None
    """``prune.round_to: auto`` (1.8): the advisor's timings on the unaligned pruned widths and
    the ``round_to`` it chose (``round_to`` is then that one, or null where none buys 5%)."""
    iterative_steps: int
    max_pruning_ratio: float
    seed: int
    step_time_s: float
    prune_time_s: float
    ignored_layers: list[str] = []
    held_fixed: list[
        str
    ] = []  # attention-like blocks the dependency graph could not follow: channels kept
    data: str = "none"  # what the criterion needed
    regularizer: str | None = None
    calibration: dict[str, Any] | None = None  # dataset, batches, batch_size, seed, samples
    sparsify: dict[str, Any] | None = None  # the sparse-training recipe, reg, history, time_s
    reg_time_s: float | None = None  # sparse-training wall time, apart from step time
    schedule: str = (
        "oneshot"  # oneshot: prune, then finetune; interleaved: train between pruning steps (CPD)
    )
    interleave: dict[str, Any] | None = (
        None  # iters_per_step, iterations, epochs, time_s, kd, recipe (interleaved)
    )
    target: str = (
        "macs"  # macs: target_speedup is in MACs | latency: a measured speed-up on latency.backend
    )
    latency: dict[str, Any] | None = (
        None  # latency target: backend, table, trajectory, measured_speedup, realisation
    )


class Counts(_Open):
    macs_base: int
    macs_pruned: int
    params_base: int
    params_pruned: int
    input_size: int
    counter: str
    channel_alignment: dict[str, Any] | None = None  # share of pruned layers with widths % 8 == 0


class DatasetInfo(_Open):
    name: str
    image_size: int
    num_classes: int
    train_size: int | None = None  # classification splits; None for detection yamls
    test_size: int | None = None
    task: str = "classify"


class Accuracy(_Open):
    metric: str | None = None
    base: float | None = None
    pruned: float | None = None
    finetuned: float | None = None
    others: dict[
        str, dict[str, float | None]
    ] = {}  # the task's other metrics: {pixel_acc: {base, pruned, finetuned}}


class _Section(_Open):
    """A record section whose fields are declared (``pbkit schema`` lists them) but whose keys vary
    with what wrote it (a backend's flags, a GPU's memory figures, how an interval was made): it
    is written as it was given, with the keys given in their order and no others, so a record
    reads and writes back unchanged. Unknown (later) keys are kept. Read by attribute, or by key
    as the dict it was before 1.6 (``p.ci["stop"]``, ``(p.ci or {}).get("sessions")``)."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)
    _order: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_order(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        section = handler(data)
        if isinstance(data, dict) and isinstance(section, _Section):
            section._order = list(data)
        return section

    @model_serializer(mode="wrap")
    def _as_given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        return {k: out[k] for k in self.keys() if k in out}

    def __contains__(self, key: object) -> bool:
        return key in self.model_fields_set

    def __getitem__(self, key: str) -> Any:
        if key not in self:
            raise KeyError(key)
        return getattr(self, key)

    def __len__(self) -> int:
        return len(self.model_fields_set)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self else default

    def keys(self) -> list[str]:
        return list(dict.fromkeys([*self._order, *sorted(self.model_fields_set)]))

    def values(self) -> list[Any]:
        return [getattr(self, k) for k in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]


class GpuCompute(_Section):
    """A GPU point's CUDA-event statistics of the engine call alone (ms)."""

    median_ms: float | None = None
    """The median; over sessions the geometric mean of theirs; a point measured again (a GPU
    throttled) keeps its last attempt's (1.8; before, the median of the attempts')."""
    mean_ms: float | None = None
    min_ms: float | None = None
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    std_ms: float | None = None
    cov: float | None = None
    n: int | None = None
    medians_ms: list[float] | None = None
    """Each attempt's median (one session)."""
    session_medians_ms: list[float] | None = None
    """Each session's median (several sessions, 1.5)."""


class Memory(_Section):
    """What a runner took while it was built and warmed up (bytes); the first session's."""

    rss_before_bytes: int | None = None
    nvml_used_before_bytes: int | None = None
    """GPU: NVML used memory before (null: no NVML handle)."""
    torch_allocated_before_bytes: int | None = None
    rss_peak_bytes: int | None = None
    """The process RSS peak, sampled every 5 ms."""
    rss_after_bytes: int | None = None
    samples: int | None = None
    """How many times the sampler looked."""
    nvml_used_peak_bytes: int | None = None
    nvml_used_after_bytes: int | None = None
    torch_peak_allocated_bytes: int | None = None
    torch_peak_reserved_bytes: int | None = None
    nvml: str | None = None
    """Why the NVML figures are missing."""
    engine_device_memory_bytes: int | None = None
    """TensorRT: the engine's device memory."""
    plan_bytes: int | None = None
    """TensorRT: the plan file's size."""


class Flags(_Section):
    """How a point ran: the runner's options, as the backend set them."""

    pinned_core: int | None = None
    """The core the measuring thread was pinned to (CPU, one thread)."""
    processes: int | None = None
    """The fresh processes the point's sessions were spread over (``bench.processes`` > 1, 1.8)."""
    channels_last: bool | None = None
    inference_mode: bool | None = None
    compile_mode: str | None = None
    mode: str | None = None
    """torch-cuda: eager | graph | compile."""
    cuda_graph: bool | None = None
    io_binding: bool | None = None
    data_transfers: bool | None = None
    """The query copies its input to the device and its outputs back."""
    sync: str | None = None
    tf32: bool | None = None
    provider: str | None = None
    """ONNX Runtime: the execution provider that ran it."""
    providers: list[str] | None = None
    graph_optimization: str | None = None
    trt_fp16_enable: bool | None = None
    engine_cache: str | None = None
    engine_cache_hit: bool | None = None
    timing_cache: bool | None = None
    engine: str | None = None
    tensorrt: str | None = None
    """The TensorRT version."""
    profile: int | None = None
    """The TensorRT optimization profile of the batch."""
    openvino: str | None = None
    """The OpenVINO version (1.7)."""
    ov_device: str | None = None
    """The OpenVINO device the model was compiled for (CPU, GPU)."""
    ov_properties: dict[str, Any] | None = None
    """The compiled model's properties: INFERENCE_NUM_THREADS, PERFORMANCE_HINT,
    INFERENCE_PRECISION_HINT, NUM_STREAMS, ... (1.7)."""
    quantized: str | None = None
    """An INT8 point: the quantized artifact's family (ort | ov | trt) (1.7)."""


class CiInfo(_Section):
    """How a speed-up's interval was made and why measuring stopped (1.2)."""

    method: str | None = None
    """paired block bootstrap (percentile) | t-interval over fresh sessions (log speed-ups)."""
    confidence: float | None = None
    draws: int | None = None
    """Bootstrap draws (one session)."""
    sessions: int | None = None
    """Fresh sessions measured (1.5)."""
    session_speedups: list[float] | None = None
    """Each session's speed-up (1.5)."""
    session_cis: list[list[float] | None] | None = None
    """Each session's own interval (1.5)."""
    blocks: int | None = None
    """Block pairs (dense and pruned alternating)."""
    block_s: float | None = None
    relative_half_width: float | None = None
    target: float | None = None
    """bench.ci_target (null: none)."""
    stop: str | None = None
    """ci (the target was met) | budget (max_time_s spent) | time (no target)."""
    met: bool | None = None


class RepeatInfo(_Section):
    """How a pruned point's repeat interval was made (1.9)."""

    method: str | None = None
    """calibrated drift (the bench's interval widened by the machine's measured drift) |
    t-interval over repeat benches (``bench.repeats`` benches spaced in time)."""
    drift_sd: float | None = None
    """The relative SD of the speed-up between benches minutes apart, beyond their own noise."""
    drift_df: int | None = None
    """Its degrees of freedom (repeat benches - 1; absent: given, not estimated)."""
    source: str | None = None
    """Where the drift comes from, in words."""
    confidence: float | None = None
    speedups: list[float] | None = None
    """Each repeat bench's speed-up (repeats)."""
    cis: list[list[float] | None] | None = None
    """Each repeat bench's own interval (repeats)."""
    utc: list[str] | None = None
    """When each repeat bench ended (repeats)."""
    spacing_s: float | None = None


class BenchGpu(_Section):
    """The GPU a bench measured on."""

    index: int | None = None
    name: str | None = None
    uuid: str | None = None


class BenchInfo(_Section):
    """How the latest bench measured: its settings (bench.quick applied; ``min_time_s``,
    ``min_iters`` and ``max_time_s`` are the CPU's, ``gpu_*`` the GPU's) and its machine."""

    channels_last: bool | None = None
    compile_mode: str | None = None
    memory: bool | None = None
    warmup_s: float | None = None
    warmup_iters: int | None = None
    min_time_s: float | None = None
    min_iters: int | None = None
    gpu_min_time_s: float | None = None
    gpu_min_iters: int | None = None
    sessions: int | None = None
    """Fresh sessions per point at least (1.5)."""
    session_warmup_iters: int | None = None
    rounds: int | None = None
    cov_limit: float | None = None
    max_repeats: int | None = None
    block_s: float | None = None
    ci_target: float | None = None
    confidence: float | None = None
    max_time_s: float | None = None
    gpu_max_time_s: float | None = None
    processes: int | None = None
    """``bench.processes``: the fresh processes each point's sessions were spread over (1.8)."""
    repeats: int | None = None
    """``bench.repeats``: benches of the same files, spaced in time (1.9)."""
    repeat_spacing_s: float | None = None
    drift: float | str | None = None
    """``bench.drift`` as configured: auto | a relative SD (1.9)."""
    quick: bool | None = None
    threads: int | None = None
    measured_utc: str | None = None
    host: dict[str, Any] | None = None
    """The machine's host facts (as ``env.host``)."""
    cpu_state: dict[str, Any] | None = None
    """Load, frequency and steal time before and after the measurement (1.2)."""
    gpu: BenchGpu | None = None


class LatencyPoint(_Open):
    backend: str
    device: str
    variant: str  # dense | pruned
    batch: int
    precision: str
    threads: int | None = None
    median_ms: float
    mean_ms: float
    min_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    std_ms: float
    cov: float
    n: int
    first_call_ms: float
    warmup_n: int
    duration_s: float
    throughput_ips: float
    stable: bool
    unstable_reasons: list[str] = []
    quick: bool
    speedup_vs_dense: float | None = None
    artifact_sha256: str | None = None
    attempts: int = 1  # GPU throttle gate: measurements of this point; figures: the last one's
    medians_ms: list[float] = []
    spread_ms: float = 0.0
    # the figures above are host wall clock, end to end; on a GPU also the engine call alone:
    gpu_compute: GpuCompute | None = None  # CUDA-event statistics (median_ms, p99_ms, cov, ...)
    gpu_speedup_vs_dense: float | None = None
    throttle_reasons: list[str] = []  # GPU throttle reasons other than idle seen while measuring
    # how it ran: cuda_graph, io_binding, channels_last, compile_mode, ...
    flags: Flags = Field(default_factory=Flags)
    memory: Memory | None = None  # NVML used before/peak/after, torch peaks, RSS, engine bytes
    input_shape: list[int] = []
    dtype: str | None = None
    # how well the figures are known (1.2; absent in older records): the 95% interval of the
    # speed-up (pruned points) and of each median, from a paired block bootstrap; how it was made
    # and why measuring stopped (ci: method, confidence, draws, blocks, block_s,
    # relative_half_width, target, stop = ci | budget | time, met); outliers by Tukey's fences
    # (counted, kept)
    speedup_ci: list[float] | None = None
    median_ci: list[float] | None = None
    ci: CiInfo | None = None
    outliers: dict[str, int] | None = None
    blocks: int | None = None
    # a point measured over several fresh sessions (1.5; absent otherwise): median_ms is the
    # geometric mean of the sessions' medians, pooled_median_ms the median of all their samples
    pooled_median_ms: float | None = None
    session_medians_ms: list[float] | None = None
    sessions: int | None = None
    # where a later bench of the same files on this machine lands (1.9; pruned points where the
    # machine's drift is known or repeats measured it) and how that interval was made
    repeat_ci: list[float] | None = None
    repeat: RepeatInfo | None = None

    @model_serializer(mode="wrap")
    def _sessions_where_measured(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A point of one session is written as before 1.5: without the sessions' fields (nor,
        without a repeat interval, the repeat's, as before 1.9)."""
        out: dict[str, Any] = handler(self)
        for k in ("pooled_median_ms", "session_medians_ms", "sessions", "repeat_ci", "repeat"):
            if out.get(k) is None:
                out.pop(k, None)
        return out


class Parity(_Open):
    backend: str
    variant: str
    precision: str
    batch: int
    max_abs: float | None  # None: not finite (an output of NaN or Inf); the gate failed
    max_rel: float | None
    cosine: float
    rtol: float
    atol: float
    passed: bool
    # fp32: |a-b| <= atol*atol_scale + rtol*|b|; fp16: cosine >= cosine_min; int8 (1.7): cosine >=
    # cosine_min and finite, a sanity gate (INT8 is judged by engine_accuracy, not by max abs)
    gate: str = "fp32"
    cosine_min: float | None = None
    atol_scale: float | None = (
        None  # the reference's largest magnitude where above 1 (else 1); absent: 1
    )

    @property
    def error(self) -> float:
        """max_abs for ordering: an error that is not finite is the largest."""
        return math.inf if self.max_abs is None else self.max_abs

    @property
    def error_text(self) -> str:
        return "not finite" if self.max_abs is None else f"{self.max_abs:.1e}"


class QuantCalibration(_Section):
    """The images an INT8 model was calibrated on, and how (1.7): the same for dense and pruned."""

    source: str | None = None
    """The dataset's name, or ``synthetic``."""
    split: str | None = None
    """train (the dataset's training split, never the test split) | synthetic (seeded N(0, 1))."""
    images: int | None = None
    method: str | None = None
    """How activation ranges were found: minmax | entropy | percentile."""
    per_channel: bool | None = None
    """Weights quantized per output channel."""
    seed: int | None = None
    input_shape: list[int] | None = None
    sha256: str | None = None
    """Of the calibration images (float32, C order): two runs calibrated on the same images."""


class QuantArtifact(_Section):
    """One quantized model (1.7): a family's INT8 file for one variant, or why there is none."""

    family: str | None = None
    """ort (ONNX Runtime QDQ) | ov (OpenVINO IR by NNCF) | trt (symmetric QDQ for TensorRT)."""
    variant: str | None = None
    status: str | None = None
    """ok | failed."""
    reason: str | None = None
    """Why it failed (one line)."""
    path: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    weights_path: str | None = None
    """OpenVINO: the IR's weights file (.bin)."""
    weights_sha256: str | None = None
    source: str | None = None
    """The fp32 ONNX it was quantized from."""
    source_sha256: str | None = None
    tool: str | None = None
    """The quantizer and its version."""
    settings: dict[str, Any] | None = None
    """The quantizer's settings: format, activation and weight types, symmetry, preset."""
    seconds: float | None = None


class Quantization(_Section):
    """INT8 after pruning (1.7): the calibration and the quantized artifacts."""

    calibration: QuantCalibration | None = None
    artifacts: list[QuantArtifact] | None = None


class EngineAccuracy(_Section):
    """The task's metric of one model through one (backend, precision) runner (1.7)."""

    backend: str | None = None
    precision: str | None = None
    variant: str | None = None
    status: str | None = None
    """ok | failed."""
    reason: str | None = None
    metric: str | None = None
    value: float | None = None
    """Through the engine, in percent."""
    torch_value: float | None = None
    """The PyTorch fp32 model's on the same images."""
    agreement: float | None = None
    """The share of images (percent) whose top-1 matches PyTorch's (classification)."""
    images: int | None = None
    split: str | None = None
    batch_size: int | None = None
    seconds: float | None = None


class ExplainedLayer(_Open):
    """One layer of ``pbkit explain`` (1.7): a module of the model (or a row no module owns:
    ``(layout)`` for layout conversions, ``(other)`` for time outside the profiled layers), its
    MACs and per-layer time, dense and pruned, from the backend's own profiler."""

    layer: str
    """The module's path in the model (``layers.0.0.conv1``); a fused kernel counts for the module
    of its weighted operator."""
    kind: str
    """The module's class, or the backend's operator kinds."""
    group: str | None = None
    """The block it belongs to (the module's parent): pruning keeps a block's coupled widths."""
    macs_dense: int = 0
    macs_pruned: int = 0
    dense_ms: float
    pruned_ms: float
    macs_ratio: float | None = None
    """Dense over pruned MACs; None where the layer has none."""
    measured_ratio: float | None = None
    """Dense over pruned time."""
    realisation: float | None = None
    """Measured ratio over MACs ratio: 1 where time fell with MACs, below 1 where it fell less."""
    lost_ms: float
    """Pruned time less what it would be had it fallen with MACs (the layer's ratio, or the whole
    model's for a layer without MACs): what pruning did not buy."""


class Explained(_Open):
    """Per-layer latency of dense and pruned on one backend, precision and batch (1.7)."""

    backend: str
    precision: str
    batch: int
    profiler: str
    """Whose per-layer times: ``onnxruntime`` (its profiling), ``torch.profiler``, ..."""
    runs: int
    """Profiled forward passes per model (after warm-up); times are medians over them."""
    utc: str
    dense_ms: float
    """The sum of the dense model's per-layer times (profiler overhead included)."""
    pruned_ms: float
    macs_ratio: float
    measured_ratio: float
    """dense_ms / pruned_ms: the profiled speed-up, not the bench's end-to-end figure."""
    layers: list[ExplainedLayer]
    """Every layer, the most time pruning did not buy first."""
    note: str = ""
    """What the figures cover."""
    loadavg: list[float] | None = None
    """The machine's 1-minute load average before and after profiling (a busy machine's layer
    times are not a quiet machine's)."""


class AlignedLayer(_Open):
    """One layer of the channel-alignment advisor (1.7): its time at the pruned width and at the
    nearest multiples of 8, 16, 32 and 64 output channels."""

    layer: str
    cin: int
    cout: int
    ms: float
    widths_ms: dict[str, float]
    """Output width -> median ms of the layer alone at that width, on the backend."""


class Alignment(_Open):
    """What aligning pruned widths would buy on one backend (``pbkit explain --align``, 1.7)."""

    backend: str
    precision: str
    batch: int
    utc: str
    layers: list[AlignedLayer]
    gain: dict[str, float]
    """round_to -> the median over these layers of the time per output channel at the pruned width
    over that at the nearest multiple (above 1: aligned widths buy more channels per ms)."""
    ms_pruned: float
    """These layers' summed time at the pruned widths."""
    ms_aligned: dict[str, float]
    """round_to -> their summed time at the nearest multiples."""
    recommended: int | None = None
    """The prune.round_to to use (None: alignment buys under 5% here)."""
    note: str = ""
    loadavg: list[float] | None = None
    """The machine's 1-minute load average before and after timing."""


class StageInfo(_Open):
    """One stage's own facts: when it ran, with which configuration slice, on which machine."""

    utc: str  # when it finished
    started_utc: str | None = None
    seconds: float | None = None
    kit_version: str
    config: dict[str, Any] | None = None  # the configuration sections the stage ran with
    env: dict[str, Any] | None = None  # the machine record where it ran
    # where the stage computed with the model (prune, finetune): cpu, cuda:0 (name)
    device: str | None = None
    # why a stage ran again on files that were there (1.6: an artifact that changed after it)
    redone_because: str | None = None


class Identity(_Open):
    """What determines a run's result, and its hash: the run id ends with the hash's first
    characters, and a run is resumed only by a configuration with the same hash."""

    hash: str
    fields: dict[str, Any]


class Record(_Open):
    schema_version: str
    kit_version: str
    git_revision: str | None = None
    run_id: str
    created_utc: str
    updated_utc: str
    stages: dict[str, StageInfo]
    identity: Identity | None = None  # None in 1.0 records
    model: ModelInfo
    method: MethodInfo
    counts: Counts
    dataset: DatasetInfo | None = None
    accuracy: Accuracy
    finetune: dict[str, Any] | None = None
    base_training: dict[str, Any] | None = None
    artifacts: dict[str, Any] = {}
    latency: list[LatencyPoint] = []
    parity: list[Parity] = []
    bench: BenchInfo | None = None
    # per-layer latency by backend/precision/batch (`pbkit explain`, 1.7)
    explain: dict[str, Explained] = {}
    alignment: dict[str, Alignment] = {}  # the channel-alignment advisor's, likewise
    quantization: Quantization | None = None  # INT8: calibration and artifacts (1.7)
    engine_accuracy: list[EngineAccuracy] = []  # the metric through each backend (1.7)
    env: dict[str, Any]  # the machine of the latest stage (each stage keeps its own in stages)
    config: dict[str, Any]  # the resolved configuration, as the latest stage ran it

    @field_validator("stages", mode="before")
    @classmethod
    def _stages_of_older_records(cls, v: Any) -> Any:
        """1.0 kept a list of {name, utc, kit_version}: the latest entry of each name wins."""
        if isinstance(v, list):
            return {
                s["name"]: {k: val for k, val in s.items() if k != "name"}
                for s in v
                if isinstance(s, dict)
            }
        return v

    def stage_env(self, name: str) -> dict[str, Any]:
        """The machine a stage ran on (older records: the record's env)."""
        info = self.stages.get(name)
        return info.env if info is not None and info.env else self.env


def validate(data: dict[str, Any], where: str = "record") -> Record:
    try:
        return Record.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise PbkitError(f"{where}: invalid record at {loc}: {err['msg']}") from e


def write(run_dir: str | Path, rec: Record) -> Path:
    """Validate and write ``record.json`` atomically, as a record of this schema version (a record
    read from an older version is written in the current layout)."""
    data = finite(rec.model_dump(mode="json"))
    data["schema_version"] = SCHEMA_VERSION
    validate(data)
    return atomic_write_json(Path(run_dir) / RECORD_NAME, data)


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite number in its free-form parts (a diverged training
    loss in a history) as None: JSON has no such numbers. A declared number that is not finite
    is refused by validation instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


MAX_RECORD_BYTES = 64 << 20  # a record is kilobytes; past this a file is not one
MAX_RECORD_DEPTH = 64  # a record nests a configuration (config.MAX_DEPTH) five levels down


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def read(run_dir: str | Path) -> Record:
    path = Path(run_dir).expanduser()
    if path.is_dir():
        path = path / RECORD_NAME
    if not path.is_file():
        raise PbkitError(
            f"no record at {str(path)!r} (is this a run folder made by `pbkit prune`?)"
        )
    size = path.stat().st_size
    if size > MAX_RECORD_BYTES:
        raise PbkitError(
            f"{str(path)!r} is {size / (1 << 20):.0f} MiB; a record is at most "
            f"{MAX_RECORD_BYTES >> 20} MiB (this is not one)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise PbkitError(f"{str(path)!r} is not valid JSON ({first_line(e)})") from e
    if not isinstance(data, dict):
        raise PbkitError(f"{str(path)!r} is not a record: a record is a JSON object")
    plain(data, f"{str(path)!r} is not a record", MAX_RECORD_DEPTH)
    major = str(data.get("schema_version", "")).split(".")[0]
    if major != SCHEMA_VERSION.split(".")[0]:
        raise PbkitError(
            f"{str(path)!r} has schema {data.get('schema_version')!r}; this pbkit reads"
            f" {SCHEMA_VERSION}"
        )
    return validate(data, str(path))


def json_schema() -> dict[str, Any]:
    return Record.model_json_schema()
