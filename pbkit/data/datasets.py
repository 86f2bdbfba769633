"""Datasets by name, discoverable with ``pbkit list datasets``.

- ``cifar10`` / ``cifar100``: torchvision, downloaded into the data root (a clear error offline);
- ``imagenet``: an ImageFolder root holding ``train/`` and ``val/``;
- ``digits``: scikit-learn's real 8x8 handwritten digits (shipped with the package), scaled up:
  the offline real dataset;
- ``synthetic``: seeded tensors with learnable class structure (for smoke tests);
- ``coco`` or a ``data.yaml``: detection (:mod:`pbkit.data.detection`);
- ``shapes-seg``, ``voc``, ``ade20k``, ``cityscapes``: segmentation
  (:mod:`pbkit.data.segmentation`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from pbkit.core.config import DatasetCfg
from pbkit.core.errors import PbkitError, choices_error
from pbkit.data import memory
from pbkit.data import segmentation as seg
from pbkit.data.bundle import DataBundle
from pbkit.data.detection import coco, detection

DEFAULT_ROOT = os.environ.get("PBKIT_DATA", "~/.cache/pbkit/data")

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# the training augmentation, as records name it (the finetuning recipe includes it)
CIFAR_AUGMENT = "RandomCrop(32, padding=4) + RandomHorizontalFlip"
IMAGENET_AUGMENT = "RandomResizedCrop + RandomHorizontalFlip"


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    num_classes: int
    image_size: int
    needs: str
    description: str
    loader: Callable[..., DataBundle] = field(repr=False)


def _limit(ds: Dataset[Any], n: int | None) -> Dataset[Any]:
    if n is None or n >= len(ds):
        return ds
    return Subset(ds, list(range(n)))


def _cifar(name: str, classes: int) -> Callable[..., DataBundle]:
    def load(root: str, image_size: int | None, download: bool = True, **_: Any) -> DataBundle:
        import torchvision
        from torchvision import transforms as T

        size = image_size or 32
        norm = T.Normalize(CIFAR_MEAN, CIFAR_STD)
        train_tf = T.Compose(
            [
                T.RandomCrop(32, padding=4),
                T.RandomHorizontalFlip(),
                T.Resize(size),
                T.ToTensor(),
                norm,
            ]
        )
        test_tf = T.Compose([T.Resize(size), T.ToTensor(), norm])
        cls = torchvision.datasets.CIFAR10 if classes == 10 else torchvision.datasets.CIFAR100
        root_path = Path(root).expanduser()
        try:
            train = cls(str(root_path), train=True, download=download, transform=train_tf)
            test = cls(str(root_path), train=False, download=download, transform=test_tf)
        except (
            OSError,
            RuntimeError,
        ) as e:  # URLError is an OSError; a missing offline copy a RuntimeError
            folder = "cifar-10-batches-py" if classes == 10 else "cifar-100-python"
            raise PbkitError(
                f"{name}: not found under {str(root_path)!r} and could not be downloaded "
                f"({type(e).__name__}); place the extracted {folder}/ there or pass --data-root"
            ) from e
        return DataBundle(
            name,
            classes,
            size,
            train,
            test,
            {"root": str(root_path), "augmentation": CIFAR_AUGMENT},
        )

    return load


def _imagenet(root: str, image_size: int | None, **_: Any) -> DataBundle:
    from torchvision import datasets
    from torchvision import transforms as T

    size = image_size or 224
    root_path = Path(root).expanduser()
    for split in ("train", "val"):
        if not (root_path / split).is_dir():
            raise PbkitError(
                f"imagenet: folder {str(root_path / split)!r} not found; --data-root must hold "
                "train/ and val/ in ImageFolder layout (one folder per class)"
            )
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    test_tf = T.Compose(
        [T.Resize(int(round(size / 0.875))), T.CenterCrop(size), T.ToTensor(), norm]
    )
    try:
        train = datasets.ImageFolder(str(root_path / "train"), transform=train_tf)
        test = datasets.ImageFolder(str(root_path / "val"), transform=test_tf)
    except (FileNotFoundError, OSError) as e:
        raise PbkitError(f"imagenet: {e}") from e
    if train.classes != test.classes:
        raise PbkitError("imagenet: train/ and val/ hold different class folders")
    return DataBundle(
        "imagenet",
        len(train.classes),
        size,
        train,
        test,
        {"root": str(root_path), "augmentation": IMAGENET_AUGMENT},
    )


def _digits(image_size: int | None, seed: int = 0, **_: Any) -> DataBundle:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    size = image_size or 32
    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)

    def tensors(xs: Any, ys: Any) -> TensorDataset:
        t = torch.tensor(xs, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
        t = torch.nn.functional.interpolate(
            t, size=(size, size), mode="bilinear", align_corners=False
        )
        t = ((t - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
        return TensorDataset(t, torch.tensor(ys, dtype=torch.long))

    return DataBundle(
        "digits",
        10,
        size,
        tensors(xtr, ytr),
        tensors(xte, yte),
        {"source": "sklearn.datasets.load_digits", "split_seed": seed, "augmentation": "none"},
    )


def _synthetic(
    image_size: int | None,
    seed: int = 0,
    num_classes: int = 10,
    n_train: int = 512,
    n_test: int = 256,
    **_: Any,
) -> DataBundle:
    size = image_size or 32
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(num_classes, 3, size, size, generator=g)

    def make(n: int) -> TensorDataset:
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = protos[y] + 1.5 * torch.randn(n, 3, size, size, generator=g)
        return TensorDataset(x, y)

    return DataBundle(
        "synthetic",
        num_classes,
        size,
        make(n_train),
        make(n_test),
        {"seed": seed, "augmentation": "none"},
    )


DATASETS: dict[str, DatasetEntry] = {
    e.name: e
    for e in [
        DatasetEntry(
            "cifar10",
            10,
            32,
            "download or --data-root",
            "CIFAR-10 (torchvision)",
            _cifar("cifar10", 10),
        ),
        DatasetEntry(
            "cifar100",
            100,
            32,
            "download or --data-root",
            "CIFAR-100 (torchvision)",
            _cifar("cifar100", 100),
        ),
        DatasetEntry(
            "imagenet",
            1000,
            224,
            "--data-root with train/ val/",
            "ImageNet-1K, ImageFolder layout",
            _imagenet,
        ),
        DatasetEntry(
            "digits",
            10,
            32,
            "nothing (ships with scikit-learn)",
            "scikit-learn 8x8 digits, scaled up: offline real data",
            _digits,
        ),
        DatasetEntry(
            "synthetic",
            10,
            32,
            "nothing",
            "seeded Gaussian class prototypes (smoke tests)",
            _synthetic,
        ),
        DatasetEntry(
            "coco",
            80,
            640,
            "--data-root holding coco/ (ultralytics layout)",
            "COCO 2017 detection via ultralytics' coco.yaml (mAP50-95)",
            coco,
        ),
        DatasetEntry(
            "shapes-seg",
            4,
            64,
            "nothing (generated, seeded)",
            "segmentation: shapes on a textured background, per-pixel labels (mIoU)",
            seg.shapes_seg,
        ),
        DatasetEntry(
            "voc",
            21,
            512,
            "--data-root holding VOCdevkit/VOC2012/",
            "segmentation: Pascal VOC 2012 (mIoU)",
            seg.voc,
        ),
        DatasetEntry(
            "ade20k",
            150,
            512,
            "--data-root holding ADEChallengeData2016/",
            "segmentation: ADE20K scene parsing, 150 classes (mIoU)",
            seg.ade20k,
        ),
        DatasetEntry(
            "cityscapes",
            19,
            512,
            "--data-root holding leftImg8bit/ and gtFine/",
            "segmentation: Cityscapes fine, 19 classes (mIoU)",
            seg.cityscapes,
        ),
    ]
}


def configured(d: DatasetCfg, num_classes: int | None = None) -> DataBundle | None:
    """The dataset a run's ``dataset`` section names, with its loader settings; None without one."""
    if not d.name:
        return None
    bundle = load(
        d.name,
        root=d.root,
        image_size=d.image_size,
        seed=d.seed,
        train_limit=d.train_limit,
        test_limit=d.test_limit,
        download=d.download,
        num_classes=num_classes,
    )
    bundle.workers, bundle.pin_memory, bundle.persistent_workers = (
        d.workers,
        d.pin_memory,
        d.persistent_workers,
    )
    return bundle


def load(
    name: str,
    root: str | None = None,
    image_size: int | None = None,
    seed: int = 0,
    train_limit: int | None = None,
    test_limit: int | None = None,
    download: bool = True,
    num_classes: int | None = None,
) -> DataBundle:
    """Load a dataset by name, or a detection dataset by its yaml path (``path/to/data.yaml``).
    ``num_classes`` only shapes ``synthetic`` (to match a model)."""
    if name.endswith((".yaml", ".yml")):
        return detection(name, image_size)
    if name.startswith(memory.PREFIX):
        bundle = memory.load(name)
    elif name not in DATASETS:
        raise choices_error("dataset", name, list(DATASETS))
    else:
        root = str(Path(root or DEFAULT_ROOT).expanduser())
        extra = {"num_classes": num_classes} if name == "synthetic" and num_classes else {}
        bundle = DATASETS[name].loader(
            root=root, image_size=image_size, seed=seed, download=download, **extra
        )
    if bundle.task == "detect":
        return bundle
    bundle.train = _limit(bundle.train, train_limit)
    bundle.test = _limit(bundle.test, test_limit)
    bundle.info.update(train_size=len(bundle.train), test_size=len(bundle.test))
    return bundle
