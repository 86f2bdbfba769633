"""The user's own model: from a Python file (``--model net.py:build``), an import path, a pickled
module, an ultralytics checkpoint trained on the user's classes, and through the Python API; each
prunes, reloads in a fresh process and names its source in the record; bad input is one line."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from pbkit.core.errors import PbkitError
from tests.conftest import QUICK, Result

# A small CNN with a residual add, a depth-wise convolution, a squeeze-excitation gate and a
# multi-head attention block of its own (whose reshape reads its width from its input: the
# dependency graph cannot follow it, so it is held fixed and the rest prunes).
NET = """
import torch
from torch import nn


class SE(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class Attention(nn.Module):
    def __init__(self, dim, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        qkv = self.qkv(t).reshape(b, h * w, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1) / (c // self.heads) ** 0.5).softmax(-1)
        o = (a @ v).transpose(1, 2).reshape(b, h * w, c)
        return x + self.proj(o).transpose(1, 2).reshape(b, c, h, w)


class Block(nn.Module):
    def __init__(self, c, e=3):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c * e, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c * e)
        self.dw = nn.Conv2d(c * e, c * e, 3, padding=1, groups=c * e, bias=False)
        self.bn2 = nn.BatchNorm2d(c * e)
        self.se = SE(c * e)
        self.project = nn.Conv2d(c * e, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.se(torch.relu(self.bn2(self.dw(y))))
        return torch.relu(x + self.bn3(self.project(y)))


class Net(nn.Module):
    def __init__(self, num_classes=10, width=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.block1 = Block(width)
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(2 * width), nn.ReLU())
        self.block2 = Block(2 * width)
        self.attn = Attention(2 * width)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.attn(self.block2(self.down(self.block1(self.stem(x)))))
        return self.head(x.mean((2, 3)))


def build(num_classes=10, width=16):
    return Net(num_classes, width)
"""
SIZE = 16
STEPS = 60  # (a 60-step schedule keeps these quick; the default is 400)
PRUNE = [
    "--method",
    "l2",
    "--speedup",
    "2",
    "--imgsz",
    str(SIZE),
    "--set",
    f"prune.iterative_steps={STEPS}",
]


@pytest.fixture(scope="module")
def net_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("own") / "net.py"
    path.write_text(textwrap.dedent(NET))
    return path


def _import(path: Path, name: str = "users_net") -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _widths(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _in_fresh_process(run_dir: Path, trust: bool, tmp: Path, size: int = SIZE) -> dict[str, Any]:
    """Load the run's pruned model in a new interpreter (not the test's: no import of the user's
    module), run it, and report its shapes and output."""
    code = textwrap.dedent(
        """
        import json, sys, torch
        import pbkit
        run = pbkit.Run.load(sys.argv[1], trust=sys.argv[2] == "1")
        m = run.pruned
        torch.manual_seed(0)
        with torch.no_grad():
            y = m(torch.randn(2, 3, int(sys.argv[3]), int(sys.argv[3])))
        y = y[0] if isinstance(y, (tuple, list)) else y
        print(json.dumps({"shape": list(y.shape), "sum": float(y.sum()),
                          "widths": {k: list(v.shape) for k, v in m.state_dict().items()}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(run_dir), "1" if trust else "0", str(size)],
        capture_output=True,
        text=True,
        cwd=tmp,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_a_model_file_prunes_from_the_cli_and_the_api_alike(
    net_file: Path, tmp_path: Path, pbkit: Any
) -> None:
    import pbkit as api  # the API as users write it: pbkit.prune, pbkit.Run

    cli: Result = pbkit(
        "prune", "--model", f"{net_file}:build", *PRUNE, "--out", tmp_path / "cli", "--json", *QUICK
    )
    assert cli.code == 0, cli.err
    cli_run = Path(cli.json()["run_dir"])
    rec = cli.json()["record"]
    origin = rec["model"]["origin"]
    assert rec["model"]["source"] == "file" and origin["kind"] == "file"
    assert origin["path"] == str(net_file) and origin["function"] == "build"
    assert len(origin["sha256"]) == 64 and rec["method"]["achieved_speedup"] >= 2.0
    assert rec["method"]["held_fixed"] == ["attn"]  # its own attention: held, the rest pruned
    assert cli_run.name.startswith("net-build-l2-protected-2x-")

    torch.manual_seed(0)  # the CLI builds the model seeded with model.seed (0), as this does
    model = _import(net_file).build()
    before = _widths(model)
    run = api.prune(
        model,
        example_inputs=torch.randn(1, 3, SIZE, SIZE),
        method="l2",
        speedup=2.0,
        out=tmp_path / "api",
        set=["bench.quick=true", "export.exporter=torchscript", f"prune.iterative_steps={STEPS}"],
        quiet=True,
    )
    assert _widths(model) == before  # the caller's model is left as it was
    assert run.record.model.source == "object" and run.record.model.weights == "given"
    assert run.record.model.origin is not None and run.record.model.origin.class_name == "Net"
    assert run.record.counts.macs_pruned == rec["counts"]["macs_pruned"]
    assert run.record.counts.macs_base == rec["counts"]["macs_base"]
    assert _widths(run.pruned) == _widths(api.Run.load(cli_run).pruned)  # same widths
    # one record each, and both reload in a fresh process (the API's holds the pickled module)
    assert sorted(p.name for p in (tmp_path / "api").iterdir() if not p.name.startswith(".")) == [
        run.run_id
    ]
    a = _in_fresh_process(cli_run, trust=False, tmp=tmp_path)
    b = _in_fresh_process(run.run_dir, trust=True, tmp=tmp_path)
    assert a["shape"] == b["shape"] == [2, 10] and a["widths"] == b["widths"]
    # the same model again finds its run
    again = api.prune(
        model,
        example_inputs=torch.randn(1, 3, SIZE, SIZE),
        method="l2",
        speedup=2.0,
        out=tmp_path / "api",
        set=["bench.quick=true", f"prune.iterative_steps={STEPS}"],
        quiet=True,
    )
    assert again.run_dir == run.run_dir and again.ran == [] and "prune" in again.done_before


def test_a_pickled_model_run_loads_only_when_trusted(tmp_path: Path) -> None:
    from pbkit import api

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 4),
    )
    run = api.prune(
        model,
        example_inputs=torch.randn(1, 3, 8, 8),
        method="l1",
        speedup=1.5,
        out=tmp_path,
        quiet=True,
    )
    with pytest.raises(PbkitError, match="pickled model .*--trust"):
        _ = api.Run.load(run.run_dir).pruned
    assert isinstance(api.Run.load(run.run_dir, trust=True).pruned, torch.nn.Sequential)
    with pytest.raises(PbkitError, match="--trust"):  # a later command must give the trust itself
        api.Run.load(run.run_dir).export()


def test_a_whole_pickled_module_from_the_cli_with_trust(
    net_file: Path, tmp_path: Path, pbkit: Any
) -> None:
    torch.manual_seed(0)
    pt = tmp_path / "model.pt"
    module = _import(net_file, "users_net_pickled")
    torch.save(module.build(), pt)
    sys.modules.pop("users_net_pickled")  # unpickling it needs its module importable...
    sys.path.insert(0, str(net_file.parent))
    try:
        untrusted = pbkit("prune", "--model", pt, *PRUNE, "--out", tmp_path / "runs", *QUICK)
        assert (
            untrusted.code == 2 and "--trust" in untrusted.err and "\n" not in untrusted.err.strip()
        )
        assert not (tmp_path / "runs").exists()  # nothing written
        # (its class lives in a module named users_net_pickled: make it importable as that)
        (net_file.parent / "users_net_pickled.py").write_text(net_file.read_text())
        ok = pbkit(
            "prune", "--model", pt, *PRUNE, "--trust", "--out", tmp_path / "runs", "--json", *QUICK
        )
    finally:
        sys.path.remove(str(net_file.parent))
    assert ok.code == 0, ok.err
    rec = ok.json()["record"]
    assert rec["model"]["origin"]["kind"] == "pickle" and rec["model"]["weights"] == "given"
    assert rec["model"]["name"].endswith("model.pt")


def test_an_import_path_with_kwargs(
    net_file: Path, tmp_path: Path, monkeypatch: Any, pbkit: Any
) -> None:
    pkg = tmp_path / "site" / "my_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(net_file.read_text())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    r = pbkit(
        "prune",
        "--model",
        "my_pkg.models:build",
        *PRUNE,
        "--set",
        "model.kwargs.width=8",
        "--out",
        tmp_path / "runs",
        "--json",
        *QUICK,
    )
    assert r.code == 0, r.err
    m = r.json()["record"]["model"]
    assert m["origin"]["kind"] == "import" and m["origin"]["module"] == "my_pkg.models"
    assert m["kwargs"] == {"width": 8} and m["origin"]["sha256"]
    bad = pbkit(
        "prune",
        "--model",
        "my_pkg.models:build",
        *PRUNE,
        "--set",
        "model.kwargs.depth=3",
        "--out",
        tmp_path / "runs2",
    )
    assert bad.code == 2 and "does not take the arguments" in bad.err


def test_the_run_notices_a_changed_model_file(net_file: Path, tmp_path: Path, pbkit: Any) -> None:
    own = tmp_path / "net.py"
    own.write_text(net_file.read_text())
    r = pbkit(
        "prune", "--model", f"{own}:build", *PRUNE, "--out", tmp_path / "runs", "--json", *QUICK
    )
    assert r.code == 0, r.err
    run_dir = r.json()["run_dir"]
    own.write_text(own.read_text() + "\n# changed\n")
    again = pbkit("export", run_dir)
    assert again.code == 2 and "changed since this model was made" in again.err


BAD_FILES = {
    "no_function": ("def other():\n    return 1\n", "has no 'build'"),
    "raises": ("def build():\n    raise ValueError('boom')\n", "raised ValueError: boom"),
    "no_params": ("import torch\ndef build():\n    return torch.nn.ReLU()\n", "no parameters"),
    "not_a_module": ("def build():\n    return 'a model'\n", "gave a str, not a torch.nn.Module"),
    "syntax": ("def build(:\n", "failed to run: SyntaxError"),
    "no_size": ("import torch\ndef build():\n    return torch.nn.Linear(3, 2)\n", "--imgsz"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_model_files_are_one_line_and_write_nothing(
    case: str, tmp_path: Path, pbkit: Any
) -> None:
    body, expected = BAD_FILES[case]
    path = tmp_path / f"{case}.py"
    path.write_text(body)
    size = [] if case == "no_size" else ["--imgsz", "8"]
    r = pbkit(
        "prune",
        "--model",
        f"{path}:build",
        "--method",
        "l1",
        "--speedup",
        "2",
        *size,
        "--out",
        tmp_path / "runs",
    )
    assert r.code == 2, r.err
    assert expected in r.err and r.err.count("\n") == 1, r.err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("no_such_pkg.models:build", "module 'no_such_pkg.models' not found"),
        ("missing/net.py:build", "not found"),
        ("missing.pt", "not found"),
    ],
)
def test_unknown_sources_are_one_line(
    model: str, expected: str, tmp_path: Path, pbkit: Any
) -> None:
    r = pbkit("prune", "--model", model, "--method", "l1", "--speedup", "2", "--out", tmp_path)
    assert r.code == 2 and expected in r.err and r.err.count("\n") == 1, r.err


def test_a_checkpoint_that_is_not_a_module_is_one_line(tmp_path: Path, pbkit: Any) -> None:
    pt = tmp_path / "state.pt"
    torch.save({"w": torch.zeros(2)}, pt)
    r = pbkit(
        "prune",
        "--model",
        pt,
        "--trust",
        "--method",
        "l1",
        "--speedup",
        "2",
        "--imgsz",
        "8",
        "--out",
        tmp_path / "runs",
    )
    assert r.code == 2 and "not a torch.nn.Module" in r.err and r.err.count("\n") == 1
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint")
    r = pbkit(
        "prune",
        "--model",
        text,
        "--trust",
        "--method",
        "l1",
        "--speedup",
        "2",
        "--imgsz",
        "8",
        "--out",
        tmp_path / "runs",
    )
    assert r.code == 2 and "corrupt or not a PyTorch file" in r.err


def test_a_study_takes_a_model_file_as_a_grid_value(net_file: Path, tmp_path: Path) -> None:
    from pbkit.study import spec

    study = tmp_path / "own.study.yaml"
    study.write_text(
        "name: own\nconfig:\n  model: {input_size: 16}\n  bench: {quick: true}\n"
        f"grid:\n  model.name: ['{net_file}:build', resnet20_cifar]\n  prune.method: [l1]\n"
    )
    trials = spec.read(study).trials
    assert [t.cfg.model.name for t in trials] == [f"{net_file}:build", "resnet20_cifar"]
    assert trials[0].run_id.startswith("net-build-l1-") and trials[0].skip is None


@pytest.mark.slow
def test_a_yolo_trained_on_its_own_classes_prunes_from_its_best_pt(
    tmp_path: Path, pbkit: Any
) -> None:
    from pbkit.models.ultralytics_env import ultralytics_offline
    from tests.detection_data import make

    data = make(tmp_path / "shapes", size=64, names={0: "box", 1: "disc", 2: "triangle"})
    with ultralytics_offline():
        from ultralytics import YOLO

        YOLO("yolov8n.yaml").train(
            data=str(data),
            epochs=1,
            imgsz=64,
            batch=8,
            workers=0,
            device="cpu",
            amp=False,
            plots=False,
            val=True,
            project=str(tmp_path / "yolo"),
            name="train",
            verbose=False,
        )
    best = tmp_path / "yolo" / "train" / "weights" / "best.pt"
    assert best.is_file()
    untrusted = pbkit("prune", "--model", best, "--method", "l1", "--speedup", "2")
    assert untrusted.code == 2 and "--trust" in untrusted.err
    r = pbkit(
        "prune",
        "--model",
        best,
        "--trust",
        "--dataset",
        data,
        "--method",
        "l1",
        "--speedup",
        "2",
        "--set",
        "prune.iterative_steps=50",
        "--set",
        "finetune.epochs=1",
        "--set",
        "finetune.batch_size=8",
        "--set",
        "dataset.eval_batch_size=8",
        "--out",
        tmp_path / "runs",
        "--json",
        *QUICK,
    )
    assert r.code == 0, r.err
    rec = r.json()["record"]
    assert rec["model"]["num_classes"] == 3 and rec["model"]["input_size"] == 64
    assert rec["model"]["origin"]["kind"] == "ultralytics-checkpoint"
    assert rec["model"]["weights"] == "checkpoint" and rec["method"]["achieved_speedup"] >= 2.0
    a = rec["accuracy"]
    assert a["metric"] == "mAP50-95" and all(
        a[k] is not None for k in ("base", "pruned", "finetuned")
    )
    run_dir = r.json()["run_dir"]
    e = pbkit("export", run_dir, "--json")  # parity of the raw head outputs; no pickle to trust
    assert e.code == 0, e.err
    assert all(p["passed"] for p in e.json()["record"]["parity"])
    y = _in_fresh_process(Path(run_dir), trust=False, tmp=tmp_path, size=64)
    assert y["shape"][1] == 4 + 3  # (boxes, classes) per anchor


def test_data_given_as_objects_finetunes_and_names_the_run(net_file: Path, tmp_path: Path) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from pbkit import api

    g = torch.Generator().manual_seed(0)
    protos = torch.randn(4, 3, SIZE, SIZE, generator=g)

    def split(n: int) -> TensorDataset:
        y = torch.randint(0, 4, (n,), generator=g)
        return TensorDataset(protos[y] + 0.5 * torch.randn(n, 3, SIZE, SIZE, generator=g), y)

    train, test = split(64), split(32)
    model = _import(net_file, "users_net_data").build(num_classes=4)
    run = api.prune(
        model,
        example_inputs=torch.randn(1, 3, SIZE, SIZE),
        method="l1",
        speedup=1.5,
        data=(DataLoader(train, batch_size=16), test),
        finetune={"epochs": 1, "lr": 0.01},
        set={"prune.iterative_steps": 40},
        out=tmp_path,
        quiet=True,
    )
    rec = run.record
    assert rec.dataset is not None and rec.dataset.name.startswith("memory:")
    assert rec.dataset.num_classes == 4 and rec.dataset.train_size == 64
    assert rec.accuracy.metric == "top1" and rec.accuracy.finetuned is not None
    assert "finetune" in rec.stages and (rec.finetune or {}).get("epochs") == 1
    # the same samples name the same run; other samples another
    other = split(32)
    with pytest.raises(PbkitError, match="image 0 is"):
        api.prune(
            model,
            example_inputs=torch.randn(1, 3, SIZE, SIZE),
            method="l1",
            speedup=1.5,
            data=TensorDataset(torch.zeros(4, 3, 8, 16), torch.zeros(4)),
            out=tmp_path,
        )
    b = api.prune(
        model,
        example_inputs=torch.randn(1, 3, SIZE, SIZE),
        method="l1",
        speedup=1.5,
        data=(train, other),
        finetune={"epochs": 1, "lr": 0.01},
        set={"prune.iterative_steps": 40},
        out=tmp_path,
        quiet=True,
    )
    assert b.run_dir != run.run_dir
