from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pbkit import models
from pbkit.core.errors import PbkitError
from pbkit.models import checkpoint, weights
from tests.conftest import prune_model

RELOAD = """
import sys, torch
from pbkit.models.checkpoint import load_model
m, spec, _ = load_model(sys.argv[1])
x = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    torch.save(m(x), sys.argv[3])
"""


def _pruned(
    tmp_path: Path, name: str = "resnet20_cifar", **kw: object
) -> tuple[torch.nn.Module, Path]:
    spec = models.resolve(name, **kw)  # type: ignore[arg-type]
    m = models.build(spec).eval()
    prune_model(m, spec, "l2", scope="global", iterative_steps=100)
    path = tmp_path / "pruned.pt"
    checkpoint.save_model(m, spec, path)
    return m, path


@pytest.mark.parametrize(
    "name,kw",
    [
        ("resnet20_cifar", {}),
        (
            "timm:vit_small_patch16_224",
            {"input_size": 32, "num_classes": 10, "kwargs": {"depth": 2, "patch_size": 8}},
        ),
    ],
)
def test_pruned_model_reloads_in_a_fresh_process(tmp_path: Path, name: str, kw: dict) -> None:
    m, path = _pruned(tmp_path, name, **kw)
    size = 32
    x = torch.randn(2, 3, size, size)
    torch.save(x, tmp_path / "x.pt")
    subprocess.run(
        [sys.executable, "-c", RELOAD, str(path), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
        check=True,
        capture_output=True,
    )
    with torch.no_grad():
        expected = m(x)
    assert torch.allclose(torch.load(tmp_path / "y.pt", weights_only=True), expected, atol=1e-6)


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (Path(_Evil.target),))

    target = ""


def test_loading_never_runs_code_from_the_file(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _Evil.target = str(marker)
    bad = tmp_path / "evil.pt"
    torch.save({"state_dict": _Evil()}, bad)
    with pytest.raises(PbkitError, match="pickled Python objects"):
        weights.read_file(bad)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "bad.pt"
    p.write_bytes(content)
    with pytest.raises(PbkitError, match="corrupt or not a PyTorch file"):
        weights.read_file(p)


def test_truncated_model_file_is_a_clear_error(tmp_path: Path) -> None:
    _, path = _pruned(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PbkitError):
        checkpoint.load_model(path)


def test_plain_state_dicts_load_and_mismatches_are_named(tmp_path: Path) -> None:
    spec = models.resolve("resnet20_cifar")
    src = models.build(spec, seed=5)
    p = tmp_path / "sd.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, p)
    dst = checkpoint.load_base(spec, p, seed=6)
    assert weights.state_sha256(dst) == weights.state_sha256(src)
    with pytest.raises(PbkitError, match="does not fit the model"):
        checkpoint.load_base(models.resolve("resnet20_cifar", num_classes=7), p)


def test_state_hash_depends_on_values() -> None:
    spec = models.resolve("resnet20_cifar")
    assert weights.state_sha256(models.build(spec, seed=1)) != weights.state_sha256(
        models.build(spec, seed=2)
    )


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(PbkitError, match="not found"):
        weights.read_file(tmp_path / "nope.pt")


def test_pickle_module_is_what_torch_refuses() -> None:
    # guard for the test above: the payload really is a code-running pickle
    assert b"touch" in pickle.dumps(_Evil())


def test_a_module_shared_between_two_places_reloads() -> None:
    # CoaT's serial blocks share their convolutional position encoding with the model: its state
    # dict lists those tensors under both names
    class Shared(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pe = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4)
            self.blocks = torch.nn.ModuleList(
                [torch.nn.Sequential(self.pe, torch.nn.Conv2d(4, 4, 1))]
            )

    saved, fresh = Shared(), Shared()
    assert "blocks.0.0.weight" in saved.state_dict() and "pe.weight" in saved.state_dict()
    obj = {
        "spec": {"name": "shared"},
        "modules": checkpoint.module_attributes(saved),
        "state": saved.state_dict(),
    }
    checkpoint.apply_file(fresh, obj, "shared.pt")
    assert fresh.blocks[0][0] is fresh.pe and torch.equal(fresh.pe.weight, saved.pe.weight)
    assert torch.equal(fresh.blocks[0][1].weight, saved.blocks[0][1].weight)
