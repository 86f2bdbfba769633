"""Study files: a run configuration every trial shares, a grid of values, and the trials they make.

A study file is YAML::

    name: digits-reference          # its folder under results/studies/ (or --out)
    extends: ../bench/digits-resnet20.yaml   # optional: a run config, relative to this file
    config: {...}                   # run-config keys every trial shares, merged over `extends`
    grid:                           # dotted config keys -> lists of values; trials = their product
      prune.method: [l1, lamp, taylor]
      prune.speedup: [2, 4]
      seed: [0, 1, 2]
    exclude:                        # optional: partial key=value mappings whose trials are dropped
      - {prune.method: taylor, prune.speedup: 4}
    resources: {cpu: 1, gpu: 0}  # what each trial asks of a worker (its torch threads follow cpu)
    address: null                # a Ray cluster (auto, ray://host:10001); null: a local Ray
    storage: null                # a path every node sees; null: artifacts stay where they are made
    min_setup: S3.2              # optional: refuse a grid whose methods never meet at this setup

A grid value that is a mapping is merged into the key's section (``finetune: [{lr: 0.01},
{lr: 0.001, kd: {enabled: true}}]``: whole finetuning recipes as one axis).

A trial's configuration: defaults <- ``extends`` <- ``config`` <- ``--set`` <- its grid point. Its
hash is the run's identity (:mod:`pbkit.stages.rundir`): trials that cannot differ in result share
one run.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pbkit.core import config
from pbkit.core.errors import PbkitError
from pbkit.pruning import methods
from pbkit.report import setups
from pbkit.stages import rundir

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)

    @property
    def threads(self) -> int:
        """Torch threads of a trial: its CPUs, so trials never oversubscribe a machine."""
        return max(int(self.cpu), 1)


class StudyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    extends: str | None = None
    config: dict[str, Any] = {}
    grid: dict[str, list[Any]]
    exclude: list[dict[str, Any]] = []
    resources: Resources = Resources()
    address: str | None = None
    storage: str | None = None
    max_retries: int = Field(2, ge=0)
    min_setup: str | None = None  # the weakest comparison setup the grid must allow (S1 ... S4.2)

    @field_validator("min_setup")
    @classmethod
    def _level(cls, v: str | None) -> str | None:
        if v is not None:
            setups.level_index(v)  # a ValueError names the levels
        return v

    @field_validator("grid")
    @classmethod
    def _axes(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not v:
            raise ValueError(
                "the grid needs at least one axis (a dotted config key and its values)"
            )
        for key, values in v.items():
            if not values:
                raise ValueError(f"grid axis {key!r} has no values")
            if key in ("out", "run_id"):
                raise ValueError(f"grid axis {key!r}: a study names and places its runs itself")
        return v


@dataclass
class Trial:
    """One grid point: its values, its configuration and its run identity (or why it is skipped)."""

    index: int
    params: dict[str, Any]
    cfg: config.Config
    hash: str
    run_id: str
    skip: str | None = None  # why the trial does not apply (a method that does not fit the model)
    base_key: str | None = None  # the trained base it needs (trials with the same key share one)


@dataclass
class Study:
    file: StudyFile
    path: Path  # the study file
    shared: dict[str, Any]  # the configuration every trial starts from (not yet validated)
    explicit: set[str]
    trials: list[Trial]

    @property
    def name(self) -> str:
        return self.file.name


def read(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Study:
    """Read and check a study file and expand its grid; every error is one line."""
    path = Path(path).expanduser()
    raw = config.read_yaml(path)
    try:
        spec = StudyFile.model_validate(raw)
    except ValidationError as e:
        errors = e.errors()  # a misspelt key explains a missing one: name it first
        err = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key; valid keys: {', '.join(StudyFile.model_fields)}"
        raise PbkitError(f"study {str(path)!r}: {loc}: {msg}") from e
    layers = []
    if spec.extends:
        base = (path.parent / spec.extends).resolve()
        layers.append(config.read_yaml(base))
    layers.append(spec.config)
    shared, explicit = config.assemble(layers, overrides)
    if shared.get("run_id"):
        raise PbkitError(
            f"study {spec.name}: a study names its runs by their configuration; remove run_id"
        )
    study = Study(spec, path, shared, explicit, expand(spec, shared, explicit))
    if spec.min_setup is not None:
        check_setup(study)
    return study


def check_setup(study: Study) -> None:
    """Refuse a grid in which two methods of one comparison never meet at ``min_setup``: every
    pair must share, at least once, everything that level holds equal (the base, the finetuning
    epochs and recipe, ... ; seeds are repeats)."""
    level = study.file.min_setup
    assert level is not None
    trials = []
    for t in study.trials:
        if t.skip is None:
            method = methods.get(t.cfg.prune.method)
            base = t.base_key or rundir.identity_hash(
                {"model": rundir.identity_fields(t.cfg, method)["model"]}
            )
            trials.append((method.key, setups.from_config(t.cfg, method, base)))
    why = setups.unmet(trials, level)
    if why is not None:
        raise PbkitError(f"study {study.name}: min_setup {level} cannot be met: {why}")


def _dropped(point: dict[str, Any], rules: list[dict[str, Any]]) -> bool:
    return any(all(point.get(k) == v for k, v in rule.items()) for rule in rules)


def _leaves(key: str, value: Any) -> list[tuple[str, Any]]:
    """A mapping value merges into its section, key by key; any other value sets the key."""
    if not isinstance(value, dict) or not value:
        return [(key, value)]
    return [leaf for k, v in value.items() for leaf in _leaves(f"{key}.{k}", v)]


def expand(spec: StudyFile, shared: dict[str, Any], explicit: set[str]) -> list[Trial]:
    keys = list(spec.grid)
    trials: list[Trial] = []
    for values in itertools.product(*(spec.grid[k] for k in keys)):
        point = dict(zip(keys, values, strict=True))
        if _dropped(point, spec.exclude):
            continue
        data = copy.deepcopy(shared)
        keys_set = set()
        for k, v in point.items():
            for key, value in _leaves(k, v):
                data = config.set_value(data, key, value)
                keys_set.add(key)
        if data["bench"].get("threads") is None:  # CPU backends measure with the trial's own CPUs
            data["bench"]["threads"] = spec.resources.threads
        cfg = config.finish(data, explicit | keys_set, where=f"study {spec.name}, trial {point}")
        trials.append(_trial(len(trials), point, cfg))
    if not trials:
        raise PbkitError(f"study {spec.name}: the grid has no trial left after the exclude rules")
    return trials


def _trial(index: int, point: dict[str, Any], cfg: config.Config) -> Trial:
    spec = rundir.resolve_model(cfg)
    method = methods.get(cfg.prune.method)  # an unknown name is an error of the whole study
    skip = None
    if spec.family not in method.families:
        skip = (
            f"{method.key} does not apply to {spec.family} models (it applies to"
            f" {', '.join(method.families)})"
        )
    fields = rundir.identity_fields(cfg, method, spec)
    digest = rundir.identity_hash(fields)
    base_key = (
        rundir.identity_hash(
            {"model": fields["model"], "dataset": fields.get("dataset"), "base": fields.get("base")}
        )
        if rundir.trains_base(cfg)
        else None
    )
    return Trial(
        index,
        point,
        cfg,
        digest,
        rundir.run_id_for(cfg, digest, spec.label),
        skip=skip,
        base_key=base_key,
    )
