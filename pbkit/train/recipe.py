"""What a training run is asked to do: the :class:`Recipe` (optimizer, schedule, epochs, batch,
seed; the record keeps it verbatim) and the :class:`TrainRequest` (the recipe and everything a
caller hooks into the loop), one signature for every task's ``train`` and every caller."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from pbkit.core.config import KDCfg
from pbkit.train.distributed import Dist

OnEpoch = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class Recipe:
    """A training recipe (base training, sparse training, finetuning, the scratch baseline, the
    training between interleaved pruning steps). ``milestones``: integers are epochs, numbers in
    (0, 1) fractions of the run."""

    epochs: int
    optimizer: str  # sgd | adamw | adam
    lr: float
    batch_size: int
    seed: int
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    schedule: str = "cosine"  # multistep | step | cosine | constant
    milestones: tuple[float | int, ...] = ()
    step_size: int = 30
    gamma: float = 0.1
    label_smoothing: float = 0.0
    amp: str = "off"  # off | bf16 | fp16
    channels_last: bool = False

    @classmethod
    def of(cls, section: Any, **changes: Any) -> Recipe:
        """The recipe of a configuration's training section (``base``, ``sparsify``,
        ``finetune``; the keys that are not a recipe's, like ``kd`` or ``reg``, left out), with
        ``changes``."""
        data = section.model_dump() if hasattr(section, "model_dump") else dict(section)
        return cls.from_dict({**data, **changes})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        known = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in data.items() if k in known}
        kept["milestones"] = tuple(kept.get("milestones") or ())
        return cls(**kept)

    def replace(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)

    def as_record(self) -> dict[str, Any]:
        """The recipe as the record and a distributed job hold it (plain JSON)."""
        out = dataclasses.asdict(self)
        out["milestones"] = list(self.milestones)
        return out

    @property
    def milestone_epochs(self) -> list[int]:
        """Milestones as epochs: integers are epochs, numbers in (0, 1) fractions of the run."""
        return [
            int(round(m * self.epochs)) if isinstance(m, float) and 0 < m < 1 else int(m)
            for m in self.milestones
        ]


@dataclass
class TrainRequest:
    """One training run of a task's model: the recipe, and what the caller hooks into the loop.

    - ``evaluate_each_epoch``: the test metric after every epoch (False: sparse training and the
      training between pruning steps, which only train);
    - ``on_epoch(epoch, row)``: progress after each epoch;
    - ``regularize()``: between backward and the optimizer step (a sparsifying regularizer);
    - ``after_epoch()``: after every epoch (GrowingReg's penalty update);
    - ``teacher`` and ``kd``: distil the teacher's outputs into the model's;
    - ``max_iters``: stop after that many optimizer steps (training between pruning steps);
    - ``dist``: this process is one rank of a DistributedDataParallel job (``batch_size`` is the
      global batch)."""

    recipe: Recipe
    eval_batch_size: int = 256
    evaluate_each_epoch: bool = True
    on_epoch: OnEpoch | None = None
    regularize: Callable[[], None] | None = None
    after_epoch: Callable[[], None] | None = None
    teacher: nn.Module | None = field(default=None, repr=False)
    kd: KDCfg | None = None
    max_iters: int | None = None
    dist: Dist | None = None

    def with_(self, **changes: Any) -> TrainRequest:
        return dataclasses.replace(self, **changes)
