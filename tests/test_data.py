from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pbkit import data
from pbkit.core.errors import PbkitError


def test_digits_is_real_offline_data_scaled_up() -> None:
    b = data.load("digits", image_size=16)
    x, y = b.train[0]
    assert x.shape == (3, 16, 16) and b.num_classes == 10
    assert len(b.train) + len(b.test) == 1797  # scikit-learn's digits
    labels = torch.stack([b.test[i][1] for i in range(len(b.test))])
    assert set(labels.tolist()) == set(range(10))


def test_synthetic_is_seeded() -> None:
    a, b, c = (
        data.load("synthetic", seed=1),
        data.load("synthetic", seed=1),
        data.load("synthetic", seed=2),
    )
    assert torch.equal(a.train[0][0], b.train[0][0])
    assert not torch.equal(a.train[0][0], c.train[0][0])


def test_limits_cut_the_splits() -> None:
    b = data.load("digits", train_limit=100, test_limit=50)
    assert (len(b.train), len(b.test)) == (100, 50)


def test_imagenet_folder_layout_loads(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("n01", "n02", "n03"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
                    d / f"{i}.png"
                )
    b = data.load("imagenet", root=str(tmp_path), image_size=32)
    assert b.num_classes == 3 and len(b.train) == 6 and len(b.test) == 6
    x, y = next(iter(b.loader("test", 4)))
    assert x.shape == (4, 3, 32, 32)


def test_missing_imagenet_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PbkitError, match="val"):
        (tmp_path / "train").mkdir()
        data.load("imagenet", root=str(tmp_path))


def test_cifar_offline_without_a_copy_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets.cifar as cifar

    def offline(*a: object, **k: object) -> None:
        raise OSError("Network is unreachable")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    with pytest.raises(PbkitError, match="cifar-10-batches-py"):
        data.load("cifar10", root=str(tmp_path))


def test_cifar_reads_an_extracted_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.cifar as cifar

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [
        ("data_batch_1", 8),
        ("data_batch_2", 8),
        ("data_batch_3", 8),
        ("data_batch_4", 8),
        ("data_batch_5", 8),
        ("test_batch", 6),
    ]:
        with open(folder / name, "wb") as f:
            pickle.dump(
                {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), "labels": list(range(n))},
                f,
            )
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    # the real files carry md5 sums; the generated ones cannot match them
    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    b = data.load("cifar10", root=str(tmp_path), download=False)
    assert (len(b.train), len(b.test), b.num_classes) == (40, 6, 10)
    assert b.train[0][0].shape == (3, 32, 32)


def test_unknown_dataset_lists_choices() -> None:
    with pytest.raises(PbkitError, match="digits"):
        data.load("mnist")
