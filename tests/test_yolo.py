"""YOLOv8 end to end: prunable C2f, Detect never pruned, export with raw-head parity, reload,
finetune + mAP with the ultralytics trainer on a generated dataset, offline, clear errors."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from pbkit import models, stages
from pbkit.core import config, record
from pbkit.core.errors import PbkitError
from pbkit.data.detection import check_dataset
from pbkit.models import counts, yolo
from pbkit.models.outputs import output_tensors
from pbkit.models.ultralytics_env import ultralytics_offline
from pbkit.pruning import methods
from pbkit.tasks import detect
from tests.conftest import once, output_in_fresh_process, prune_model

SIZE = 256  # a smaller square than 640 keeps the tests short; the code path is the same


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to resolve or reach a host fails the test loudly."""

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError(f"network access attempted: {a[:2]}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_yolo_models_are_listed_and_sizes_checked() -> None:
    for s in "nsmlx":
        spec = models.resolve(f"yolov8{s}")
        assert (spec.family, spec.input_size, spec.num_classes) == ("yolo", 640, 80)
    with pytest.raises(PbkitError, match="unknown YOLOv8 model 'yolov8q'; choose one of: yolov8n"):
        models.resolve("yolov8q")


def test_c2f_replacement_keeps_the_outputs_exactly() -> None:
    from ultralytics.nn.modules.block import C2f

    torch.manual_seed(0)
    dense = yolo.build("yolov8n").eval()
    with torch.no_grad():  # a non-trivial state: BN statistics away from their init values
        for m in dense.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        ref = output_tensors(dense(x))
    n_c2f = sum(type(m) is C2f for m in dense.modules())
    split = yolo.make_prunable(dense)
    assert n_c2f == 8 and not any(type(m) is C2f for m in split.modules())
    assert sum(isinstance(m, yolo.C2fSplit) for m in split.modules()) == n_c2f
    with torch.no_grad():
        out = output_tensors(split(x))
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(ref, out, strict=True))


@pytest.mark.parametrize("scope", ["local", "global", "protected"])
def test_prune_2x_in_each_scope_keeps_detect(scope: str) -> None:
    spec = models.resolve("yolov8n", input_size=SIZE)
    model = models.build(spec).eval()
    head = model.model[-1]
    head_state = {
        k: v.clone() for k, v in head.state_dict().items() if "cv2.0.2" in k or "cv3.0.2" in k
    }
    res = prune_model(model, spec, "l1", scope=scope, iterative_steps=50)
    assert res.achieved_speedup >= 2.0 and res.ignored_layers == ["model.22"]
    assert model.model[-1] is head
    for k, v in head_state.items():  # the final head convolutions are untouched
        assert torch.equal(head.state_dict()[k], v)
    with torch.no_grad():
        raw = yolo.raw_outputs(model(torch.randn(1, 3, SIZE, SIZE)))
    assert raw[1].shape[1] == 80  # class logits


def test_obdc_is_refused_for_yolo_as_in_the_study() -> None:
    with pytest.raises(PbkitError, match="does not apply to yolo"):
        methods.get("obdc", "yolo")


@pytest.fixture(scope="module")
def yolo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    def build(folder: Path) -> str:
        cfg = config.load(
            None,
            [
                f"out={folder / 'runs'}",
                "model.name=yolov8n",
                f"model.input_size={SIZE}",
                "prune.method=l2",
                "prune.iterative_steps=50",
                "bench.quick=true",
                "bench.backends=[ort-cpu]",
            ],
        )
        return str(stages.run(cfg, quiet=True).run_dir)

    return Path(once(tmp_path_factory, "yolo_run", build))


def test_export_records_raw_head_parity(yolo_run: Path) -> None:
    rec = record.read(yolo_run)
    assert rec.method.achieved_speedup >= 2.0 and rec.model.family == "yolo"
    assert {p.variant for p in rec.parity} == {"dense", "pruned"}
    assert all(p.passed and p.outputs == yolo.RAW_HEAD_LABEL for p in rec.parity)  # type: ignore[attr-defined]
    assert rec.latency and all(p.backend == "ort-cpu" for p in rec.latency)
    assert rec.artifacts["onnx"]["pruned"]["dynamic_batch"]


def test_pruned_detector_reloads_in_a_fresh_process(yolo_run: Path, tmp_path: Path) -> None:
    from pbkit.models import checkpoint

    model, spec, _ = checkpoint.load_model(yolo_run / "pruned.pt")
    x = counts.example_input(SIZE, batch=1)
    got = output_in_fresh_process(
        yolo_run / "pruned.pt",
        x,
        tmp_path,
        "yolo.raw_outputs(m(x))[1]",
        "from pbkit.models import yolo",
    )
    with torch.no_grad():
        expected = yolo.raw_outputs(model(x))[1]
    assert torch.allclose(got, expected, atol=1e-5)
    # the reloaded model keeps the pruned widths (a yaml rebuild would restore the dense ones)
    dense, _, _ = checkpoint.load_model(yolo_run / "dense.pt")
    assert counts.count_params(model) < 0.8 * counts.count_params(dense)


@pytest.mark.slow
def test_finetune_and_val_on_a_generated_dataset_offline(tmp_path: Path, no_network: None) -> None:
    from tests.detection_data import make

    data_yaml = make(tmp_path / "shapes")
    cfg = config.load(
        None,
        [
            f"out={tmp_path / 'runs'}",
            "model.name=yolov8n",
            "model.input_size=128",
            f"dataset.name={data_yaml}",
            "dataset.eval_batch_size=8",
            "prune.method=l1",
            "prune.iterative_steps=50",
            "finetune.epochs=1",
            "finetune.batch_size=8",
            "finetune.lr=0.01",
        ],
    )
    rec = stages.run(cfg, until="finetune", quiet=True).record
    a = rec.accuracy
    assert a.metric == "mAP50-95" and rec.dataset is not None and rec.dataset.num_classes == 2
    for v in (a.base, a.pruned, a.finetuned):
        assert v is not None and 0.0 <= v <= 100.0
    ft = rec.finetune or {}
    assert ft["trainer"].startswith("ultralytics") and len(ft["history"]) == 1
    assert rec.method.achieved_speedup >= 2.0


def test_missing_dataset_yaml_is_a_clear_error(tmp_path: Path) -> None:
    cfg = config.load(
        None, [f"out={tmp_path}", "model.name=yolov8n", f"dataset.name={tmp_path / 'nope.yaml'}"]
    )
    with pytest.raises(PbkitError, match="nope.yaml' not found"):
        stages.run(cfg, until="finetune", quiet=True)


def test_dataset_without_images_is_refused_before_any_download(tmp_path: Path) -> None:
    y = tmp_path / "d.yaml"
    y.write_text(
        f"path: {tmp_path}\ntrain: images/train\nval: images/val\nnames: {{0: a}}\n"
        "download: https://example.invalid/d.zip\n"
    )
    with pytest.raises(PbkitError, match="pbkit never downloads"):
        check_dataset(y)


def test_network_only_weights_offline_are_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.chdir(tmp_path)  # no yolov8n.pt lying around
    cfg = config.load(
        None, [f"out={tmp_path / 'runs'}", "model.name=yolov8n", "model.weights=pretrained"]
    )
    with pytest.raises(PbkitError, match="yolov8n.pt need the network"):
        stages.run(cfg, until="finetune", quiet=True)


def test_ultralytics_runs_offline_without_installs_and_leaves_nothing_behind() -> None:
    import os

    import ultralytics.utils as u
    import ultralytics.utils.checks as checks
    import ultralytics.utils.events as events

    before = {k: os.environ.get(k) for k in ("YOLO_OFFLINE", "YOLO_AUTOINSTALL")}
    font = checks.check_font
    with ultralytics_offline():
        assert os.environ["YOLO_OFFLINE"] == "1" and os.environ["YOLO_AUTOINSTALL"] == "false"
        assert u.AUTOINSTALL is False and u.ONLINE is False
        assert checks.AUTOINSTALL is False and checks.ONLINE is False and events.ONLINE is False
        assert checks.check_font is not font  # the local look-up, never a download
    assert {k: os.environ.get(k) for k in before} == before and checks.check_font is font


@pytest.mark.slow
@pytest.mark.parametrize("key", ["l1", "l2", "lamp", "fpgm", "random", "bnscale"])
def test_every_data_free_method_reaches_2x_on_yolov8n(key: str) -> None:
    spec = models.resolve("yolov8n", input_size=SIZE)
    model = models.build(spec).eval()
    if key == "bnscale":  # a random init has every gamma at 1.0: spread them as training would
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.uniform_(0.2, 1.0)
    res = prune_model(model, spec, key, iterative_steps=50)
    assert res.achieved_speedup >= 2.0


@pytest.fixture(scope="module")
def shapes_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.detection_data import make

    return make(tmp_path_factory.mktemp("shapes"))


def test_detection_loss_gives_gradients_on_calibration_batches(shapes_yaml: Path) -> None:
    batches = detect.calibration_batches(str(shapes_yaml), 128, batches=2, batch_size=4, seed=0)
    again = detect.calibration_batches(str(shapes_yaml), 128, batches=2, batch_size=4, seed=0)
    assert len(batches) == 2 and torch.equal(batches[0][0], again[0][0])  # pinned
    model = models.build(models.resolve("yolov8n", input_size=128, num_classes=2)).eval()
    loss = detect.detection_loss(model, batches[0][1])
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert (
        model.model[0].conv.weight.grad is not None
        and model.model[0].conv.weight.grad.abs().sum() > 0
    )
    one = detect.sample(batches[0][1], 1)
    assert one["img"].shape[0] == 1 and bool((one["batch_idx"] == 0).all())


def test_sparse_training_calls_the_regularizer_inside_the_ultralytics_trainer(
    shapes_yaml: Path, tmp_path: Path
) -> None:
    model = models.build(models.resolve("yolov8n", input_size=128, num_classes=2))
    calls = {"reg": 0, "epoch": 0}
    recipe = {
        "epochs": 1,
        "optimizer": "sgd",
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "schedule": "constant",
        "batch_size": 8,
        "seed": 0,
    }
    from pbkit.train.recipe import Recipe, TrainRequest

    request = TrainRequest(
        Recipe.from_dict(recipe),
        regularize=lambda: calls.__setitem__("reg", calls["reg"] + 1),
        after_epoch=lambda: calls.__setitem__("epoch", calls["epoch"] + 1),
    )
    detect.finetune(model, str(shapes_yaml), 128, request, tmp_path)
    # once per optimizer step (ultralytics accumulates gradients up to a nominal batch of 64: 16
    # images give one step), and once per epoch
    assert calls == {"reg": 1, "epoch": 1}


@pytest.mark.slow
@pytest.mark.parametrize(
    "key",
    [
        "taylor",
        "hessian",
        "thinet",
        "cp",
        "hrank",
        "slim",
        "group_slim",
        "l2_lasso",
        "group_norm",
        "growing_reg",
    ],
)
def test_every_data_driven_and_sparsifying_method_reaches_2x_on_yolov8n(
    key: str, shapes_yaml: Path, tmp_path: Path
) -> None:
    cfg = config.load(
        None,
        [
            f"out={tmp_path}",
            "model.name=yolov8n",
            "model.input_size=128",
            "model.num_classes=2",
            f"prune.method={key}",
            f"prune.calibration.dataset={shapes_yaml}",
            "prune.calibration.batches=1",
            "prune.calibration.batch_size=4",
            "prune.iterative_steps=30",
            "sparsify.epochs=1",
            "sparsify.batch_size=8",
        ],
    )
    rec = stages.run(cfg, until="finetune", quiet=True).record
    assert rec.method.achieved_speedup >= 2.0
    if methods.get(key).stage == "sparsify":
        assert (
            rec.method.reg_time_s
            and rec.method.sparsify
            and rec.method.sparsify["weight_decay"] == 0.0
        )
    else:
        assert rec.method.calibration and rec.method.calibration["dataset"] == "data"


def test_gradient_criteria_on_yolo_refuse_classification_calibration(tmp_path: Path) -> None:
    cfg = config.load(
        None,
        [
            f"out={tmp_path}",
            "model.name=yolov8n",
            "model.input_size=128",
            "prune.method=taylor",
            "prune.calibration.dataset=synthetic",
            "prune.calibration.batches=1",
            "prune.calibration.batch_size=2",
        ],
    )
    with pytest.raises(PbkitError, match="needs the detection loss"):
        stages.run(cfg, until="finetune", quiet=True)


def test_ultralytics_pt_checkpoint_loads_only_when_trusted(tmp_path: Path) -> None:
    from pbkit.models import checkpoint

    torch.manual_seed(3)
    original = yolo.build("yolov8n").eval()  # the layout ultralytics saves: plain C2f
    pt = tmp_path / "yolov8n.pt"
    torch.save({"model": copy_half(original), "ema": None, "epoch": -1}, pt)
    spec = models.resolve("yolov8n", input_size=SIZE)
    with pytest.raises(PbkitError, match="trust_checkpoint"):
        checkpoint.load_base(spec, pt)
    loaded = checkpoint.load_base(spec, pt, trust=True).eval()
    assert any(isinstance(m, yolo.C2fSplit) for m in loaded.modules())
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        a, b = yolo.raw_outputs(original.half().float()(x)), yolo.raw_outputs(loaded(x))
    assert all(torch.allclose(p, q, atol=1e-3) for p, q in zip(a, b, strict=True))


def copy_half(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).half()
