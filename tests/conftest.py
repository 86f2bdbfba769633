"""Shared fixtures: a CLI runner that captures output and exit code, and small run folders.

``tests`` is a package: a test module imports what it shares with others from here as
``from tests.conftest import ...`` (one module object, whether pytest, an xdist worker or a
subprocess started in the repository root imports it); fixtures defined here reach every test
without an import."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("PBKIT_DATA", str(Path(__file__).parent / ".data-never-downloaded"))
warnings.filterwarnings("ignore", module="torch_pruning")
if os.environ.get("PYTEST_XDIST_WORKER"):  # parallel workers share the cores: one torch thread each
    import torch

    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]

# A fast, data-free setting for end-to-end runs: tiny CIFAR ResNet, quick bench.
QUICK = ["--set", "bench.quick=true", "--set", "export.exporter=torchscript"]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def pbkit(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run the real entry point (``pbkit.cli.main``) in-process; return exit code and output."""
    from pbkit.cli import main

    def run(*args: str) -> Result:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        cap = capsys.readouterr()
        return Result(code, cap.out, cap.err)

    return run


def once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Any]) -> Any:
    """What ``build(folder)`` returns (JSON), built once per test session even across
    pytest-xdist workers: the first worker to ask builds it under a file lock in the session's
    shared temporary folder; the others wait and read what it wrote. For fixtures whose tests only
    read what was built (a heavy run made twice on two cores costs the suite its time twice)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = (
        base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    )  # pytest-N/, shared by gw0, gw1...
    done = root / f"once-{name}.json"
    with FileLock(str(root / f"once-{name}.lock")):
        if not done.is_file():
            folder = root / f"once-{name}"
            folder.mkdir(exist_ok=True)
            done.write_text(json.dumps(build(folder)))
    return json.loads(done.read_text())


@pytest.fixture(scope="session")
def pruned_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One pruned + exported + benched run of resnet20_cifar, shared by read-only tests."""
    from pbkit import stages
    from pbkit.core import config

    def build(out: Path) -> str:
        cfg = config.load(
            None,
            [
                f"out={out}",
                "model.name=resnet20_cifar",
                "prune.method=l1",
                "prune.speedup=2",
                "bench.quick=true",
                "export.exporter=torchscript",
            ],
        )
        return str(stages.run(cfg, quiet=True).run_dir)

    return Path(once(tmp_path_factory, "pruned_run", build))


# The digits run: a base trained on real data, pruned 2x and finetuned (tests/test_stages.py), and
# the single-process run the distributed tests compare with (tests/test_distributed.py).
DIGITS = [
    "model.name=resnet20_cifar",
    "dataset.name=digits",
    "dataset.image_size=16",
    "base.epochs=15",
    "base.lr=0.05",
    "base.batch_size=64",
    "finetune.epochs=6",
    "finetune.lr=0.01",
    "finetune.batch_size=64",
    "finetune.schedule=cosine",
    "prune.method=l1",
    "prune.speedup=2",
]


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """The digits run's folder and record, up to finetuning, built once per session."""
    from pbkit import stages
    from pbkit.core import config, record

    def build(folder: Path) -> str:
        return str(
            stages.run(
                config.load(None, [*DIGITS, f"out={folder / 'runs'}"]), until="finetune", quiet=True
            ).run_dir
        )

    run_dir = Path(once(tmp_path_factory, "digits_run", build))
    return run_dir, record.read(run_dir)


def prune_model(
    model: Any,
    spec: Any,
    method: str | Any = "l1",
    protected: list[Any] | None = None,
    calibration: Any = None,
    sparse_train: Any = None,
    **settings: Any,
) -> Any:
    """Prune ``model`` (of ``spec``) in place with the library call the prune stage makes: the
    model's task names the protected modules; ``settings`` are PruneSettings fields
    (speedup defaults to 2)."""
    from pbkit import tasks
    from pbkit.pruning import PruneHooks, PruneSettings, methods, prune_to_target

    m = methods.get(method) if isinstance(method, str) else method
    heads = protected if protected is not None else tasks.get(spec.task).protected(model, spec)
    return prune_to_target(
        model,
        m,
        PruneSettings(**{"speedup": 2.0, **settings}),
        input_size=spec.input_size,
        num_classes=spec.num_classes,
        protected=heads,
        calibration=calibration,
        hooks=PruneHooks(sparse_train=sparse_train),
    )


def output_in_fresh_process(
    model_file: Path, x: Any, tmp: Path, expr: str = "m(x)", imports: str = ""
) -> Any:
    """``expr`` (of the model ``m`` loaded from ``model_file`` and the input ``x``) computed in a
    new Python process: a pruned model must reload without the process that pruned it."""
    import subprocess
    import sys

    import torch

    torch.save(x, tmp / "x.pt")
    code = (
        f"import sys, torch\nfrom pbkit.models.checkpoint import load_model\n{imports}\n"
        "m, _, _ = load_model(sys.argv[1])\nx = torch.load(sys.argv[2], weights_only=True)\n"
        f"with torch.no_grad():\n    torch.save({expr}, sys.argv[3])\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(model_file), str(tmp / "x.pt"), str(tmp / "y.pt")],
        check=True,
        capture_output=True,
    )
    return torch.load(tmp / "y.pt", weights_only=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` run where torch sees a CUDA device and skip cleanly elsewhere."""
    gpu_items = [i for i in items if i.get_closest_marker("gpu")]
    if not gpu_items:
        return
    from pbkit.measure.backends import cuda_reason

    reason = cuda_reason()
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=f"gpu test: {reason}"))
