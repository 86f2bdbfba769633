"""YOLOv8, YOLO11 and YOLO26 for detection, instance segmentation and pose: every name resolves
with its metadata, the split blocks keep the outputs, each family and task prunes to 2x in the
protected scope with the head untouched and the attention held (and recorded why), exports to ONNX
with parity of the raw head outputs, reloads in a fresh process; a self-trained checkpoint with
other classes prunes; seg/pose validate and finetune with ultralytics' own validator and trainer;
an unsupported variant is one line."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pbkit import models, tasks
from pbkit.core.errors import PbkitError
from pbkit.models import checkpoint, counts, yolo
from pbkit.models.outputs import output_tensors
from pbkit.models.ultralytics_env import ultralytics_offline
from tests.conftest import output_in_fresh_process, prune_model

SIZE = 64  # small: the code path is the one of 640 (the slow case runs that)
STEPS = 20
NANOS = [f + "n" + v for f in ("yolov8", "yolo11", "yolo26") for v in ("", "-seg", "-pose")]


def test_every_family_size_and_task_resolves_with_metadata() -> None:
    for name, entry in models.registry.YOLO_ENTRIES.items():
        spec = models.resolve(name)
        assert (spec.family, spec.task, spec.input_size, spec.num_classes) == (
            "yolo",
            "detect",
            640,
            80,
        )
        assert entry.task == yolo.parse(name).task and name in models.YOLO_MODELS
    assert len(models.registry.YOLO_ENTRIES) == 45
    assert models.registry.YOLO_ENTRIES["yolo26m-pose"].task == "pose"
    assert "NMS-free" in models.YOLO_MODELS["yolo26n"]


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("yolo11n-obb", "oriented boxes"),
        ("yolo26s-cls", "classification"),
        ("yolo11q", "unknown YOLO11 model 'yolo11q'; choose one of: yolo11n"),
        ("yolo26n-depth", "unknown YOLO26 variant"),
    ],
)
def test_an_unsupported_variant_is_one_clear_line(name: str, match: str) -> None:
    with pytest.raises(PbkitError, match=match) as e:
        models.resolve(name)
    assert "\n" not in str(e.value)


def test_a_yolo_file_name_is_a_checkpoint_not_a_registry_name(tmp_path: Path) -> None:
    with pytest.raises(PbkitError, match="not found"):
        models.resolve(str(tmp_path / "yolo11n.pt"), trust=True)


def _spread_bn(model: torch.nn.Module) -> None:
    """BN statistics and scales away from their init values (a non-trivial state)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)


@pytest.mark.parametrize("name", ["yolo11n-seg", "yolo26n-pose"])
def test_split_blocks_keep_the_outputs_exactly(name: str) -> None:
    from ultralytics.nn.modules.block import C2PSA, C3k2

    torch.manual_seed(0)
    dense = yolo.build(name).eval()
    _spread_bn(dense)
    yolo.select_end2end(dense)  # as make_prunable selects it (YOLO26)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        ref = yolo.raw_outputs(dense(x))
    n = (
        sum(type(m) is C3k2 for m in dense.modules()),
        sum(type(m) is C2PSA for m in dense.modules()),
    )
    split = yolo.make_prunable(dense)
    assert n[0] == 8 and n[1] == 1
    assert sum(type(m) is yolo.C3k2Split for m in split.modules()) == n[0]
    assert sum(type(m) is yolo.C2PSASplit for m in split.modules()) == n[1]
    with torch.no_grad():
        out = yolo.raw_outputs(split(x))
    assert len(out) == len(ref) >= 3
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(ref, out, strict=True))


def test_raw_head_positions_name_each_branch() -> None:
    feats = [(1, 64, 8, 8), (1, 128, 4, 4), (1, 256, 2, 2)]
    v8 = [(1, 84, 84), (1, 64, 84), (1, 80, 84), *feats]
    assert yolo.raw_head_positions(v8) == ([1, 2], yolo.RAW_HEAD_LABEL)
    seg = [(1, 116, 84), (1, 32, 16, 16), (1, 64, 84), (1, 80, 84), *feats, (1, 32, 84)]
    seg.append((1, 32, 16, 16))
    found, label = yolo.raw_head_positions(seg)
    assert found == [2, 3, 7, 8] and "mask coefficients, prototypes" in label
    one = [(1, 4, 84), (1, 80, 84), *feats, (1, 51, 84)]
    found, label = yolo.raw_head_positions([(1, 84, 57), *one, *one])
    assert found == [1, 2, 6, 7, 8, 12] and "keypoints" in label and "one-to-one" in label
    assert yolo.raw_head_positions([(1, 10)]) == ([], "")


def _ort_parity(model: torch.nn.Module, tmp: Path) -> tuple[str, list[float]]:
    """Export to ONNX, run ONNX Runtime, compare the task's parity outputs: (label, max abs)."""
    import onnxruntime as ort

    from pbkit.export import onnx as export_onnx

    task = tasks.get("detect")
    export_onnx.to_onnx(model, SIZE, tmp / "m.onnx", exporter="torchscript")
    x = counts.example_input(SIZE, batch=2, seed=2)
    with torch.no_grad():
        ref = [t.numpy() for t in output_tensors(model(x))]
    sess = ort.InferenceSession(str(tmp / "m.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    a, label = task.parity_outputs(ref)
    b, _ = task.parity_outputs(list(got))
    assert len(a) == len(b) > 0
    errors = []
    for p, q in zip(a, b, strict=True):
        assert p.shape == q.shape
        scale = max(float(np.abs(p).max()), 1.0)
        assert np.allclose(q, p, rtol=1e-4, atol=1e-4 * scale), (label, float(np.abs(p - q).max()))
        errors.append(float(np.abs(p - q).max()))
    return label, errors


def _final_convs(head: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The head's output convolutions' weights (what must stay exactly as they were)."""
    return {
        k: v.clone()
        for k, v in head.state_dict().items()
        if re.search(
            r"(^|one2one_)cv[234]\.\d+\.2\.weight$|cv4_kpts\.|proto\.cv3\.conv\.weight$", k
        )
    }


def _kept_inputs(dense: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """The dense input channels a pruned convolution weight kept (each column found once)."""
    kept = []
    for j in range(pruned.shape[1]):
        found = [i for i in range(dense.shape[1]) if torch.equal(dense[:, i], pruned[:, j])]
        assert len(found) == 1
        kept.append(found[0])
    return kept


@pytest.mark.parametrize("name", NANOS)
def test_each_family_and_task_prunes_2x_protected_and_exports_with_parity(
    name: str, tmp_path: Path
) -> None:
    spec = models.resolve(name, input_size=SIZE)
    model = models.build(spec).eval()
    head = yolo.detect_head(model)[0]
    before = _final_convs(head)
    qkv = {n: m.qkv.conv.out_channels for n, m in model.named_modules() if hasattr(m, "qkv")}
    proj = {n: m.proj.conv.out_channels for n, m in model.named_modules() if hasattr(m, "qkv")}
    proto = getattr(head, "proto", None)
    dense_proto = copy.deepcopy(proto)
    res = prune_model(model, spec, "l1", scope="protected", iterative_steps=STEPS)
    assert res.achieved_speedup >= 2.0 and res.params_pruned < res.params_base
    assert yolo.detect_head(model)[0] is head
    if hasattr(proto, "semseg"):  # YOLO26-seg: P3 narrowed, the training-only branch cut with it
        fuse = _kept_inputs(dense_proto.feat_fuse.conv.weight, proto.feat_fuse.conv.weight)
        assert len(fuse) < dense_proto.feat_fuse.conv.in_channels
        assert _kept_inputs(dense_proto.semseg[0].conv.weight, proto.semseg[0].conv.weight) == fuse
        assert proto.feat_fuse.conv.out_channels == dense_proto.feat_fuse.conv.out_channels
    after = head.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # the head's outputs stay
    family = yolo.parse(name).family
    notes = tasks.get("detect").notes(model, spec)["ultralytics"]
    assert notes["task"] == yolo.parse(name).task and notes["head"]["pruned"] is False
    assert notes["end2end"] is (family == "yolo26")
    if family == "yolov8":
        assert res.held_fixed == [] and notes["held"] == {}
    else:  # the attention of C2PSA (and YOLO26's attention C3k2) held, with the reason
        assert res.held_fixed and set(res.held_fixed) == set(notes["held"])
        assert all("num_heads" in why for why in notes["held"].values())
        for n in res.held_fixed:  # each held attention keeps its widths
            attn = model.get_submodule(n)
            assert attn.qkv.conv.out_channels == qkv[n] and attn.proj.conv.out_channels == proj[n]
    model.train()  # the training forward (branches the trace never saw: semseg, kpts sigma) runs
    model(torch.randn(2, 3, SIZE, SIZE))
    model.eval()
    yolo.select_end2end(model)
    label, _ = _ort_parity(model, tmp_path)
    assert label.startswith(("raw head outputs", "NMS-free top-k scores"))
    if family == "yolo26":
        assert "one-to-one" in label and label.startswith("NMS-free")
    if name.endswith("-seg"):
        assert "prototypes" in label
    if name.endswith("-pose"):
        assert "keypoints" in label


@pytest.mark.parametrize("name", ["yolo26n-pose", "yolo11n-pose"])
def test_a_pruned_model_reloads_in_a_fresh_process(name: str, tmp_path: Path) -> None:
    spec = models.resolve(name, input_size=SIZE)
    model = models.build(spec).eval()
    prune_model(model, spec, "l1", scope="protected", iterative_steps=STEPS)
    checkpoint.save_model(model, spec, tmp_path / "pruned.pt")
    x = counts.example_input(SIZE, batch=1)
    got = output_in_fresh_process(
        tmp_path / "pruned.pt",
        x,
        tmp_path,
        "yolo.raw_outputs(m(x))",
        "from pbkit.models import yolo",
    )
    with torch.no_grad():
        expected = yolo.raw_outputs(model(x))
    assert len(got) == len(expected)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, expected, strict=True))
    reloaded, _, _ = checkpoint.load_model(tmp_path / "pruned.pt")
    assert counts.count_params(reloaded) == counts.count_params(model)
    assert yolo.is_end2end(reloaded) is yolo.is_end2end(model)


def _self_trained(name: str, nc: int, path: Path) -> Path:
    """A checkpoint the way ``yolo train`` saves best.pt: the model (fp16, no gradients) with
    other classes, its train args."""
    torch.manual_seed(5)
    y = yolo.parse(name)
    with ultralytics_offline():
        model = yolo.model_class(y.task)(y.yaml, nc=nc, verbose=False)
    model.names = {i: f"thing{i}" for i in range(nc)}
    half = copy.deepcopy(model).half()
    for p in half.parameters():
        p.requires_grad_(False)
    torch.save(
        {"model": half, "ema": None, "epoch": -1, "train_args": {"imgsz": SIZE, "task": y.task}},
        path,
    )
    return path


@pytest.mark.parametrize("name", ["yolo11n-seg", "yolo26n-pose"])
def test_a_self_trained_checkpoint_with_other_classes_prunes(name: str, tmp_path: Path) -> None:
    pt = _self_trained(name, 3, tmp_path / "best.pt")
    with pytest.raises(PbkitError, match="trust"):
        models.resolve(str(pt))
    spec = models.resolve(str(pt), trust=True)
    assert (spec.num_classes, spec.input_size, spec.task) == (3, SIZE, "detect")
    model = models.build(spec).eval()
    assert yolo.task_of(model) == yolo.parse(name).task
    res = prune_model(model, spec, "l1", scope="protected", iterative_steps=STEPS)
    assert res.achieved_speedup >= 2.0
    with torch.no_grad():
        raw = yolo.raw_outputs(model(torch.randn(1, 3, SIZE, SIZE)))
    assert raw[1].shape[1] == 3  # its own classes' logits


@pytest.mark.parametrize("name", ["yolo26n-seg", "yolo11n-pose"])
def test_seg_and_pose_validate_and_finetune_with_their_own_trainer(
    name: str, tmp_path: Path
) -> None:
    from pbkit.tasks import detect
    from pbkit.train.recipe import Recipe, TrainRequest
    from tests.detection_data import make

    task = yolo.parse(name).task
    data = make(tmp_path / "shapes", n_train=8, n_val=4, task=task)
    model = models.build(models.resolve(name, input_size=SIZE, num_classes=2)).eval()
    with ultralytics_offline():
        batches = detect.calibration_batches(str(data), SIZE, 1, 4, 0, task=task)
        loss = detect.detection_loss(model, batches[0][1])
        one = detect.detection_loss(model, detect.sample(batches[0][1], 0))
        maps = detect.task_maps(model, str(data), SIZE, batch=4)
    assert torch.isfinite(loss) and torch.isfinite(one)
    other = "mask mAP50-95" if task == "segment" else "pose mAP50-95"
    assert set(maps) == {"mAP50-95", other} and all(0.0 <= v <= 100.0 for v in maps.values())
    recipe = Recipe.from_dict(
        {
            "epochs": 1,
            "optimizer": "sgd",
            "lr": 0.01,
            "momentum": 0.9,
            "weight_decay": 0.0,
            "schedule": "constant",
            "batch_size": 4,
            "seed": 0,
        }
    )
    out: dict[str, Any] = detect.finetune(model, str(data), SIZE, TrainRequest(recipe), tmp_path)
    trainer = "SegmentationTrainer" if task == "segment" else "PoseTrainer"
    assert trainer in out["trainer"] and set(out["history"][0]) == {"epoch", "mAP50-95", other}
    assert yolo.is_end2end(model) is name.startswith("yolo26")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["yolo11n", "yolo26n", "yolo11n-seg"])
def test_the_bench_setting_at_640_prunes_exports_and_measures(name: str, tmp_path: Path) -> None:
    from pbkit import stages
    from pbkit.core import config, record

    cfg = config.load(
        None,
        [
            f"out={tmp_path}",
            f"model.name={name}",
            "prune.method=l1",
            "prune.iterative_steps=40",
            "bench.quick=true",
            "bench.backends=[ort-cpu]",
        ],
    )
    rec = record.read(stages.run(cfg, quiet=True).run_dir)
    assert rec.method.achieved_speedup >= 2.0 and rec.counts.input_size == 640
    assert rec.parity and all(p.passed for p in rec.parity)
    assert rec.model.notes["ultralytics"]["task"] == yolo.parse(name).task


def test_the_families_table_merges_a_row_and_keeps_the_others() -> None:
    from benchmarks import yolo_families

    old = {
        "rows": [{"name": "yolo26n", "x": 1}, {"name": "yolov8n", "x": 2}, {"name": "yolo26n-seg"}],
        "machine": {"cpu": "c", "load_before": 6.0, "load_after": 6.5},
    }
    new = {"name": "yolo26n-seg", "x": 3, "load_before": 1.0, "load_after": 1.5}
    got = yolo_families.merge(old, new, {"cpu": "c", "load_before": 1.0, "load_after": 1.5})
    assert [r["name"] for r in got["rows"]] == ["yolov8n", "yolo26n", "yolo26n-seg"]
    assert got["rows"][2] == new and got["machine"]["load_before"] == 1.0
    # an older row keeps the load of the run that made it, not the new run's
    assert (got["rows"][0]["load_before"], got["rows"][0]["load_after"]) == (6.0, 6.5)
    again = yolo_families.merge(got, {"name": "yolov8n-pose"}, {"load_before": 9.0})
    assert len(again["rows"]) == 4 and again["rows"][0]["load_before"] == 6.0
