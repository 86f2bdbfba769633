"""Datasets handed to the Python API as objects (:func:`pbkit.prune` ``data=``): a torch
``Dataset`` or ``DataLoader`` of ``(image, label)`` pairs, or a ``(train, test)`` pair of them.

While the API call runs, such data goes by a name of its own, ``memory:<sha12>``: the sha256 of its
samples (every image's and label's bytes, in order), so the same data names the same run and other
data another. Classification only: a detection or segmentation dataset is named or given as files.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from pbkit.core.errors import PbkitError
from pbkit.data.bundle import DataBundle

PREFIX = "memory:"
_BUNDLES: dict[str, DataBundle] = {}


def _dataset(obj: Any, what: str) -> Dataset[Any]:
    if isinstance(obj, DataLoader):
        return obj.dataset  # (batches are made by pbkit, with the recipe's batch size)
    if isinstance(obj, Dataset) or (hasattr(obj, "__getitem__") and hasattr(obj, "__len__")):
        return obj
    raise PbkitError(
        f"data: the {what} split is a {type(obj).__name__}; give a torch Dataset or DataLoader of "
        "(image, label) pairs, or a dataset name (`pbkit list datasets`)"
    )


def _sample(ds: Dataset[Any], i: int, what: str) -> tuple[torch.Tensor, int]:
    item = ds[i]
    if not isinstance(item, tuple | list) or len(item) != 2:
        raise PbkitError(f"data: {what} sample {i} is not an (image, label) pair")
    x, y = item
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[0] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise PbkitError(f"data: {what} image {i} is {shape}, not a (3, H, W) tensor")
    label = int(y.item() if isinstance(y, torch.Tensor) else y)
    return x, label


def _digest(splits: dict[str, Dataset[Any]]) -> tuple[str, int, int]:
    """sha256 of every sample of every split, the image size and the number of classes seen."""
    h = hashlib.sha256()
    size, top = 0, -1
    for what, ds in splits.items():
        n = len(ds)
        if n == 0:
            raise PbkitError(f"data: the {what} split is empty")
        h.update(f"{what}:{n}|".encode())
        for i in range(n):
            x, y = _sample(ds, i, what)
            if x.shape[1] != x.shape[2] or (size and x.shape[1] != size):
                raise PbkitError(
                    f"data: {what} image {i} is {x.shape[1]}x{x.shape[2]}; pbkit measures square "
                    f"images of one size ({size or x.shape[1]})"
                )
            size = int(x.shape[1])
            top = max(top, y)
            h.update(x.detach().float().contiguous().numpy().tobytes())
            h.update(str(y).encode())
    return h.hexdigest(), size, top + 1


@contextlib.contextmanager
def registered(data: Any, num_classes: int | None = None) -> Iterator[str]:
    """Make ``data`` (a dataset, a loader, or a ``(train, test)`` pair) nameable while the block
    runs; yields its name. One split serves as both (evaluation and calibration use its samples;
    finetuning on the split it evaluates is the user's choice to make, and the record says so)."""
    if isinstance(data, tuple | list):
        if len(data) != 2:
            raise PbkitError("data: give one dataset, or a (train, test) pair")
        splits = {"train": _dataset(data[0], "train"), "test": _dataset(data[1], "test")}
    else:
        one = _dataset(data, "given")
        splits = {"train": one, "test": one}
    digest, size, seen = _digest(
        {"train": splits["train"]} if splits["train"] is splits["test"] else splits
    )
    classes = num_classes or seen
    name = f"{PREFIX}{digest[:12]}"
    bundle = DataBundle(
        name,
        classes,
        size,
        splits["train"],
        splits["test"],
        {
            "source": "Python objects given to pbkit.prune",
            "sha256": digest,
            "one_split": splits["train"] is splits["test"],
            "augmentation": "as given",
        },
    )
    had = _BUNDLES.get(name)
    _BUNDLES[name] = bundle
    try:
        yield name
    finally:
        if had is None:
            _BUNDLES.pop(name, None)
        else:
            _BUNDLES[name] = had


def load(name: str) -> DataBundle:
    bundle = _BUNDLES.get(name)
    if bundle is None:
        raise PbkitError(
            f"dataset {name} was data given to pbkit.prune in another process; give it again"
        )
    return DataBundle(
        bundle.name,
        bundle.num_classes,
        bundle.image_size,
        bundle.train,
        bundle.test,
        dict(bundle.info),
    )
