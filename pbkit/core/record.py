"""The result record: the contract between measuring and reporting (versioned JSON schema).

Every figure a leaderboard or a cross-GPU comparison shows comes from these records. Later
versions may ADD fields (readers ignore what they do not know); none is renamed or removed.
``pbkit schema`` prints the JSON Schema.

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
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from pbkit.core.errors import PbkitError
from pbkit.core.fileio import atomic_write_json

SCHEMA_VERSION = "1.5"
RECORD_NAME = "record.json"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ModelInfo(_Open):
    name: str
    source: str
    family: str
    input_size: int
    num_classes: int
    kwargs: dict[str, Any] = {}
    weights: str  # random | pretrained | checkpoint | trained
    weights_path: str | None = None
    weights_sha256: str
    seed: int = 0
    task: str = "classify"  # classify | detect | segment (1.0 records: detect for the yolo family)
    notes: dict[
        str, Any
    ] = {}  # the task's facts about its heads (segmentation: the auxiliary head dropped)

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
    attempts: int = 1  # stability gate: measurements of this point; median_ms is their median
    medians_ms: list[float] = []
    spread_ms: float = 0.0
    # the figures above are host wall clock, end to end; on a GPU also the engine call alone:
    gpu_compute: dict[str, Any] | None = None  # CUDA-event statistics (median_ms, p99_ms, cov, ...)
    gpu_speedup_vs_dense: float | None = None
    throttle_reasons: list[str] = []  # GPU throttle reasons other than idle seen while measuring
    flags: dict[
        str, Any
    ] = {}  # how it ran: cuda_graph, io_binding, channels_last, compile_mode, ...
    memory: dict[str, Any] | None = (
        None  # NVML used before/peak/after, torch peaks, RSS, engine bytes
    )
    input_shape: list[int] = []
    dtype: str | None = None
    # how well the figures are known (1.2; absent in older records): the 95% interval of the
    # speed-up (pruned points) and of each median, from a paired block bootstrap; how it was made
    # and why measuring stopped (ci: method, confidence, draws, blocks, block_s,
    # relative_half_width, target, stop = ci | budget | time, met); outliers by Tukey's fences
    # (counted, kept)
    speedup_ci: list[float] | None = None
    median_ci: list[float] | None = None
    ci: dict[str, Any] | None = None
    outliers: dict[str, int] | None = None
    blocks: int | None = None


class Parity(_Open):
    backend: str
    variant: str
    precision: str
    batch: int
    max_abs: float
    max_rel: float
    cosine: float
    rtol: float
    atol: float
    passed: bool
    gate: str = "fp32"  # fp32: |a-b| <= atol*atol_scale + rtol*|b|; fp16: cosine >= cosine_min
    cosine_min: float | None = None
    atol_scale: float | None = (
        None  # the reference's largest magnitude where above 1 (else 1); absent: 1
    )


class StageInfo(_Open):
    """One stage's own facts: when it ran, with which configuration slice, on which machine."""

    utc: str  # when it finished
    started_utc: str | None = None
    seconds: float | None = None
    kit_version: str
    config: dict[str, Any] | None = None  # the configuration sections the stage ran with
    env: dict[str, Any] | None = None  # the machine record where it ran
    device: str | None = (
        None  # where the stage computed with the model (prune, finetune): cpu, cuda:0 (name)
    )


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
    bench: dict[str, Any] | None = None
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
    data = rec.model_dump(mode="json")
    data["schema_version"] = SCHEMA_VERSION
    validate(data)
    return atomic_write_json(Path(run_dir) / RECORD_NAME, data)


def read(run_dir: str | Path) -> Record:
    path = Path(run_dir).expanduser()
    if path.is_dir():
        path = path / RECORD_NAME
    if not path.is_file():
        raise PbkitError(
            f"no record at {str(path)!r} (is this a run folder made by `pbkit prune`?)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PbkitError(f"{str(path)!r} is not valid JSON ({e})") from e
    major = str(data.get("schema_version", "")).split(".")[0]
    if major != SCHEMA_VERSION.split(".")[0]:
        raise PbkitError(
            f"{str(path)!r} has schema {data.get('schema_version')!r}; this pbkit reads"
            f" {SCHEMA_VERSION}"
        )
    return validate(data, str(path))


def json_schema() -> dict[str, Any]:
    return Record.model_json_schema()
