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
    task: str = "classify"  # the pbkit.tasks key it serves; detect: info["yaml"] is the ultralytics dataset yaml

    def loader(self, split: str, batch_size: int, seed: int = 0, shuffle: bool | None = None,
               num_workers: int = 0) -> DataLoader[Any]:
        ds = self.train if split == "train" else self.test
        if ds is None:
            raise PbkitError(f"{self.name} is a {self.task} dataset: it has no image/label tensors to load")
        shuffle = (split == "train") if shuffle is None else shuffle
        g = torch.Generator().manual_seed(seed)
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g,
                          num_workers=num_workers, drop_last=False)
