"""The Python API: pbkit from a notebook or a script, on any model. The CLI is a thin layer over it
(one implementation): every CLI option of ``pbkit prune``, ``export``, ``bench`` and ``run`` is a
keyword of the same name here, and every call writes the same versioned record::

    import pbkit, torch
    run = pbkit.prune(model, example_inputs=torch.randn(1, 3, 224, 224), method="l2",
                      speedup=2.0, data=(train_set, val_set), finetune={"epochs": 5})
    run.pruned                                     # the pruned nn.Module
    run.export("onnx")                             # parity-checked against torch
    print(run.bench(backends=["ort-cpu", "torch-cpu"]))   # the table the CLI prints
    pbkit.Run.load("results/runs/<run id>")        # any finished run, from disk

``model`` is a module (pbkit prunes a copy; the caller's object is left as it was), or any name
``pbkit prune --model`` takes: ``resnet18_cifar``, ``tv:resnet50``, ``timm:<name>``, ``yolov8n``,
``path/to/net.py:build``, ``my_pkg.models:build``, ``model.pt``, an ultralytics ``best.pt``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from pbkit.core import config, record
from pbkit.core.errors import PbkitError
from pbkit.core.record import Explained, Parity
from pbkit.stages import orchestrate, rundir

Settings = Sequence[str] | Mapping[str, Any]  # --set: "key=value" texts, or {key: value}


def _settings(set_: Settings | None) -> tuple[list[str], dict[str, Any]]:
    """``set=`` as the CLI's ``--set`` texts (parsed as YAML) or as Python values (kept as is)."""
    if set_ is None:
        return [], {}
    if isinstance(set_, str):
        return [set_], {}
    if isinstance(set_, Mapping):
        return [], dict(set_)
    return [str(s) for s in set_], {}


def _listed(*values: Any) -> list[Any]:
    """The values of a repeatable option, given as one value, a sequence, or under two names."""
    out: list[Any] = []
    for v in values:
        if v is None:
            continue
        out += [v] if isinstance(v, str | int) else list(v)
    return out


def _size_of(example_inputs: Any) -> int:
    import torch

    x = example_inputs[0] if isinstance(example_inputs, tuple | list) else example_inputs
    if (
        not isinstance(x, torch.Tensor)
        or x.dim() != 4
        or x.shape[1] != 3
        or x.shape[2] != x.shape[3]
    ):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise PbkitError(
            f"example_inputs: pbkit prunes and measures models of square RGB images, "
            f"(N, 3, S, S); got {shape}"
        )
    return int(x.shape[2])


@contextlib.contextmanager
def _named(model: nn.Module | str, data: Any) -> Iterator[tuple[str, str | None]]:
    """The model and data as names the configuration can hold (objects registered while the call
    runs: :func:`pbkit.models.sources.registered`, :func:`pbkit.data.memory.registered`)."""
    from pbkit.data import memory
    from pbkit.models import sources

    with contextlib.ExitStack() as stack:
        if isinstance(model, nn.Module):
            name = stack.enter_context(sources.registered(model))
        elif isinstance(model, str):
            name = model
        else:
            raise PbkitError(
                f"model: a torch.nn.Module or a name (`pbkit list models`), not a "
                f"{type(model).__name__}"
            )
        dataset = None
        if data is not None:
            dataset = (
                data if isinstance(data, str) else stack.enter_context(memory.registered(data))
            )
        yield name, dataset


def prune(
    model: nn.Module | str,
    *,
    method: str,
    speedup: float,
    example_inputs: Any = None,
    target: str | None = None,
    backend: str | None = None,
    batch: int | None = None,
    precision: str | None = None,
    scope: str | None = None,
    round_to: int | str | None = None,
    dataset: str | None = None,
    data: Any = None,
    data_root: str | None = None,
    checkpoint: str | None = None,
    pretrained: bool = False,
    out: str | Path | None = None,
    run_id: str | None = None,
    force: bool = False,
    set: Settings | None = None,  # noqa: A002 - the CLI's --set
    task: str | None = None,
    imgsz: int | None = None,
    trust: bool = False,
    finetune: Mapping[str, Any] | None = None,
    quiet: bool = False,
) -> Run:
    """Prune ``model`` to ``speedup`` with ``method`` (and finetune it where data and epochs are
    given), as ``pbkit prune`` does; returns the :class:`Run` (its folder holds the record).

    ``example_inputs``: a batch the model takes, ``(N, 3, S, S)``: its size is the input size
    (``imgsz`` otherwise). ``data``: a dataset name, or a torch ``Dataset``/``DataLoader`` of
    ``(image, label)``, or a ``(train, test)`` pair of them (classification). ``finetune``:
    ``finetune.*`` settings, e.g. ``{"epochs": 5, "lr": 0.01}``. ``set``: any other setting, as
    ``--set`` texts or a mapping of dotted keys to values. A module given here is trusted (it is
    pickled into the run folder so that a fresh process can measure it)."""
    overrides, typed = _settings(set)
    if example_inputs is not None:
        size = _size_of(example_inputs)
        if imgsz is not None and imgsz != size:
            raise PbkitError(f"imgsz={imgsz} but example_inputs are {size}x{size}")
        imgsz = size
    if dataset is not None and data is not None:
        raise PbkitError("give the data once: dataset= (a name) or data= (a name or objects)")
    with _named(model, data if data is not None else dataset) as (name, data_name):
        values: dict[str, Any] = {
            "model.name": name,
            "prune.method": method,
            "prune.speedup": speedup,
        }
        options = {
            "prune.scope": scope,
            "prune.round_to": round_to,
            "dataset.name": data_name,
            "dataset.root": None if data_root is None else str(data_root),
            "out": None if out is None else str(out),
            "run_id": run_id,
            "prune.target": target,
            "prune.backend": backend,
            "prune.batch": batch,
            "prune.precision": precision,
            "model.task": task,
            "model.input_size": imgsz,
        }
        values.update({k: v for k, v in options.items() if v is not None})
        if checkpoint:
            values.update({"model.weights": "checkpoint", "model.checkpoint": str(checkpoint)})
        if pretrained:
            values["model.weights"] = "pretrained"
        if trust or isinstance(model, nn.Module):
            values["model.trust_checkpoint"] = True
        values.update({f"finetune.{k}": v for k, v in (finetune or {}).items()})
        values.update(typed)
        cfg = config.load(None, overrides, values=values)
        outcome = orchestrate.run(cfg, until="finetune", force=force, quiet=quiet)
    return Run(
        outcome.run_dir,
        outcome.record,
        cfg.model.trust_checkpoint,
        outcome.ran,
        outcome.done_before,
    )


def run(
    config_file: str | Path,
    *,
    force: bool = False,
    nproc_per_node: int | None = None,
    nnodes: int | None = None,
    rdzv_endpoint: str | None = None,
    set: Settings | None = None,  # noqa: A002 - the CLI's --set
    quiet: bool = False,
) -> Run:
    """Every stage a YAML configuration asks for (prune, finetune, export, bench), continued from
    the first one not finished, as ``pbkit run`` does."""
    overrides, typed = _settings(set)
    values = {
        f"distributed.{k}": v
        for k, v in (
            ("nproc_per_node", nproc_per_node),
            ("nnodes", nnodes),
            ("rdzv_endpoint", rdzv_endpoint),
        )
        if v is not None
    }
    values.update(typed)
    cfg = config.load(config_file, overrides, values)
    outcome = orchestrate.run(cfg, until="bench", force=force, quiet=quiet)
    return Run(
        outcome.run_dir,
        outcome.record,
        cfg.model.trust_checkpoint,
        outcome.ran,
        outcome.done_before,
    )


@dataclass(frozen=True)
class Speedup:
    """One measured point: dense against pruned on one backend, precision and batch size."""

    backend: str
    precision: str
    batch: int
    dense_ms: float
    pruned_ms: float
    speedup: float
    speedup_ci: tuple[float, float] | None  # its 95% interval (this machine, in its state)
    stable: bool
    unstable_reasons: tuple[str, ...] = ()
    # where a later bench of the same files on this machine lands (its drift added; None where
    # the machine's drift is not known: ``bench(repeats=N)`` measures it)
    repeat_ci: tuple[float, float] | None = None


@dataclass
class Run:
    """A run folder: its record, its models, and what can still be done with it (export, bench).
    ``trust``: its model files may hold a pickled model (a module handed to :func:`prune`, a
    ``--model model.pt``), which runs code to load."""

    run_dir: Path
    record: record.Record
    trust: bool = False
    ran: list[str] = field(default_factory=list)  # the stages the call that made it ran
    done_before: list[str] = field(default_factory=list)  # the stages its record already had

    @classmethod
    def load(cls, path: str | Path, trust: bool = False) -> Run:
        """Any run folder made by pbkit (CLI, API or study), from disk."""
        folder = Path(path).expanduser()
        if not (folder / record.RECORD_NAME).is_file():
            raise PbkitError(
                f"{str(path)!r} is not a run folder (no record.json); make one with `pbkit "
                "prune` or `pbkit run`"
            )
        return cls(folder, record.read(folder), trust)

    @property
    def run_id(self) -> str:
        return self.record.run_id

    def _model(self, variant: str) -> nn.Module:
        from pbkit.models import checkpoint

        path = rundir.model_file(self.run_dir, self.record, variant)
        return checkpoint.load_model(path, self.trust)[0]

    @property
    def pruned(self) -> nn.Module:
        """The pruned model (finetuned, where the run finetuned it), ready to use."""
        return self._model(rundir.PRUNED)

    @property
    def dense(self) -> nn.Module:
        """The dense model the run pruned."""
        return self._model(rundir.DENSE)

    def export(
        self,
        format: str = "onnx",  # noqa: A002 - the CLI's --format
        *,
        precision: str | Sequence[str] | None = None,
        batch: int | Sequence[int] | None = None,
        opset: int | None = None,
        calibration: str | None = None,
        set: Settings | None = None,  # noqa: A002 - the CLI's --set
        quiet: bool = False,
    ) -> Run:
        """Export the dense and pruned models (``onnx``: parity-checked against torch, and with
        ``precision="int8"`` their INT8 models for ONNX Runtime and OpenVINO; ``tensorrt``:
        engines, one optimisation profile per batch), as ``pbkit export``. ``calibration``:
        ``synthetic`` calibrates INT8 on seeded N(0, 1) images (a model without a dataset)."""
        if format not in ("onnx", "tensorrt"):
            raise PbkitError(f"export format {format!r}: choose onnx or tensorrt")
        precisions, batches = _listed(precision), _listed(batch)
        if format != "tensorrt" and batches:
            raise PbkitError("--batch applies to --format tensorrt")
        if format != "tensorrt" and "fp16" in precisions:
            raise PbkitError(
                "--precision fp16 applies to --format tensorrt; ONNX files are fp32 and int8"
            )
        overrides, typed = _settings(set)
        values: dict[str, Any] = {"export.formats": [format]}
        if opset is not None:
            values["export.opset"] = opset
        if calibration is not None:
            values["export.int8.calibration"] = calibration
        if precisions and format != "tensorrt":
            values["export.precisions"] = list(dict.fromkeys(["fp32", *precisions]))
        elif precisions:
            values["export.tensorrt.precisions"] = precisions
        if batches:
            values["bench.batches"] = batches
        values.update(typed)
        self.record = orchestrate.export_run(self.run_dir, overrides, values, quiet, self.trust)
        return self

    def bench(
        self,
        backends: str | Sequence[str] | None = None,
        *,
        backend: str | Sequence[str] | None = None,
        batch: int | Sequence[int] | None = None,
        batches: Sequence[int] | None = None,
        precision: str | Sequence[str] | None = None,
        precisions: Sequence[str] | None = None,
        channels_last: bool | None = None,
        quick: bool = False,
        threads: int | None = None,
        repeats: int | None = None,
        spacing: float | None = None,
        calibration: str | None = None,
        set: Settings | None = None,  # noqa: A002 - the CLI's --set
        quiet: bool = False,
    ) -> BenchResult:
        """Measure dense against pruned (exporting first where a backend runs an exported file),
        as ``pbkit bench``; ``backend``/``backends``, ``batch``/``batches`` and
        ``precision``/``precisions`` are the same option under its CLI name and its plural;
        ``repeats`` benches ``spacing`` seconds apart (``bench.repeats``: the repeat interval, and
        this machine's drift kept); ``calibration`` as for :meth:`export` (int8 points)."""
        overrides, typed = _settings(set)
        values: dict[str, Any] = {}
        for key, given in (
            ("bench.backends", _listed(backend, backends)),
            ("bench.batches", _listed(batch, batches)),
            ("bench.precisions", _listed(precision, precisions)),
        ):
            if given:
                values[key] = given
        if channels_last:
            values["bench.channels_last"] = True
        if quick:
            values["bench.quick"] = True
        if threads is not None:
            values["bench.threads"] = threads
        if repeats is not None:
            values["bench.repeats"] = repeats
        if spacing is not None:
            values["bench.repeat_spacing_s"] = spacing
        if calibration is not None:
            values["export.int8.calibration"] = calibration
        values.update(typed)
        self.record = orchestrate.bench_run(self.run_dir, overrides, values, quiet, self.trust)
        return BenchResult(self, self.speedups())

    def explain(
        self,
        backend: str = "ort-cpu",
        *,
        batch: int = 1,
        runs: int = 50,
        threads: int | None = None,
        align: int = 0,
        set: Settings | None = None,  # noqa: A002 - the CLI's --set
        quiet: bool = False,
    ) -> Explained:
        """Per-layer latency of dense and pruned on ``backend`` from its own profiler, mapped back
        to the model's modules (``pbkit explain``); also kept in the record's ``explain``.
        ``align``: also the channel-alignment advisor on that many of the slowest pruned layers
        (the record's ``alignment``)."""
        from pbkit.stages import explain

        overrides, typed = _settings(set)
        if threads is not None:
            typed["bench.threads"] = threads
        settings = explain.ExplainSettings(backend, "fp32", batch, runs, align)
        self.record = orchestrate.explain_run(
            self.run_dir, settings, overrides, typed, quiet, self.trust
        )
        return self.record.explain[settings.key]

    def speedups(self) -> list[Speedup]:
        """Every measured point of the record, dense against pruned."""
        points = {(p.backend, p.precision, p.batch, p.variant): p for p in self.record.latency}
        out = []
        for (be, prec, batch, variant), p in points.items():
            dense = points.get((be, prec, batch, rundir.DENSE))
            if variant != rundir.PRUNED or dense is None:
                continue
            ci = tuple(p.speedup_ci) if p.speedup_ci else None
            out.append(
                Speedup(
                    be,
                    prec,
                    batch,
                    dense.median_ms,
                    p.median_ms,
                    p.speedup_vs_dense or dense.median_ms / p.median_ms,
                    ci,  # type: ignore[arg-type]
                    p.stable and dense.stable,
                    tuple(dict.fromkeys([*dense.unstable_reasons, *p.unstable_reasons])),
                    (p.repeat_ci[0], p.repeat_ci[1]) if p.repeat_ci else None,
                )
            )
        return out

    def table(self) -> Any:
        """The run's summary as a rich Table (what ``pbkit prune``/``bench`` print)."""
        from pbkit.report.tables import run_table

        return run_table(self.record)

    def __rich__(self) -> Any:
        return self.table()

    def __str__(self) -> str:
        from rich.console import Console

        buf = io.StringIO()
        Console(file=buf, width=200, highlight=False, soft_wrap=False).print(self.table())
        return buf.getvalue().rstrip("\n")

    @property
    def parity_failures(self) -> list[Parity]:
        return rundir.parity_failures(self.record)


@dataclass
class BenchResult:
    """What :meth:`Run.bench` measured: the points, and the run (``print`` shows its table)."""

    run: Run
    speedups: list[Speedup]

    def __rich__(self) -> Any:
        return self.run.table()

    def __str__(self) -> str:
        return str(self.run)
