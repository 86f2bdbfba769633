"""Detection accuracy on the engine: mAP50-95 through an exported ONNX model's ONNX Runtime runner
(ultralytics' validator scoring the engine's outputs) equals PyTorch's at fp32 on the same images;
-seg models through the same path, with the mask mAP too. The models are trained for a few hundred
steps on generated shapes first, so the mAP is far from zero and a wrong engine would show."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from pbkit import tasks
from pbkit.data import DataBundle
from pbkit.data.detection import detection
from pbkit.export.onnx import to_onnx
from pbkit.measure import backends
from pbkit.measure.runner import Runner, RunSpec
from pbkit.models import ModelSpec, counts, yolo
from pbkit.models.ultralytics_env import ultralytics_offline
from pbkit.tasks import detect
from tests.detection_data import make

SIZE = 128
FP32_TOLERANCE = 0.5  # mAP50-95 points: the engine's fp32 outputs differ from PyTorch's by ~1e-5


def _trained(name: str, yaml_path: Path, task: str, steps: int = 200) -> torch.nn.Module:
    """``name`` from its yaml (random weights), trained with its own loss on the train split."""
    torch.manual_seed(0)
    with ultralytics_offline():
        model = yolo.make_prunable(yolo.build(name))
        batches = detect.calibration_batches(str(yaml_path), SIZE, 4, 4, seed=0, task=task)
    yolo.select_end2end(model)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for i in range(steps):
        loss = detect.detection_loss(model, batches[i % len(batches)][1])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _ort_runner(model: torch.nn.Module, tmp_path: Path) -> Runner:
    path = tmp_path / "model.onnx"
    to_onnx(model, SIZE, path)
    x = counts.example_input(SIZE, batch=1, seed=2)
    return backends.get("ort-cpu").make(RunSpec(path=path, x=x, threads=2))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "task"), [("yolov8n", "detect"), ("yolo26n", "detect"), ("yolov8n-seg", "segment")]
)
def test_map_on_the_engine_equals_pytorch_at_fp32(name: str, task: str, tmp_path: Path) -> None:
    yaml_path = make(tmp_path / "shapes", task=task)
    model = _trained(name, yaml_path, task)
    bundle = detection(str(yaml_path))
    spec = ModelSpec(name, 80, SIZE, "yolo", "test", task="detect")
    runner = _ort_runner(model, tmp_path)
    try:
        s = tasks.get("detect").engine_score(runner.predict, model, bundle, spec, 4)
        assert s.metric == "mAP50-95" and s.images == 8 and s.agreement is None
        assert s.torch_value > 20.0  # trained: a wrong engine would not land on PyTorch's mAP
        assert abs(s.value - s.torch_value) <= FP32_TOLERANCE, (s.value, s.torch_value)
        if not yolo.is_end2end(model):  # PyTorch's is the validator's mAP of the model itself
            with ultralytics_offline():
                own = detect.task_maps(model, str(yaml_path), SIZE, 4)["mAP50-95"]
            assert abs(s.torch_value - own) < 1e-6
        # the engine's outputs are what is scored: mirrored images give other boxes
        with ultralytics_offline():
            mirrored, ref, _ = detect.engine_maps(
                lambda x: runner.predict(np.ascontiguousarray(x[..., ::-1])),
                model,
                str(yaml_path),
                SIZE,
                4,
            )
        assert ref["mAP50-95"] == s.torch_value
        assert mirrored["mAP50-95"] < s.torch_value - 5.0
        if task == "segment":  # the masks are scored from the engine's prototypes too
            with ultralytics_offline():
                got, ref, _ = detect.engine_maps(runner.predict, model, str(yaml_path), SIZE, 4)
            assert ref["mask mAP50-95"] > 10.0
            assert abs(got["mask mAP50-95"] - ref["mask mAP50-95"]) <= FP32_TOLERANCE
    finally:
        runner.close()


def test_an_engine_with_other_outputs_or_another_input_size_is_refused(tmp_path: Path) -> None:
    yaml_path = make(tmp_path / "shapes", n_train=2, n_val=2)
    with ultralytics_offline():
        model = yolo.build("yolov8n").eval()
    bundle = detection(str(yaml_path))
    spec = ModelSpec("yolov8n", 80, SIZE, "yolo", "test", task="detect")
    task = tasks.get("detect")

    def one_output(x: np.ndarray) -> list[np.ndarray]:
        return [np.zeros((len(x), 84, 336), dtype=np.float32)]

    with pytest.raises(detect.PbkitError, match="gives 1 outputs, the model 6"):
        task.engine_score(one_output, model, bundle, spec, 2)
    fed: list[tuple[int, ...]] = []
    record_shape: Callable[[np.ndarray], list[np.ndarray]] = lambda x: fed.append(x.shape) or []  # noqa: E731
    with pytest.raises(detect.PbkitError, match="gives 0 outputs"):
        task.engine_score(record_shape, model, bundle, spec, 2)
    assert fed == [(2, 3, SIZE, SIZE)]  # square letterboxed images at the run's size, batched


def test_a_classification_dataset_is_refused() -> None:
    with ultralytics_offline():
        model = yolo.build("yolov8n").eval()
    spec = ModelSpec("yolov8n", 80, SIZE, "yolo", "test", task="detect")
    digits = DataBundle("digits", 10, 8, None, None)  # a classification dataset
    with pytest.raises(detect.PbkitError, match="needs a detection dataset"):
        tasks.get("detect").engine_score(lambda x: [], model, digits, spec, 2)
