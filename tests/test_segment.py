"""Semantic segmentation as a third task: mIoU, the generated shapes-seg data, the real-dataset
layouts (VOC, ADE20K, Cityscapes) on files the tests write, segmentation models pruned with their
head untouched, reloaded in a fresh process, exported with parity, finetuned with per-pixel KD."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pbkit import stages
from pbkit.core import config, record
from pbkit.core.errors import PbkitError
from pbkit.data import datasets
from pbkit.models import checkpoint, counts, segment, sources
from pbkit.pruning import methods
from pbkit.tasks import get as get_task
from pbkit.tasks.segment import confusion, kd_loss_dense, miou
from tests.conftest import REPO, once, output_in_fresh_process, prune_model

SIZE = 64


def test_miou_and_pixel_accuracy_exactly_on_hand_made_predictions() -> None:
    target = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0], [2, 0, 2, 1]])
    conf = confusion(pred, target, 3)
    assert conf.tolist() == [[3, 1, 0], [1, 3, 0], [1, 0, 1]]  # the two ignored pixels left out
    m, acc = miou(conf)
    # IoU: class 0 3/(5+4-3) = 1/2, class 1 3/(4+4-3) = 3/5, class 2 1/(1+2-1) = 1/2
    assert m == pytest.approx(100 * (0.5 + 0.6 + 0.5) / 3) and acc == pytest.approx(100 * 7 / 10)
    # a class absent from labels and predictions does not count
    assert miou(confusion(pred, target, 4))[0] == pytest.approx(m)


def test_shapes_seg_is_deterministic_by_seed() -> None:
    a, b, c = (
        datasets.load("shapes-seg"),
        datasets.load("shapes-seg"),
        datasets.load("shapes-seg", seed=1),
    )
    assert a.task == "segment" and a.num_classes == 4 and a.image_size == SIZE
    x, y = a.train.tensors  # type: ignore[union-attr]
    assert (
        x.shape == (384, 3, SIZE, SIZE) and y.shape == (384, SIZE, SIZE) and y.dtype == torch.long
    )
    assert torch.equal(x, b.train.tensors[0]) and torch.equal(y, b.train.tensors[1])  # type: ignore[union-attr]
    assert not torch.equal(y, c.train.tensors[1])  # type: ignore[union-attr]
    assert set(y.unique().tolist()) == {0, 1, 2, 3}
    assert not torch.equal(a.test.tensors[1][:8], y[:8])  # type: ignore[union-attr]  # test images differ


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _image(h: int = 40, w: int = 60) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_voc_ade20k_and_cityscapes_load_from_their_layouts(tmp_path: Path) -> None:
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    labels = np.zeros((40, 60), np.uint8)
    labels[10:20, 10:30], labels[0, :] = 15, 255
    for i in ("a", "b"):
        _png(voc / "JPEGImages" / f"{i}.jpg", _image())
        _png(voc / "SegmentationClass" / f"{i}.png", labels)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nb\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("b\n")
    b = datasets.load("voc", root=str(tmp_path), image_size=32)
    x, y = b.train[0]
    assert (b.num_classes, len(b.train), len(b.test), b.task) == (21, 2, 1, "segment")
    assert (
        x.shape == (3, 32, 32) and y.shape == (32, 32) and set(y.unique().tolist()) <= {0, 15, 255}
    )
    assert 15 in b.test[0][1].unique().tolist()

    ade = tmp_path / "ADEChallengeData2016"
    ade_labels = np.zeros((40, 60), np.uint8)
    ade_labels[:, 30:] = 7
    for split in ("training", "validation"):
        _png(ade / "images" / split / "x.jpg", _image())
        _png(ade / "annotations" / split / "x.png", ade_labels)
    y = datasets.load("ade20k", root=str(tmp_path), image_size=32).test[0][1]
    assert set(y.unique().tolist()) == {255, 6}  # 0 ("other") ignored, 7 -> class 6

    city_labels = np.full((40, 60), 7, np.uint8)  # road: train id 0
    city_labels[:, :20] = 26  # car: train id 13
    city_labels[:5] = 3  # out of roi: ignored
    for split in ("train", "val"):
        _png(tmp_path / "leftImg8bit" / split / "bonn" / "bonn_0_0_leftImg8bit.png", _image())
        _png(tmp_path / "gtFine" / split / "bonn" / "bonn_0_0_gtFine_labelIds.png", city_labels)
    y = datasets.load("cityscapes", root=str(tmp_path), image_size=32).test[0][1]
    assert set(y.unique().tolist()) == {0, 13, 255}


@pytest.mark.parametrize(
    "name, needle",
    [
        ("voc", "VOCdevkit/VOC2012/ with JPEGImages/"),
        ("ade20k", "ADEChallengeData2016/images/{training,validation}"),
        ("cityscapes", "leftImg8bit/{train,val}/<city>/"),
    ],
)
def test_missing_segmentation_data_is_one_line_naming_the_layout(
    tmp_path: Path, name: str, needle: str
) -> None:
    with pytest.raises(PbkitError, match=name) as e:
        datasets.load(name, root=str(tmp_path))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_segmentation_models_are_listed_and_resolved() -> None:
    spec = sources.resolve("tv:lraspp_mobilenet_v3_large")
    assert (spec.task, spec.num_classes, spec.input_size) == ("segment", 21, 520)
    assert sources.resolve("tv:resnet18").task == "classify"
    vit = sources.resolve("timmseg:vit_tiny_patch16_224", num_classes=4, input_size=SIZE)
    assert (vit.task, vit.family) == ("segment", "vit")
    with pytest.raises(PbkitError, match="timmseg: takes a timm ViT"):
        sources.resolve("timmseg:resnet18")
    assert "tv:deeplabv3_mobilenet_v3_large"[3:] in segment.torchvision_names()


@pytest.mark.parametrize(
    "scope",
    [
        pytest.param("local", marks=pytest.mark.slow),
        pytest.param("global", marks=pytest.mark.slow),
        "protected",
    ],
)
def test_a_segmentation_model_prunes_2x_in_each_scope_with_its_head_untouched(scope: str) -> None:
    spec = sources.resolve("tv:lraspp_mobilenet_v3_large", num_classes=4, input_size=SIZE)
    model = sources.build(spec).eval()
    heads = get_task("segment").protected(model, spec)
    assert [type(h).__name__ for h in heads] == ["Conv2d", "Conv2d"]  # low and high classifiers
    before = [h.bias.detach().clone() for h in heads]
    res = prune_model(model, spec, "l2", scope=scope, iterative_steps=40)
    assert res.achieved_speedup >= 2.0
    for h, bias in zip(
        heads, before, strict=True
    ):  # every class kept (its inputs may narrow, as a classifier's)
        assert h.out_channels == 4 and torch.equal(h.bias, bias)
    with torch.no_grad():
        assert model(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 4, SIZE, SIZE)


@pytest.mark.slow
def test_the_vit_backbone_with_a_head_prunes_too() -> None:
    spec = sources.resolve("timmseg:vit_tiny_patch16_224", num_classes=4, input_size=SIZE)
    model = sources.build(spec).eval()
    head = model.head[-1]
    res = prune_model(model, spec, "l2", iterative_steps=20, speedup=1.5)
    assert res.achieved_speedup >= 1.5 and model.head[-1] is head and head.out_channels == 4
    with torch.no_grad():
        assert model(torch.randn(1, 3, SIZE, SIZE)).shape == (1, 4, SIZE, SIZE)


def test_kd_for_dense_outputs() -> None:
    student = torch.randn(2, 4, 8, 8, requires_grad=True)
    teacher = torch.randn(2, 4, 8, 8)
    assert float(kd_loss_dense(teacher.clone(), teacher, 2.0)) == pytest.approx(0.0, abs=1e-6)
    loss = kd_loss_dense(student, teacher, 2.0)
    loss.backward()
    assert float(loss) > 0 and student.grad is not None and float(student.grad.abs().sum()) > 0
    # a per-pixel mean: the same images at twice the resolution give the same loss
    up = torch.nn.functional.interpolate
    assert float(
        kd_loss_dense(up(student.detach(), scale_factor=2), up(teacher, scale_factor=2), 2.0)
    ) == pytest.approx(float(loss), rel=0.05)


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make bench MODEL=seg`'s configuration (lraspp on shapes-seg: a base trained here, pruned 2x,
    finetuned with per-pixel KD, exported), with a quick measurement on ONNX Runtime."""

    def build(folder: Path) -> str:
        cfg = config.load(
            REPO / "configs/bench/seg.yaml",
            [f"out={folder / 'runs'}", "bench.quick=true", "bench.backends=[ort-cpu]"],
        )
        return str(stages.run(cfg, quiet=True).run_dir)

    return Path(once(tmp_path_factory, "seg_run", build))


@pytest.mark.slow
def test_a_segmentation_run_records_miou_kd_parity_and_speed(seg_run: Path) -> None:
    rec = record.read(seg_run)
    a = rec.accuracy
    assert (
        rec.model.task == "segment"
        and a.metric == "mIoU"
        and rec.dataset
        and rec.dataset.task == "segment"
    )
    assert a.base is not None and a.pruned is not None and a.finetuned is not None
    assert a.base > 70  # the base learned the shapes
    assert (
        a.finetuned > a.pruned + 30 and a.finetuned > a.base - 5
    )  # finetuning recovers what pruning lost
    assert set(a.others["pixel_acc"]) == {"base", "pruned", "finetuned"}
    assert (
        rec.finetune
        and rec.finetune["kd"]["enabled"]
        and rec.finetune["history"][-1]["mIoU"] == pytest.approx(a.finetuned)
    )
    assert rec.model.notes["bn_momentum"] == [0.1]
    assert rec.parity and all(p.passed for p in rec.parity)
    assert any(p.variant == "pruned" and p.speedup_vs_dense for p in rec.latency)
    assert rec.counts.input_size == SIZE and rec.method.achieved_speedup >= 2.0


@pytest.mark.slow
def test_a_pruned_segmentation_model_reloads_in_a_fresh_process(
    seg_run: Path, tmp_path: Path
) -> None:
    model, _, _ = checkpoint.load_model(seg_run / "pruned.pt")
    x = counts.example_input(SIZE, batch=1)
    got = output_in_fresh_process(seg_run / "finetuned.pt", x, tmp_path, "m.eval()(x)")
    finetuned, _, _ = checkpoint.load_model(seg_run / "finetuned.pt")
    with torch.no_grad():
        assert torch.allclose(got, finetuned.eval()(x), atol=1e-5)
    dense, _, _ = checkpoint.load_model(seg_run / "dense.pt")
    assert counts.count_params(model) < 0.8 * counts.count_params(dense)


@pytest.mark.slow
def test_the_leaderboard_reports_miou(seg_run: Path, pbkit) -> None:  # type: ignore[no-untyped-def]
    r = pbkit("report", seg_run.parent, "--format", "json")
    assert r.code == 0, r.err
    row = json.loads(r.out)[0]["rows"][0]
    assert row["metric"] == "mIoU" and row["model"] == "tv:lraspp_mobilenet_v3_large"


@pytest.mark.slow
@pytest.mark.parametrize(
    "key", sorted(k for k, m in methods.METHODS.items() if "cnn" in m.families)
)
def test_every_method_prunes_a_segmentation_model(tmp_path: Path, key: str) -> None:
    """Data-driven criteria and regularizers use the segmentation loss on shapes-seg batches."""
    sets = [
        f"out={tmp_path / 'runs'}",
        "model.name=tv:lraspp_mobilenet_v3_large",
        "dataset.name=shapes-seg",
        "dataset.image_size=32",
        "dataset.train_limit=64",
        "dataset.test_limit=16",
        f"prune.method={key}",
        "prune.iterative_steps=10",
        "prune.calibration.batches=1",
        "prune.calibration.batch_size=8",
        "sparsify.epochs=1",
        "sparsify.batch_size=32",
        "finetune.epochs=0",
    ]
    if key == "bnscale":  # a random init has every BatchNorm gamma at 1: train briefly first
        sets += ["base.epochs=1", "base.batch_size=32"]
    if (
        key == "obdc"
    ):  # torch-pruning's EigenDamage unfolds plain convolutions only: MobileNetV3 is depthwise
        with pytest.raises(
            PbkitError, match="obdc .* handles ungrouped, undilated convolutions only; .* groups="
        ):
            stages.run(config.load(None, sets), until="prune", quiet=True)
        return
    rec = stages.run(config.load(None, sets), until="prune", quiet=True).record
    m = rec.method
    assert (
        m.achieved_speedup >= 2.0
        and rec.accuracy.metric == "mIoU"
        and rec.accuracy.pruned is not None
    )
    if methods.get(key).collect is not None:
        assert m.calibration is not None and m.calibration["dataset"] == "shapes-seg"
    if methods.get(key).stage == "sparsify":
        assert m.sparsify is not None and m.reg_time_s
