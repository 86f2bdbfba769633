"""Run folders: content-addressed names, a lock, and each stage's own facts in the record.

A run's id is a readable prefix and a short hash of everything that determines its result: the
model and its weights (sha256 of a checkpoint file), the dataset and its limits, the method,
scope, target, round_to and schedule, the calibration set, every training recipe and every seed,
each only where it matters (no finetuning recipe without finetuning, no sparsify settings for a
criterion-only method). Run again with the same configuration, a run is recognised and continued
from its first unfinished stage (prune -> finetune -> export -> bench); a configuration that differs
in anything that changes the result gets another id.

The folder (``<out>/<run_id>/``) holds ``record.json`` and the artifacts: ``dense.pt``,
``pruned.pt`` (as pruned), ``finetuned.pt`` (after finetuning), ``dense.onnx`` and ``pruned.onnx``
(of the finetuned model when there is one), TensorRT plans. Every file is written atomically, the
record last: a run killed at any moment leaves a valid record or none.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pbkit import __version__
from pbkit.core import config, lock, record
from pbkit.core.clock import utc_now
from pbkit.core.console import note
from pbkit.core.errors import PbkitError
from pbkit.core.fileio import ensure_writable_dir, sha256_file
from pbkit.models.spec import ModelSpec
from pbkit.pruning.methods import Method

DENSE, PRUNED = "dense", "pruned"
MODEL_FILES = {DENSE: "dense.pt", PRUNED: "pruned.pt"}
FINETUNED_FILE = "finetuned.pt"
ONNX_FILES = {DENSE: "dense.onnx", PRUNED: "pruned.onnx"}
LATENCY_TABLE = (  # a latency-targeted run's per-layer table, as it pruned with it
    "latency-table.json"
)
ID_HASH_CHARS = 10

# the configuration sections each stage runs with (what its record entry keeps)
STAGE_SECTIONS = {
    "prune": ("model", "dataset", "base", "prune", "sparsify"),
    "finetune": ("dataset", "finetune"),
    "export": ("export",),
    "export-tensorrt": ("export",),
    "bench": ("bench",),
}
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")


def finetunes(cfg: config.Config) -> bool:
    """Whether the run has a finetuning stage (a scratch run trains there, from re-drawn
    weights)."""
    return bool(cfg.dataset.name) and (cfg.finetune.epochs > 0 or cfg.init == "scratch")


def trains_base(cfg: config.Config) -> bool:
    return cfg.model.weights == "random" and bool(cfg.dataset.name) and cfg.base.epochs > 0


# training settings that do not change a run's identity at their default (ids made before they
# existed still hold); set otherwise, they are part of it (AMP is part of the recipe)
_NEUTRAL = {"amp": "off", "channels_last": False}


def recipe_fields(section: Any, **dump: Any) -> dict[str, Any]:
    """A training section (base, sparsify, finetune) as it names a run or a base."""
    out = section.model_dump(**dump)
    return {k: v for k, v in out.items() if not (k in _NEUTRAL and v == _NEUTRAL[k])}


def trained_fields(cfg: config.Config, section: Any, **dump: Any) -> dict[str, Any]:
    """A distributed training section (base, finetune) as it names a run or a base: its recipe, and
    the number of processes it trains across when more than one (each rank's batch statistics and
    share of the data order depend on it)."""
    out = recipe_fields(section, **dump)
    if cfg.distributed.world_size > 1:
        out["world_size"] = cfg.distributed.world_size
    return out


LATENCY_KEYS = ("target", "backend", "batch", "precision", "latency")


def identity_fields(
    cfg: config.Config, method: Method, spec: ModelSpec | None = None
) -> dict[str, Any]:
    """Everything that determines the run's result, and nothing else. A model from outside pbkit's
    names is named by its source's content (``origin``: a file's sha256, a package's version), not
    by where it lies (``spec``: the resolved model; resolved here when not given)."""
    m, d, p = cfg.model, cfg.dataset, cfg.prune
    model: dict[str, Any] = {
        "name": m.name,
        "weights": m.weights,
        "num_classes": m.num_classes,
        "input_size": m.input_size,
        "kwargs": m.kwargs,
        "seed": m.seed,
    }
    if m.task is not None:  # (absent when not set, so ids made before it existed still hold)
        model["task"] = m.task
    origin = (spec or resolve_model(cfg)).origin
    if origin is not None:
        model["origin"] = origin.identity()
    if m.weights == "checkpoint":
        if not m.checkpoint:
            raise PbkitError(
                "model.weights is 'checkpoint' but model.checkpoint (a file path) is not set"
            )
        path = Path(m.checkpoint).expanduser()
        if not path.is_file():
            raise PbkitError(f"checkpoint {str(path)!r} not found")
        model["checkpoint_sha256"] = sha256_file(path)
    elif m.weights == "pretrained":  # the hub's weights as the installed library resolves them
        model["pretrained_from"] = _library(m.name)
    fields: dict[str, Any] = {"model": model}
    if d.name:
        fields["dataset"] = dataset_fields(cfg)
    if trains_base(cfg):
        fields["base"] = trained_fields(cfg, cfg.base)
    prune = p.model_dump(
        exclude={
            "calibration",
            "schedule",
            "interleave_iters",
            "max_memory_gib",
            "max_graph_s",
            *LATENCY_KEYS,
        }
    )
    if p.target == "latency":  # (absent for MACs targets, so ids made before it existed still hold)
        prune.update(
            target=p.target,
            backend=p.backend,
            batch=p.batch,
            precision=p.precision,
            latency=p.latency.model_dump(exclude={"cache"}),
        )
    if p.schedule != "oneshot":  # (absent at the default, so ids made before it existed still hold)
        prune.update(schedule=p.schedule, interleave_iters=p.interleave_iters)
    if method.needs_data:
        prune["calibration"] = (
            p.calibration.model_dump()
            if method.collect is not None
            else {"dataset": p.calibration.dataset}
        )
    fields["prune"] = prune
    if method.stage == "sparsify":
        fields["sparsify"] = recipe_fields(cfg.sparsify)
    if (
        cfg.init != "pruned"
    ):  # the scratch model trains with the base recipe, as long as base + pruning + finetune
        fields["init"] = cfg.init
        fields["base"] = trained_fields(cfg, cfg.base)
        fields["finetune"] = {"epochs": cfg.finetune.epochs}
    elif finetunes(cfg):
        fields["finetune"] = trained_fields(
            cfg, cfg.finetune, exclude=set() if cfg.finetune.kd.enabled else {"kd"}
        )
        if cfg.finetune.kd.enabled and cfg.finetune.kd.teacher:
            fields["finetune"]["kd"]["teacher_sha256"] = sha256_file(
                teacher_file(cfg.finetune.kd.teacher)
            )
    return fields


def dataset_fields(cfg: config.Config) -> dict[str, Any]:
    """The dataset settings that decide a result (a run's, a base's): which data, at which size,
    how much of it, split by which seed. Where it lies, the loader processes and pinning do not;
    persistent workers do (one seed fewer drawn per epoch: another data order from epoch 2)."""
    d = cfg.dataset
    out: dict[str, Any] = {
        "name": d.name,
        "image_size": d.image_size,
        "train_limit": d.train_limit,
        "test_limit": d.test_limit,
        "seed": d.seed,
    }
    if d.persistent_workers and d.workers:
        out["persistent_workers"] = True
    return out


def resolve_model(cfg: config.Config) -> ModelSpec:
    """The configuration's model, resolved with what the configuration and, where they leave it
    open, the named dataset's registry entry say (classes, input size); before any data is read."""
    from pbkit.data import DATASETS
    from pbkit.models import resolve

    m, d = cfg.model, cfg.dataset
    entry = DATASETS.get(d.name) if d.name else None
    return resolve(
        m.name,
        num_classes=m.num_classes or (entry.num_classes if entry else None),
        input_size=m.input_size or d.image_size or (entry.image_size if entry else None),
        kwargs=m.kwargs,
        task=m.task,
        trust=m.trust_checkpoint,
    )


def teacher_file(path: str) -> Path:
    """finetune.kd.teacher, which must exist."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise PbkitError(
            f"finetune.kd.teacher {path!r} not found (a pbkit model file, e.g. a run's dense.pt)"
        )
    return file


def _library(model_name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    dist = (
        "torchvision"
        if model_name.startswith("tv:")
        else "timm"
        if model_name.startswith("timm:")
        else "ultralytics"
    )
    try:
        return f"{dist}=={version(dist)}"
    except PackageNotFoundError:
        return dist


def identity_hash(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def run_id_for(cfg: config.Config, digest: str, label: str | None = None) -> str:
    """The run's folder name: ``run_id`` when set, else ``<model>-<method>-<scope>-<x>x-<hash>``
    (``label``: the model's short name, for a path or an import path)."""
    if cfg.run_id:
        if not _RUN_ID.fullmatch(cfg.run_id):
            raise PbkitError(
                f"run_id {cfg.run_id!r} may hold only letters, digits, '.', '_' and '-'"
            )
        return cfg.run_id
    p = cfg.prune
    target = "" if p.target == "macs" else f"-{p.backend}"  # a measured speed-up names its backend
    short = digest[:ID_HASH_CHARS]
    return f"{slug(label or cfg.model.name)}-{p.method}-{p.scope}-{p.speedup:g}x{target}-{short}"


BASES = "bases"


def bases_dir(runs: Path) -> Path:
    """The bases folder of a runs folder (``results/runs`` -> ``results/bases``)."""
    return runs.parent / BASES


def lock_path(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.lock"


@contextlib.contextmanager
def locked(run_dir: Path, quiet: bool = False) -> Iterator[None]:
    """Hold the run's lock: a second process on the same run waits, and is told who holds it."""
    with lock.exclusive(
        lock_path(run_dir),
        on_wait=lambda who: note(
            f"run {run_dir.name} is in use by {who}; waiting for it to finish", quiet
        ),
    ):
        yield


@dataclass
class Plan:
    """What a configuration will produce, known before any work: the run's identity and folder."""

    cfg: config.Config
    method: Method
    identity: record.Identity
    run_dir: Path
    spec: ModelSpec  # the model as resolved before any work (defaults filled in, not the data's)

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    @property
    def bases_dir(self) -> Path:
        """Where trained bases are kept by hash: ``bases/`` beside the runs folder (a study's
        workers keep theirs the same way under their work folder)."""
        return bases_dir(self.run_dir.parent)

    def existing(self) -> record.Record | None:
        """The record of this run if its folder holds one; an error if the folder holds something
        else (another configuration, no record, an unreadable record)."""
        d = self.run_dir
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()  # an empty folder holds nothing to lose
        if not d.exists():
            return None
        if not (d / record.RECORD_NAME).is_file():
            raise PbkitError(
                f"run folder {str(d)!r} already exists and holds no record; choose another run_id "
                "or remove it"
            )
        try:
            rec = record.read(d)
        except PbkitError as e:
            raise PbkitError(
                f"run folder {str(d)!r} already exists and holds another run ({e}); choose another "
                "run_id, or pass --force to start it again"
            ) from e
        if rec.identity is None or rec.identity.hash != self.identity.hash:
            what = (
                "made by an older pbkit"
                if rec.identity is None
                else (
                    f"configuration {rec.identity.hash[:ID_HASH_CHARS]}, not"
                    f" {self.identity.hash[:ID_HASH_CHARS]}"
                )
            )
            raise PbkitError(
                f"run folder {str(d)!r} already exists and holds another run ({what}); choose"
                " another run_id, or pass --force to start it again"
            )
        return rec

    def remove(self) -> None:
        """--force: remove the run's folder (only a pbkit run folder: one that holds a record)."""
        d = self.run_dir
        if d.exists():
            if not (d / record.RECORD_NAME).is_file():
                raise PbkitError(f"{str(d)!r} holds no pbkit record; not removing it")
            shutil.rmtree(d)


def plan(cfg: config.Config) -> Plan:
    """Resolve names and compute the run's identity and folder; fails before any work (and before
    anything is written)."""
    from pbkit.pruning import methods

    methods.get(cfg.prune.method)  # a typo fails first, before the model is even looked up
    spec = resolve_model(cfg)
    method = methods.get(cfg.prune.method, spec.family)
    fields = identity_fields(cfg, method, spec)
    digest = identity_hash(fields)
    out = ensure_writable_dir(cfg.out)
    run_dir = out / run_id_for(cfg, digest, spec.label)
    return Plan(cfg, method, record.Identity(hash=digest, fields=fields), run_dir, spec)


# ------------------------------------------------------------------------------------------------
# stage bookkeeping in the record


def section_slice(cfg: config.Config, stage: str) -> dict[str, Any]:
    data = cfg.model_dump(mode="json")
    return {k: data[k] for k in STAGE_SECTIONS[stage]}


def is_current(rec: record.Record, stage: str, cfg: config.Config) -> bool:
    """Whether ``stage`` ran, with the configuration slice ``cfg`` asks for now. A key a later
    pbkit added to the slice counts as asked for only where it is set to other than its default:
    a run made before it (which ran as the default does) is not redone for it."""
    info = rec.stages.get(stage)
    if info is None:
        return False
    now = section_slice(cfg, stage)
    return info.config == now or _same(info.config, now, _default_slice(stage))


@functools.cache
def _default_slice(stage: str) -> dict[str, Any]:  # (read only: the defaults validated once)
    return section_slice(config.validate(config.defaults(), "pbkit's defaults"), stage)


def _same(recorded: Any, now: Any, default: Any) -> bool:
    """``now`` equals ``recorded``, but for keys ``recorded`` lacks that hold their default."""
    if not (isinstance(recorded, dict) and isinstance(now, dict)):
        return bool(recorded == now)
    if set(recorded) - set(now):
        return False
    default = default if isinstance(default, dict) else {}
    for k, v in now.items():
        if k not in recorded:
            if k not in default or v != default[k]:
                return False
        elif not _same(recorded[k], v, default.get(k)):
            return False
    return True


STAGES = ("prune", "finetune", "export", "bench")


def wanted_stages(cfg: config.Config, until: str = "bench") -> list[str]:
    """The stages a configuration runs, in order, up to ``until`` (no finetune without data)."""
    if until not in STAGES:
        raise PbkitError(f"unknown stage {until!r}; choose one of: {', '.join(STAGES)}")
    todo = list(STAGES[: STAGES.index(until) + 1])
    return todo if finetunes(cfg) else [s for s in todo if s != "finetune"]


def stage_done(rec: record.Record, stage: str, cfg: config.Config) -> bool:
    """Whether the record shows ``stage`` done as ``cfg`` asks: prune and finetune by having run
    (the identity holds their configuration), export and bench with the same settings."""
    if stage in ("prune", "finetune"):
        return stage in rec.stages
    return is_current(rec, stage, cfg)


class StageClock:
    """Times a stage and writes its facts into the record when it finishes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started_utc = utc_now()
        self._t0 = time.perf_counter()

    def finish(
        self, rec: record.Record, cfg: config.Config, env: dict[str, Any], device: str | None = None
    ) -> record.Record:
        """The stage's facts into the record: when, how long, its settings, the machine and, for
        the stages that compute with the model (prune, finetune), the device."""
        now = utc_now()
        rec.stages.pop(self.name, None)  # the latest run of a stage goes last, in running order
        rec.stages[self.name] = record.StageInfo(
            utc=now,
            started_utc=self.started_utc,
            seconds=round(time.perf_counter() - self._t0, 3),
            kit_version=__version__,
            config=section_slice(cfg, self.name),
            env=env,
            device=device,
        )
        rec.updated_utc = now
        rec.env = env
        rec.config = cfg.model_dump(mode="json")
        return rec


def check_resumable(run_dir: Path, rec: record.Record) -> None:
    """A run is continued from its files: say so when its model files are gone, and remove what a
    killed process left half-written (pbkit's own ``.*.tmp`` files)."""
    missing = [
        path.name
        for path in (model_file(run_dir, rec, v) for v in MODEL_FILES)
        if not path.is_file()
    ]
    if missing:
        raise PbkitError(
            f"run {rec.run_id} has a record but not its model files ({', '.join(missing)}; model"
            " files are not kept in git); pass --force to start it again, or set another out or"
            " run_id"
        )
    for tmp in run_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


class ArtifactChanged(PbkitError):
    """A run's file is not the one its record names (its sha256 differs): it changed after the
    run wrote it."""


def inside(run_dir: Path, name: str, what: str) -> Path:
    """``run_dir / name``, refused where the record names a file outside the run folder (an
    absolute path, ``..``): a record is read, never trusted to point elsewhere."""
    path = run_dir / name
    if Path(name).is_absolute() or not path.resolve().is_relative_to(run_dir.resolve()):
        raise PbkitError(
            f"run {run_dir.name}: its record names {what} at {name!r}, outside the run folder; "
            "refusing to read it"
        )
    return path


_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, this process


def file_sha256(path: Path) -> str:
    """sha256 of a file, hashed once per content this process has seen (size and mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def changed(path: Path, sha256: Any) -> str | None:
    """Why ``path`` is not the file a record names by ``sha256`` (None: it is, or the record
    names no hash; a missing file is for the caller to say)."""
    if not isinstance(sha256, str) or not sha256 or not path.is_file():
        return None
    now = file_sha256(path)
    if now == sha256:
        return None
    return (
        f"{path.name} differs from the one the record names (sha256 {now[:12]}, recorded"
        f" {sha256[:12]})"
    )


def verified(path: Path, sha256: Any, redo: str) -> Path:
    """``path``, checked against the sha256 its record names; ``redo`` says what makes it again."""
    why = changed(path, sha256)
    if why is not None:
        raise ArtifactChanged(f"{why}: it changed after the run wrote it; {redo}")
    return path


def model_file(run_dir: Path, rec: record.Record, variant: str) -> Path:
    """The model file of a variant: the record's artifact (the finetuned model for ``pruned`` after
    finetuning), else the standard name; inside the run folder, and the file the record names."""
    art = rec.artifacts.get(variant)
    name = art["path"] if isinstance(art, dict) and art.get("path") else MODEL_FILES[variant]
    path = inside(run_dir, str(name), f"its {variant} model")
    sha = art.get("sha256") if isinstance(art, dict) else None
    return verified(path, sha, "start the run again (--force) to make it anew")


def onnx_file(run_dir: Path, rec: record.Record, variant: str) -> Path:
    """A variant's ONNX file, the one the record names (``pbkit export`` makes it again)."""
    info = (rec.artifacts.get("onnx") or {}).get(variant) or {}
    path = inside(run_dir, str(info.get("path") or ONNX_FILES[variant]), f"its {variant} ONNX")
    return verified(path, info.get("sha256"), f"`pbkit export {run_dir}` makes it again")


def onnx_changed(run_dir: Path, rec: record.Record) -> str | None:
    """Why the run's ONNX files are not the ones its record names, if they are not."""
    for variant in ONNX_FILES:
        info = (rec.artifacts.get("onnx") or {}).get(variant) or {}
        name = str(info.get("path") or ONNX_FILES[variant])
        why = changed(inside(run_dir, name, f"its {variant} ONNX"), info.get("sha256"))
        if why is not None:
            return why
    return None


def run_config(
    rec: record.Record,
    overrides: list[str] | tuple[str, ...] = (),
    values: dict[str, Any] | None = None,
) -> config.Config:
    """The run's configuration with a later stage's typed values and ``--set`` overrides. Keys the
    kit gained after the run was made take their defaults (a run made by an older kit is measured
    with today's protocol, e.g. ``bench.sessions``)."""
    data = config.merge(config.defaults(), copy.deepcopy(rec.config))
    for key, value in (values or {}).items():
        data = config.set_value(data, key, value)
    for item in overrides:
        data = config.apply_override(data, item)
    return config.validate(data, f"run {rec.run_id} config")


def parity_failures(rec: record.Record) -> list[record.Parity]:
    return [p for p in rec.parity if not p.passed]
