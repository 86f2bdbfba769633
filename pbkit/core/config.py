"""Configs: one YAML of defaults (``pbkit/default.yaml``, linked as ``configs/default.yaml``), run
configs merged over it, then typed values (CLI options) and ``key=value`` overrides (``--set``).
Validation names the bad key or value and the valid choices, in one line.

A ``--set`` value is parsed as YAML (numbers, lists, null), except where the key holds text (a
path, a name, a run id): there the text is kept as written, so ``run_id=2026-01-01`` stays a
string and ``model.checkpoint=w #2.pt`` keeps its ``#``. CLI options never go through YAML.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pbkit.core.errors import PbkitError, first_line
from pbkit.core.plain import plain

DEFAULTS_PATH = Path(__file__).resolve().parents[1] / "default.yaml"


class _Strict(BaseModel):
    # unknown keys are refused; a number is finite (NaN and Infinity are no setting)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ModelCfg(_Strict):
    name: str
    weights: Literal["random", "pretrained", "checkpoint"]
    checkpoint: str | None
    trust_checkpoint: bool
    num_classes: int | None = Field(ge=2)
    input_size: int | None = Field(ge=8)
    kwargs: dict[str, Any]
    seed: int
    # what the model is for: classify | detect | segment; null: the model's own (a user's model
    # from a file or a pickle: classify)
    task: Literal["classify", "detect", "segment"] | None = None


class DatasetCfg(_Strict):
    name: str | None
    root: str | None
    image_size: int | None = Field(ge=8)
    download: bool
    train_limit: int | None = Field(ge=1)
    test_limit: int | None = Field(ge=1)
    eval_batch_size: int = Field(ge=1)
    seed: int
    workers: int = Field(
        0, ge=0
    )  # DataLoader worker processes (seeded: the same seed, the same data)
    pin_memory: bool = False  # page-locked batches for faster copies to a GPU
    persistent_workers: bool = False  # keep the workers between epochs


class _TrainingCfg(_Strict):
    """What every training run records: optimizer, LR schedule, epochs, batch, seed."""

    epochs: int = Field(ge=0)
    optimizer: Literal["sgd", "adamw", "adam"]
    lr: float = Field(gt=0)
    momentum: float = Field(ge=0, lt=1)
    nesterov: bool
    schedule: Literal["multistep", "step", "cosine", "constant"]
    milestones: list[float | int]
    step_size: int = Field(ge=1)
    gamma: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    label_smoothing: float = Field(ge=0, lt=1)
    seed: int
    amp: Literal["off", "bf16", "fp16"] = (
        "off"  # mixed precision (autocast; fp16 with a gradient scaler)
    )
    channels_last: bool = False  # train in the channels-last memory format

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML reads a bare `off` as false


class RecipeCfg(_TrainingCfg):
    weight_decay: float = Field(ge=0)


class KDCfg(_Strict):
    """Knowledge distillation during finetuning (CPD's "distill"): (1 - alpha) * task loss +
    alpha * T^2 * KL(teacher_T || student_T) on the task's outputs."""

    enabled: bool
    alpha: float = Field(ge=0, le=1)
    temperature: float = Field(gt=0)
    teacher: str | None  # a pbkit model file; default: the run's own dense base


class FinetuneCfg(RecipeCfg):
    kd: KDCfg


class CalibrationCfg(_Strict):
    dataset: str | None
    batches: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    seed: int


class LatencyCfg(_Strict):
    """How a latency target is reached (prune.target: latency)."""

    rounds: int = Field(ge=1)
    step: float = Field(gt=0, lt=1)
    min_step: float = Field(gt=0, lt=1)
    max_checks: int = Field(ge=1)
    anchors: int = Field(ge=2, le=20)
    cache: str | None


class PruneCfg(_Strict):
    method: str
    scope: Literal["local", "global", "protected"]
    speedup: float = Field(gt=1.0)
    # N: keep channel counts multiples of N; auto: the channel-alignment advisor picks N on
    # prune.backend (or none where aligning buys under 5% there)
    round_to: Annotated[int, Field(ge=1)] | Literal["auto"] | None
    iterative_steps: int = Field(ge=1)
    seed: int
    calibration: CalibrationCfg
    schedule: Literal["oneshot", "interleaved"]
    interleave_iters: int = Field(ge=1)
    max_memory_gib: float | None = Field(
        gt=0
    )  # stop a run past this resident memory; null: 75% of the machine's
    max_graph_s: float | None = Field(
        gt=0
    )  # stop building the dependency graph past this many seconds
    target: Literal["macs", "latency"] = (
        "macs"  # what speedup means: fewer MACs, or a measured speed-up on backend
    )
    backend: str = "ort-cpu"
    batch: int = Field(default=1, ge=1)
    precision: Literal["fp32", "fp16"] = "fp32"
    latency: LatencyCfg

    @field_validator("round_to", mode="before")
    @classmethod
    def _round_to(cls, v: Any) -> Any:
        if v is None or v == "auto":
            return v
        n = int(v) if isinstance(v, int | str) and str(v).isdigit() else 0
        if isinstance(v, bool) or n < 1:
            raise ValueError(f"a channel multiple >= 1, auto or null (got {v!r})")
        return n


class SparsifyCfg(_TrainingCfg):
    """Sparse training: a recipe without weight decay (0 while the regularizer runs)."""

    reg: float = Field(ge=0)
    delta_reg: float = Field(ge=0)


class TensorRTCfg(_Strict):
    # int8: an engine built from an explicitly quantized (symmetric QDQ) ONNX, strongly typed
    precisions: list[Literal["fp32", "fp16", "int8"]] = Field(min_length=1)
    workspace_gib: float = Field(gt=0)
    optimization_level: int = Field(ge=0, le=5)
    timing_cache: bool


class Int8Cfg(_Strict):
    """Post-training static INT8 quantization (ONNX Runtime QDQ, OpenVINO NNCF, TensorRT QDQ),
    calibrated on the same images for the dense and the pruned model."""

    # null: the dataset's training split (a data-free model is refused); dataset: the same, said
    # explicitly; synthetic: seeded N(0, 1) images (latency only: the ranges are not real data's)
    calibration: Literal["dataset", "synthetic"] | None = None
    images: int = Field(128, ge=1)  # calibration images
    method: Literal["minmax", "entropy", "percentile"] = "minmax"  # activation ranges
    per_channel: bool = True  # weights quantized per output channel
    seed: int = 0  # which training images (and synthetic images) calibrate
    # INT8 parity on the parity batch (random inputs, outside the calibrated ranges: far from
    # fp32 by design): a check that the model is not broken, not a gate on its accuracy
    cosine_min: float = Field(0.5, gt=0, le=1)


class ExportCfg(_Strict):
    formats: list[Literal["onnx", "tensorrt"]] = Field(min_length=1)
    # ONNX files: fp32 always; int8 adds the quantized models of the CPU runtimes (export.int8)
    precisions: list[Literal["fp32", "int8"]] = Field(default=["fp32"], min_length=1)
    int8: Int8Cfg = Int8Cfg()
    opset: int = Field(ge=17)
    exporter: Literal["dynamo", "torchscript"]
    parity_batch: int = Field(ge=1)
    rtol: float = Field(ge=0)
    atol: float = Field(ge=0)
    fp16_cosine: float = Field(gt=0, le=1)
    tensorrt: TensorRTCfg


class BenchCfg(_Strict):
    backends: list[str] = Field(min_length=1)
    batches: list[int]
    precisions: list[Literal["fp32", "fp16", "int8"]] = Field(min_length=1)
    # the task's metric on the test split through each backend's runner (top-1, mIoU, a YOLO
    # model's box mAP50-95): off | int8 (the points of int8 and, to compare with, fp32 on the same
    # backends) | all (every CPU point)
    engine_accuracy: Literal["off", "int8", "all"] = "int8"
    channels_last: bool
    compile_mode: Literal[
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ]
    device: int = Field(ge=0)
    memory: bool
    quick: bool
    warmup_s: float = Field(ge=0)
    warmup_iters: int = Field(ge=0)
    min_time_s: float = Field(ge=0)
    min_iters: int = Field(ge=1)
    gpu_min_time_s: float = Field(ge=0)
    gpu_min_iters: int = Field(ge=1)
    sessions: int = Field(ge=1)
    processes: int = Field(ge=1, le=16)
    # benches of the same files, spaced in time (this machine's drift between them, kept per
    # backend: pbkit.machine.drift), and the drift a single bench's repeat interval adds: auto (this
    # machine's measured drift, where repeats measured it) | a relative SD | 0 (none)
    repeats: int = Field(ge=1)
    repeat_spacing_s: float = Field(ge=0)
    drift: Literal["auto"] | Annotated[float, Field(ge=0, lt=1)]
    session_warmup_iters: int = Field(ge=1)
    rounds: int = Field(ge=1)
    threads: int | None = Field(ge=1)
    cov_limit: float = Field(gt=0)
    max_repeats: int = Field(ge=1)
    block_s: float = Field(gt=0)
    ci_target: float | None = Field(gt=0)
    confidence: float = Field(gt=0, lt=1)
    max_time_s: float = Field(ge=0)
    gpu_max_time_s: float = Field(ge=0)

    @field_validator("engine_accuracy", mode="before")
    @classmethod
    def _engine_accuracy_off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML reads a bare `off` as false

    @field_validator("drift", mode="before")
    @classmethod
    def _drift(cls, v: Any) -> Any:
        if v == "auto":
            return v
        try:
            x = float(v)
        except (TypeError, ValueError):
            x = -1.0
        if isinstance(v, bool) or not 0 <= x < 1:
            raise ValueError(f"auto or a relative standard deviation in [0, 1) (got {v!r})")
        return x

    @field_validator("batches")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(b < 1 for b in v):
            raise ValueError("batches must be a non-empty list of integers >= 1")
        return v


class DistributedCfg(_Strict):
    """Training-type stages (base training, finetuning) across processes with
    DistributedDataParallel, launched by torch.distributed's own launcher (torchrun)."""

    nproc_per_node: int = Field(1, ge=1)  # processes on this machine (one per GPU)
    nnodes: int = Field(1, ge=1)  # machines; the others join with `pbkit join`
    rdzv_endpoint: str | None = None  # host:port every machine reaches (needed with nnodes > 1)
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on CUDA, gloo on the CPU
    timeout_s: float = Field(1800.0, gt=0)  # a collective waiting longer than this fails the run

    @model_validator(mode="after")
    def _endpoint(self) -> DistributedCfg:
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(
                "nnodes > 1 needs rdzv_endpoint (host:port that every machine reaches)"
            )
        if self.rdzv_endpoint and not re.fullmatch(
            r"[A-Za-z0-9._\-\[\]:]+:\d{1,5}", self.rdzv_endpoint
        ):
            raise ValueError(f"rdzv_endpoint must be host:port, not {self.rdzv_endpoint!r}")
        return self

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


class LimitsCfg(_Strict):
    """What a setting may ask for before pbkit refuses it, at once and in one line, rather than
    start work or memory that grows with it for hours: a batch, a thread count, a step count, a
    session count, a time, an input size a thousand times too large. Raise one on a machine with
    room: ``--set limits.batch=16384``. ``memory_gib`` and ``stage_s`` budget the export and
    bench stages as ``prune.max_memory_gib`` and ``prune.max_graph_s`` budget the pruning."""

    batch: int = Field(4096, ge=1)  # every batch size: bench, latency target, training, eval
    threads: int = Field(1024, ge=1)  # bench.threads
    steps: int = Field(100_000, ge=1)  # prune.iterative_steps, latency rounds and checks
    iters: int = Field(10_000_000, ge=1)  # a bench's query counts (min_iters, warmup_iters, ...)
    sessions: int = Field(1000, ge=1)  # bench.sessions
    seconds: float = Field(86_400.0, gt=0)  # every time a bench measures or waits for
    epochs: int = Field(100_000, ge=1)  # every training's epochs
    input_size: int = Field(4096, ge=8)  # model.input_size, dataset.image_size
    speedup: float = Field(1000.0, gt=1)  # prune.speedup
    memory_gib: float | None = Field(None, gt=0)  # export and bench; null: 75% of the machine's
    stage_s: float | None = Field(None, gt=0)  # an export or bench stage's wall time; null: none


# (limit, the settings it bounds): checked when a configuration is validated
_LIMITED: dict[str, tuple[str, ...]] = {
    "batch": (
        "bench.batches",
        "prune.batch",
        "base.batch_size",
        "finetune.batch_size",
        "sparsify.batch_size",
        "prune.calibration.batch_size",
        "dataset.eval_batch_size",
        "export.parity_batch",
    ),
    "threads": ("bench.threads",),
    "steps": ("prune.iterative_steps", "prune.latency.rounds", "prune.latency.max_checks"),
    "iters": (
        "bench.min_iters",
        "bench.warmup_iters",
        "bench.gpu_min_iters",
        "bench.session_warmup_iters",
        "prune.interleave_iters",
        "prune.calibration.batches",
        "export.int8.images",
    ),
    "sessions": ("bench.sessions", "bench.rounds", "bench.max_repeats", "bench.repeats"),
    "seconds": (
        "bench.min_time_s",
        "bench.max_time_s",
        "bench.warmup_s",
        "bench.gpu_min_time_s",
        "bench.gpu_max_time_s",
        "bench.block_s",
        "bench.repeat_spacing_s",
    ),
    "epochs": ("base.epochs", "finetune.epochs", "sparsify.epochs"),
    "input_size": ("model.input_size", "dataset.image_size"),
    "speedup": ("prune.speedup",),
}


class Config(_Strict):
    model: ModelCfg
    dataset: DatasetCfg
    base: RecipeCfg
    prune: PruneCfg
    sparsify: SparsifyCfg
    finetune: FinetuneCfg
    export: ExportCfg
    bench: BenchCfg
    out: str
    run_id: str | None
    seed: int | None = None  # every section's seed that the configuration does not set itself
    init: Literal["pruned", "scratch"] = (
        "pruned"  # scratch: the pruned architecture re-initialised (SX-A)
    )
    # where training, evaluation, calibration and pruning compute: auto | cpu | cuda | cuda:N
    device: str = "auto"
    distributed: DistributedCfg = DistributedCfg()
    limits: LimitsCfg = LimitsCfg()

    @model_validator(mode="after")
    def _int8_calibrated(self) -> Config:
        """INT8 is calibrated on the dataset's training split; a run without a dataset says
        ``synthetic`` explicitly (its INT8 accuracy would mean nothing), before any work."""
        e = self.export
        wants = "int8" in [*self.bench.precisions, *e.precisions, *e.tensorrt.precisions]
        if wants and not self.dataset.name and e.int8.calibration != "synthetic":
            raise ValueError(
                "int8 needs calibration images and dataset.name is null: pass --calibration"
                " synthetic (export.int8.calibration=synthetic: seeded N(0,1) images, the latency"
                " is measured, the accuracy is not) or name a dataset"
            )
        return self

    @model_validator(mode="after")
    def _within_limits(self) -> Config:
        for name, keys in _LIMITED.items():
            limit = getattr(self.limits, name)
            for key in keys:
                value: Any = self
                for part in key.split("."):
                    value = getattr(value, part)
                for v in value if isinstance(value, list) else [value]:
                    if v is not None and v > limit:
                        shown = f"{v:g}" if isinstance(v, float) else str(v)
                        raise ValueError(
                            f"{key}: {shown} is over the limit of {limit:g} (limits.{name}, which "
                            f"keeps a mistyped setting from running for hours; raise it with "
                            f"--set limits.{name}=N)"
                        )
        return self

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", v):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {v!r}")
        return v


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise PbkitError(f"config {str(path)!r} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise PbkitError(
            f"config {str(path)!r} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
            f"{e.start})"
        ) from e
    except RecursionError as e:
        raise PbkitError(f"config {str(path)!r}: nested too deeply to be a configuration") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise PbkitError(f"config {str(path)!r}: malformed YAML{where}: {problem}") from e
    except Exception as e:  # a tag whose value its constructor cannot take (!!timestamp x, ...)
        raise PbkitError(
            f"config {str(path)!r}: malformed YAML: a value its tag cannot hold ({first_line(e)})"
        ) from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PbkitError(f"config {str(path)!r}: the top level must be a mapping of sections")
    plain(data, f"config {str(path)!r}", MAX_DEPTH)
    return data


MAX_DEPTH = 32  # sections, kwargs and their values: far deeper than any configuration needs


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "kwargs":
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_override(cfg: dict[str, Any], item: str) -> dict[str, Any]:
    """Apply one ``a.b.c=value`` override. The value is parsed as YAML (numbers, lists, null)
    unless the key holds text, which is kept as written (``null`` or nothing clears it)."""
    if "=" not in item:
        raise PbkitError(f"override {item!r} must look like key=value (e.g. prune.speedup=4)")
    key, raw = item.split("=", 1)
    parts = _key_parts(key, item)
    text = raw.strip()
    if _holds_text(parts):
        value: Any = None if text in ("", "null", "~") else text
    else:
        try:
            value = yaml.safe_load(raw) if text else None
        except RecursionError as e:
            raise PbkitError(f"override {key!r}: the value is nested too deeply") from e
        except Exception:  # not YAML (or a tag its constructor refuses): the text as written
            value = raw
        plain(value, f"override {key!r}", MAX_DEPTH)
    return _put(cfg, parts, value, item)


def set_value(cfg: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Set ``key`` (dotted) to a Python value as is: how CLI options reach the config."""
    return _put(cfg, _key_parts(key, key), copy.deepcopy(value), f"{key}={value!r}")


def _key_parts(key: str, item: str) -> list[str]:
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise PbkitError(f"override {item!r} has an empty key")
    return parts


def _holds_text(parts: list[str]) -> bool:
    """Whether the schema types this key as text (``str`` or ``str | None``)."""
    model: Any = Config
    for p in parts:
        fields = getattr(model, "model_fields", None)
        if not fields or p not in fields:
            return False
        model = fields[p].annotation
    return model in (str, str | None)


def _put(cfg: dict[str, Any], parts: list[str], value: Any, item: str) -> dict[str, Any]:
    node = cfg
    for i, p in enumerate(parts[:-1]):
        if node is cfg and p not in cfg:
            raise PbkitError(
                f"unknown config section {p!r}; valid sections: {', '.join(sorted(cfg))}"
            )
        if node.get(p) is None:
            node[p] = {}  # a new mapping (e.g. model.kwargs.depth); validation names unknown keys
        if not isinstance(node[p], dict):
            raise PbkitError(
                f"override {item!r}: {'.'.join(parts[: i + 1])} is a value, not a section"
            )
        node = node[p]
    node[parts[-1]] = value
    return cfg


def validate(data: dict[str, Any], where: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise PbkitError(f"{where}: {one_line(e, data)}") from e


def one_line(e: ValidationError, data: dict[str, Any] | None = None) -> str:
    """A validation error as one line a user can act on (its first error)."""
    data = data or {}
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "value_error":  # a validator's own words
        msg = err["msg"].removeprefix("Value error, ")
        return f"{loc}: {msg}" if loc else msg
    if err["type"] == "extra_forbidden":
        section: Any = data
        for p in err["loc"][:-1]:
            section = section.get(p, {}) if isinstance(section, dict) else {}
        model: Any = Config
        for p in err["loc"][:-1]:
            model = model.model_fields[str(p)].annotation
        valid = ", ".join(sorted(model.model_fields)) if hasattr(model, "model_fields") else ""
        return f"unknown key {loc!r}; valid keys here: {valid}"
    if err["type"] == "literal_error":
        return (
            f"{loc}: invalid value {err.get('input')!r};"
            f" {err['msg'].replace('Input should be', 'choose')}"
        )
    if err["type"] == "missing":
        return f"{loc}: required key is missing"
    return f"{loc}: {err['msg']} (got {err.get('input')!r})"


def defaults() -> dict[str, Any]:
    return read_yaml(DEFAULTS_PATH)


SEEDED_SECTIONS = ("model", "base", "prune", "prune.calibration", "sparsify", "finetune")


def _keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    """Every dotted key a configuration layer sets (sections and values)."""
    out: set[str] = set()
    for k, v in data.items():
        key = f"{prefix}{k}"
        out.add(key)
        if isinstance(v, dict) and k != "kwargs":
            out |= _keys(v, key + ".")
    return out


def _spread_seed(data: dict[str, Any], explicit: set[str]) -> None:
    """The top-level ``seed`` sets the seed of every section the configuration leaves at its
    default: model init, base and finetuning data order, pruning, calibration, sparse training
    (not the dataset split, ``dataset.seed``, so every seed tests on the same images)."""
    seed = data.get("seed")
    if seed is None:
        return
    for section in SEEDED_SECTIONS:
        if f"{section}.seed" in explicit:
            continue
        node = data
        for part in section.split("."):
            node = node.get(part) if isinstance(node, dict) else None  # type: ignore[assignment]
        if isinstance(node, dict):
            node["seed"] = seed


def assemble(
    layers: list[dict[str, Any]],
    overrides: list[str] | tuple[str, ...] = (),
    values: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], set[str]]:
    """Defaults <- ``layers`` (parsed config files or mappings, in order) <- typed ``values``
    (CLI options) <- ``overrides`` (``--set``), not yet validated; and the keys they set."""
    data = defaults()
    explicit: set[str] = set()
    for layer in layers:
        data = merge(data, layer)
        explicit |= _keys(layer)
    for key, value in (values or {}).items():
        data = set_value(data, key, value)
        explicit.add(key)
    for item in overrides:
        data = apply_override(data, item)
        explicit.add(item.split("=", 1)[0].strip())
    return data, explicit


def finish(data: dict[str, Any], explicit: set[str], where: str = "config") -> Config:
    """Spread the top-level seed over the sections that do not set their own, and validate."""
    _spread_seed(data, explicit)
    return validate(data, where)


def load(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    values: dict[str, Any] | None = None,
) -> Config:
    """Defaults <- run config file <- typed ``values`` (CLI options) <- ``overrides`` (``--set``);
    validated."""
    layers = [] if path is None else [read_yaml(path)]
    return finish(
        *assemble(layers, overrides, values),
        where="config" if path is None else f"config {str(path)!r}",
    )
