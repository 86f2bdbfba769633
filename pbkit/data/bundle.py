"""A loaded dataset: its splits, classes, image size and the task it serves."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from pbkit.core.errors import PbkitError


@dataclass
class DataBundle:
    name: str
    num_classes: int
    image_size: int
    train: Dataset[Any] | None
    test: Dataset[Any] | None
    info: dict[str, Any] = field(default_factory=dict)
    # the pbkit.tasks key it serves; detect: info["yaml"] is the ultralytics dataset yaml
    task: str = "classify"
    workers: int = 0  # DataLoader worker processes (dataset.workers)
    pin_memory: bool = False
    persistent_workers: bool = False

    def loader(
        self, split: str, batch_size: int, seed: int = 0, shuffle: bool | None = None
    ) -> DataLoader[Any]:
        """Batches of a split; the order comes from ``seed`` (and each worker's random state from
        the seed and its index), so the same seed gives the same batches with any worker count."""
        ds = self.train if split == "train" else self.test
        if ds is None:
            raise PbkitError(
                f"{self.name} is a {self.task} dataset: it has no image/label tensors to load"
            )
        shuffle = (split == "train") if shuffle is None else shuffle
        g = torch.Generator().manual_seed(seed)
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=g,
            num_workers=self.workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.workers > 0,
            worker_init_fn=_seed_worker if self.workers else None,
            drop_last=False,
        )


def _seed_worker(worker_id: int) -> None:
    """Each worker's Python and NumPy random state from torch's per-worker seed (itself derived
    from the loader's generator), as PyTorch's reproducibility notes advise."""
    import random

    import numpy as np

    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
