"""Detection with ultralytics' YOLO (YOLOv8, YOLO11, YOLO26; detect, -seg, -pose): mAP50-95 with
ultralytics' validator for the model's own task (boxes; masks for -seg and keypoints for -pose as
the task's other metrics), training with ultralytics' trainer for that task on the pruned object
itself (never a model rebuilt from its yaml, which would restore the dense widths), calibration
batches with the model's own training loss, the head protected, parity on the raw head outputs.
Every use of ultralytics runs inside :func:`pbkit.models.ultralytics_env.ultralytics_offline`.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pbkit.core import device
from pbkit.core.config import CalibrationCfg, KDCfg
from pbkit.core.errors import PbkitError
from pbkit.data import DataBundle
from pbkit.data.detection import check_dataset
from pbkit.models import ModelSpec, yolo
from pbkit.models.outputs import output_tensors
from pbkit.models.ultralytics_env import ultralytics_offline
from pbkit.pruning import Calibration
from pbkit.tasks.base import EngineScore, Predict, Task
from pbkit.tasks.classify import classification_batches
from pbkit.train.recipe import TrainRequest


class Detect(Task):
    name = "detect"
    title = "detection"
    metric = "mAP50-95"
    history_metric = "mAP50-95"
    trains_by_iterations = False  # the ultralytics trainer trains by epochs

    not_distributed = (
        "detectors train with the ultralytics trainer, which runs across processes by itself (not"
        " through pbkit's torchrun launch); set distributed.nproc_per_node=1 and"
        " distributed.nnodes=1"
    )

    def protected(self, model: nn.Module, spec: ModelSpec) -> list[nn.Module]:
        return yolo.protected_layers(model)

    def evaluate(
        self, model: nn.Module, bundle: DataBundle, spec: ModelSpec, batch_size: int
    ) -> float:
        return self.scores(model, bundle, spec, batch_size)[self.metric]

    def scores(
        self, model: nn.Module, bundle: DataBundle, spec: ModelSpec, batch_size: int
    ) -> dict[str, float]:
        """Box mAP50-95 (the metric), and mask mAP50-95 of a -seg model or keypoint (pose)
        mAP50-95 of a -pose model, in one validation pass."""
        self.check_data(bundle, "evaluating")
        with ultralytics_offline():
            return task_maps(model, bundle.info["yaml"], spec.input_size, batch=batch_size)

    def engine_score(
        self,
        predict: Predict,
        model: nn.Module,
        bundle: DataBundle,
        spec: ModelSpec,
        batch_size: int,
    ) -> EngineScore:
        """Box mAP50-95 through the engine and of the PyTorch model (fp32, CPU), each by
        ultralytics' validator of the model's task over the same letterboxed test images
        (:func:`engine_maps`). ``agreement`` is None: a detector's outputs (boxes after NMS) have
        no per-image label to agree on the way a classifier's top-1 does."""
        self.check_data(bundle, "evaluating")
        with ultralytics_offline():
            value, ref, images = engine_maps(
                predict, model, bundle.info["yaml"], spec.input_size, batch_size
            )
        return EngineScore(self.metric, value["mAP50-95"], ref["mAP50-95"], None, images)

    def notes(self, model: nn.Module, spec: ModelSpec) -> dict[str, Any]:
        return {"ultralytics": yolo_notes(model)}

    def train(
        self,
        model: nn.Module,
        bundle: DataBundle,
        spec: ModelSpec,
        request: TrainRequest,
    ) -> dict[str, Any]:
        self.check_data(bundle, "training")
        if request.dist is not None:
            raise PbkitError(self.not_distributed)
        if request.max_iters is not None:
            raise PbkitError(
                "training for a number of iterations between pruning steps (prune.schedule:"
                " interleaved) is available for classification; detectors train with the"
                " ultralytics trainer by epochs"
            )
        with distilling(model, request.teacher, request.kd):
            return finetune(model, bundle.info["yaml"], spec.input_size, request)

    def calibration(self, bundle: DataBundle, cfg: CalibrationCfg, spec: ModelSpec) -> Calibration:
        info = {"dataset": bundle.name, "batch_size": cfg.batch_size, "seed": cfg.seed}
        if bundle.task != self.name:  # images without boxes (synthetic): feature-map criteria only
            batches = classification_batches(bundle, cfg.batches, cfg.batch_size, cfg.seed)
            return Calibration(batches, self.title, info=_counted(info, batches, lambda y: len(y)))
        with ultralytics_offline():
            batches = calibration_batches(
                bundle.info["yaml"],
                spec.input_size,
                cfg.batches,
                cfg.batch_size,
                cfg.seed,
                task=ultralytics_task(spec),
            )
        return Calibration(
            batches,
            self.title,
            loss=lambda m, b: detection_loss(m, b[1]),
            sample=lambda b, i: (b[0][i : i + 1], sample(b[1], i)),
            info=_counted(info, batches, lambda y: len(y["img"])),
        )

    def calibration_images(
        self, bundle: DataBundle, spec: ModelSpec, n: int, seed: int
    ) -> np.ndarray:
        """Training images letterboxed by ultralytics' loader without augmentation, in [0, 1]."""
        if bundle.task != self.name:  # images without boxes (synthetic)
            return super().calibration_images(bundle, spec, n, seed)
        size = spec.input_size
        with ultralytics_offline():
            batches = calibration_batches(
                bundle.info["yaml"], size, -(-n // min(n, 16)), min(n, 16), seed
            )
        images = torch.cat([b[0] for b in batches])[:n]
        return np.ascontiguousarray(images.float().numpy(), dtype=np.float32)

    def parity_outputs(self, outputs: list[Any]) -> tuple[list[Any], str]:
        found, label = yolo.raw_head_positions([tuple(o.shape) for o in outputs])
        if found and "one-to-one" in label and len(outputs[0].shape) == 3:
            # the NMS-free detections: their top-k scores, in order (which of two equal scores
            # comes first, and so its box and class, is the backend's choice)
            return [outputs[0][..., 4], *(outputs[i] for i in found)], label.replace(
                "raw head outputs", "NMS-free top-k scores and raw head outputs"
            )
        if found:
            return [outputs[i] for i in found], label
        if len(outputs) > max(yolo.RAW_HEAD):
            return [outputs[i] for i in yolo.RAW_HEAD], yolo.RAW_HEAD_LABEL
        return outputs, "all outputs"

    def epoch_line(self, row: dict[str, float]) -> str:
        return f"mAP50-95 {row['mAP50-95']:.2f}" if "mAP50-95" in row else ""


def detection_kd_loss(
    student: dict[str, torch.Tensor],
    teacher: dict[str, torch.Tensor],
    reg_max: int,
    temperature: float,
) -> torch.Tensor:
    """Distillation on a YOLOv8 head's raw outputs, per anchor: the box side distributions
    (``reg_max`` bins per side, softmax) by T^2 * KL(teacher_T || student_T), summed over bins and
    averaged over sides, anchors and images; the class logits (independent sigmoids) by T^2 times
    the binary KL of the teacher's probabilities to the student's, averaged likewise. Zero when the
    student equals the teacher; the teacher carries no gradient."""
    t = temperature
    b, _, a = student["boxes"].shape
    sb = student["boxes"].view(b, 4, reg_max, a)
    tb = teacher["boxes"].detach().view(b, 4, reg_max, a)
    box = (
        F.kl_div(F.log_softmax(sb / t, dim=2), F.softmax(tb / t, dim=2), reduction="none")
        .sum(2)
        .mean()
    )
    pt = torch.sigmoid(teacher["scores"].detach() / t)
    entropy = F.binary_cross_entropy(pt, pt, reduction="mean")
    cls = F.binary_cross_entropy_with_logits(student["scores"] / t, pt, reduction="mean") - entropy
    return (box + cls) * t * t


class DistilledCriterion:
    """The detection loss with distillation, as the ultralytics trainer sees ``model.criterion``:
    (1 - alpha) * the model's own detection loss + alpha * batch * detection_kd_loss against the
    teacher's raw head outputs (the trainer's own loss is scaled by the batch size too). A plain
    object, so the trainer can deep-copy it into its EMA model; ultralytics drops a model's
    criterion before it saves a checkpoint."""

    def __init__(self, model: nn.Module, teacher: nn.Module, kd: KDCfg, reg_max: int) -> None:
        self.model, self.teacher, self.kd, self.reg_max = model, teacher, kd, reg_max
        self.own: Any = (
            None  # built on first use, once the trainer has given the model its hyperparameters
        )

    def __call__(self, preds: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        if self.own is None:
            self.own = self.model.init_criterion()
        value, items = self.own(preds, batch)
        with torch.no_grad():
            target = self.teacher(batch["img"])
        student = preds[1] if isinstance(preds, tuple) else preds
        target = target[1] if isinstance(target, tuple) else target
        distil = (
            detection_kd_loss(student, target, self.reg_max, self.kd.temperature)
            * batch["img"].shape[0]
        )
        return (1 - self.kd.alpha) * value.sum() + self.kd.alpha * distil, items

    def update(self) -> None:
        if self.own is not None and hasattr(self.own, "update"):
            self.own.update()


@contextlib.contextmanager
def distilling(model: nn.Module, teacher: nn.Module | None, kd: KDCfg | None) -> Iterator[None]:
    """While the ultralytics trainer trains ``model``, its criterion distils ``teacher`` into it
    (:class:`DistilledCriterion`); the model's own criterion afterwards."""
    if teacher is None or kd is None or not kd.enabled:
        yield
        return
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    own = getattr(model, "criterion", None)
    model.criterion = DistilledCriterion(
        model, teacher, kd, int(yolo.detect_head(model)[0].reg_max)
    )
    try:
        yield
    finally:
        model.criterion = own


def _counted(
    info: dict[str, Any], batches: list[Any], size: Callable[[Any], int]
) -> dict[str, Any]:
    return {**info, "batches": len(batches), "samples": sum(size(y) for _, y in batches)}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def yolo_notes(model: nn.Module) -> dict[str, Any]:
    """What the record keeps of a YOLO model's head and the blocks held fixed: ultralytics' task,
    whether it infers end to end (NMS-free), the head (never pruned) and each block held with the
    reason."""
    names = {m: n for n, m in model.named_modules()}
    heads = yolo.detect_head(model)
    released = [names[m] for h in heads for m in yolo.narrowed_with_neck(h)]
    refine = any(".feat_refine." in n for n in released)
    return {
        "task": yolo.task_of(model),
        "end2end": yolo.is_end2end(model),
        "head": {
            "modules": [names[h] for h in heads],
            "classes": [type(h).__name__ for h in heads],
            "pruned": False,
            "why": "the head gives the task's outputs: its widths and outputs are never pruned"
            + (
                "; the depth-wise convolution at each class branch's input reads the neck's"
                " channels one by one and narrows with them"
                if released
                else ""
            )
            + (
                "; the prototype module's 1x1 convolutions mapping P4/P5 into P3 (feat_refine)"
                " give P3's channels and narrow with them, the fusion convolution and the"
                " training-only semantic branch reading fewer"
                if refine
                else ""
            ),
            "narrowed_with_neck": released,
        },
        "held": {names[m]: why for m, why in yolo.held_blocks(model).items()},
    }


_TASK_METRICS = {  # ultralytics' task -> its validator's keys of pbkit's metrics
    "detect": {"mAP50-95": "metrics/mAP50-95(B)"},
    "segment": {"mAP50-95": "metrics/mAP50-95(B)", "mask mAP50-95": "metrics/mAP50-95(M)"},
    "pose": {"mAP50-95": "metrics/mAP50-95(B)", "pose mAP50-95": "metrics/mAP50-95(P)"},
}


def _validator(task: str) -> Any:
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.models.yolo.pose import PoseValidator
    from ultralytics.models.yolo.segment import SegmentationValidator

    return {"detect": DetectionValidator, "segment": SegmentationValidator, "pose": PoseValidator}[
        task
    ]


def _trainer(task: str) -> Any:
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.models.yolo.pose import PoseTrainer
    from ultralytics.models.yolo.segment import SegmentationTrainer

    return {"detect": DetectionTrainer, "segment": SegmentationTrainer, "pose": PoseTrainer}[task]


def map50_95(model: nn.Module, yaml_path: str, imgsz: int, batch: int = 16) -> float:
    """Box mAP50-95 (percent) of a model object on the dataset's val split, on the model's
    device."""
    return task_maps(model, yaml_path, imgsz, batch)["mAP50-95"]


def task_maps(model: nn.Module, yaml_path: str, imgsz: int, batch: int = 16) -> dict[str, float]:
    """mAP50-95 (percent) of a model object on the dataset's val split with the validator of its
    own task: boxes, and masks (-seg) or keypoints (-pose)."""
    task = _validated_task(model)
    m = copy.deepcopy(model).float().eval()  # the validator fuses conv+bn in place
    return _validate(task, m, _val_args(yaml_path, imgsz, batch, str(device.of(model))))[0]


def _validated_task(model: nn.Module) -> str:
    task = yolo.task_of(model)
    if task not in _TASK_METRICS:
        raise PbkitError(f"ultralytics {task} models are not validated by pbkit")
    return task


def _val_args(yaml_path: str, imgsz: int, batch: int, dev: str) -> dict[str, Any]:
    """The validator's arguments: square letterboxed images of ``imgsz`` (``rect`` off), no
    plots, no files written."""
    return {
        "data": yaml_path,
        "imgsz": imgsz,
        "batch": batch,
        "device": dev,
        "plots": False,
        "verbose": False,
        "save_json": False,
        "workers": 0,
        "half": False,
        "rect": False,
    }


def _validate(task: str, model: nn.Module, args: dict[str, Any]) -> tuple[dict[str, float], int]:
    """(the task's mAPs in percent, images seen) of ``model`` by ultralytics' validator."""
    validator = _validator(task)(args=args)
    with _quiet():
        stats = validator(model=model)
    maps = {k: 100.0 * float(stats[v]) for k, v in _TASK_METRICS[task].items()}
    return maps, int(getattr(validator, "seen", 0))


def _like(template: Any, flat: Iterator[torch.Tensor]) -> Any:
    """``template`` (a model's output: tensors in tuples, lists, dicts) with each tensor replaced,
    in :func:`~pbkit.models.outputs.output_tensors`' order, by the next of ``flat``."""
    if isinstance(template, torch.Tensor):
        return next(flat)
    if isinstance(template, tuple):
        return tuple(_like(t, flat) for t in template)
    if isinstance(template, list):
        return [_like(t, flat) for t in template]
    if isinstance(template, dict):
        return {k: _like(v, flat) for k, v in template.items()}
    return template


def engine_maps(
    predict: Predict, model: nn.Module, yaml_path: str, imgsz: int, batch: int = 16
) -> tuple[dict[str, float], dict[str, float], int]:
    """(the task's mAPs through ``predict``, PyTorch's, images): ultralytics' validator of the
    model's task (boxes, and masks or keypoints) runs twice over the val split's images
    letterboxed to ``imgsz`` square (the engine's fixed input), in the same order and batches,
    on the CPU: once on an fp32 copy of ``model``, once on a copy whose forward sends the batch
    (float32 NCHW) to the engine and gives its outputs back in the structure of the model's eval
    output (the ONNX outputs are that output flattened, :func:`pbkit.export.onnx.to_onnx`), so
    the validator's own NMS, matching and metrics see the engine's predictions. Both use the head
    the model was exported with (YOLO26: the NMS-free one-to-one head, ``nms=False``)."""
    task = _validated_task(model)
    ref_model = copy.deepcopy(model).float().eval().cpu()
    end2end = yolo.is_end2end(ref_model)
    args = {**_val_args(yaml_path, imgsz, batch, "cpu"), "nms": False if end2end else None}
    with torch.no_grad():
        template = ref_model(torch.zeros(1, 3, imgsz, imgsz))
    n_out = len(output_tensors(template))
    engine = copy.deepcopy(ref_model)
    fed = [0]

    def forward(x: torch.Tensor, *_: Any, **__: Any) -> Any:
        if tuple(x.shape[1:]) != (3, imgsz, imgsz):
            raise PbkitError(
                f"the validator fed the engine images of {tuple(x.shape[2:])}, not the"
                f" {imgsz}x{imgsz} it was exported for"
            )
        out = predict(np.ascontiguousarray(x.detach().float().cpu().numpy(), dtype=np.float32))
        if len(out) != n_out:
            raise PbkitError(
                f"the engine gives {len(out)} outputs, the model {n_out}: it is not this"
                " model's export (pbkit export RUN_DIR writes it again)"
            )
        fed[0] += int(x.shape[0])
        tensors = (torch.from_numpy(np.asarray(o, dtype=np.float32)) for o in out)
        return _like(template, tensors)

    # the forward is the engine's; fusing conv+bn (the validator's) would only cost time
    engine.forward = forward
    engine.fuse = lambda *a, **k: engine
    value, images = _validate(task, engine, args)
    ref, ref_images = _validate(task, ref_model, args)
    if fed[0] == 0 or images != ref_images:
        raise PbkitError(
            f"the engine saw {fed[0]} images, PyTorch's validation {ref_images}: not the same"
            " evaluation"
        )
    return value, ref, images


def ultralytics_task(spec: ModelSpec) -> str:
    """ultralytics' task of a YOLO model's spec: by its name, or by a checkpoint's yaml."""
    if spec.origin is not None and spec.origin.arch:
        from ultralytics.nn.tasks import guess_model_task

        return str(guess_model_task(spec.origin.arch))
    return yolo.parse(spec.name).task


def calibration_batches(
    yaml_path: str, imgsz: int, batches: int, batch_size: int, seed: int, task: str = "detect"
) -> list[tuple[torch.Tensor, dict[str, Any]]]:
    """Pinned calibration batches from the dataset's train split, ultralytics' loader without
    augmentation: (images in [0, 1], the batch dict the model's training loss reads: with masks
    for ``task`` segment, keypoints for pose)."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset
    from ultralytics.utils import DEFAULT_CFG

    check_dataset(yaml_path)
    with _quiet():
        data = check_det_dataset(yaml_path)
        cfg = get_cfg(DEFAULT_CFG, {"imgsz": imgsz, "fraction": 1.0, "cache": False, "task": task})
        ds = build_yolo_dataset(cfg, data["train"], batch_size, data, mode="val")  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=True,
        generator=g,
        num_workers=0,
        collate_fn=ds.collate_fn,
    )
    out = []
    for batch in loader:
        batch["img"] = batch["img"].float() / 255.0
        out.append((batch["img"], batch))
        if len(out) == batches:
            break
    return out


def detection_loss(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """ultralytics' training loss of ``model`` on a batch dict (box + cls + dfl, with the mask or
    keypoint terms of a -seg or -pose model, YOLO26's end-to-end loss)."""
    from ultralytics.cfg import get_cfg
    from ultralytics.utils import DEFAULT_CFG

    if not hasattr(model, "args") or not hasattr(model.args, "box"):
        model.args = get_cfg(DEFAULT_CFG)
    loss, _ = model.loss(batch)
    return loss.sum()


def sample(batch: dict[str, Any], i: int) -> dict[str, Any]:
    """Image ``i`` of a detection batch, with its own targets, as a batch of one."""
    keep = batch["batch_idx"] == i
    one = {
        **batch,
        "img": batch["img"][i : i + 1],
        "cls": batch["cls"][keep],
        "bboxes": batch["bboxes"][keep],
        "batch_idx": torch.zeros(int(keep.sum()), dtype=batch["batch_idx"].dtype),
    }
    if "keypoints" in batch:
        one["keypoints"] = batch["keypoints"][keep]
    if "sem_masks" in batch:  # YOLO26-seg's semantic masks, one per image
        one["sem_masks"] = batch["sem_masks"][i : i + 1]
    if "masks" in batch:  # one mask image per image (overlapping masks), else one per object
        masks = batch["masks"]
        one["masks"] = masks[i : i + 1] if len(masks) == len(batch["img"]) else masks[keep]
    return one


def finetune(
    model: nn.Module,
    yaml_path: str,
    imgsz: int,
    request: TrainRequest,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Finetune the pruned object itself with the ultralytics trainer; load its EMA weights back.

    The request's ``regularize`` runs after every backward pass, before the optimizer step (sparse
    training); ``after_epoch`` after every epoch (GrowingReg's penalty update). The trainer's own
    outputs (checkpoints, logs) go to ``workdir``, a temporary folder removed afterwards when not
    given."""
    import tempfile

    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="pbkit-yolo-") as work:
            return finetune(model, yaml_path, imgsz, request, Path(work))
    with ultralytics_offline():
        return _train(model, yaml_path, imgsz, request, workdir)


def _train(
    model: nn.Module, yaml_path: str, imgsz: int, request: TrainRequest, workdir: Path
) -> dict[str, Any]:
    import time

    recipe = request.recipe
    regularize, after_epoch, on_epoch = request.regularize, request.after_epoch, request.on_epoch

    task = yolo.task_of(model)

    class PrunedTrainer(_trainer(task)):  # type: ignore[misc]
        # the trainer's model is our object, never a yaml rebuild
        def get_model(
            self, cfg: Any = None, weights: Any = None, verbose: bool = True
        ) -> nn.Module:
            return model

        def optimizer_step(self) -> None:
            if regularize is not None:
                self.scaler.unscale_(
                    self.optimizer
                )  # a no-op without AMP; the penalty sees true gradients
                regularize()
            super().optimizer_step()

    schedule = recipe.schedule
    overrides = {
        # a name only (the trainer's model is set to our object below and never built from it)
        "model": str(getattr(model, "yaml", {}).get("yaml_file", "yolov8n.yaml")),
        "data": yaml_path,
        "epochs": recipe.epochs,
        "imgsz": imgsz,
        # the model's device; AMP stays off: ultralytics' AMP check would download a model to test
        # with
        "batch": recipe.batch_size,
        "device": str(device.of(model)),
        "workers": 0,
        "amp": False,
        "plots": False,
        "val": True,
        "project": str(workdir),
        "name": "finetune",
        "exist_ok": True,
        "seed": recipe.seed,
        "deterministic": True,
        "optimizer": {"sgd": "SGD", "adamw": "AdamW", "adam": "Adam"}[recipe.optimizer],
        "lr0": recipe.lr,
        "momentum": recipe.momentum,
        "weight_decay": recipe.weight_decay,
        "cos_lr": schedule == "cosine",
        "lrf": 1.0 if schedule == "constant" else 0.01,
        "warmup_epochs": 0,
        "close_mosaic": 0,
        "verbose": False,
        "save": True,
        "pretrained": False,
    }
    trainer = PrunedTrainer(overrides=overrides)
    trainer.model = model
    history: list[dict[str, float]] = []

    def epoch_end(tr: Any) -> None:
        if int(tr.epoch) + 1 > recipe.epochs or any(
            r["epoch"] == int(tr.epoch) + 1 for r in history
        ):
            return  # the trainer's final evaluation fires the event once more
        row: dict[str, float] = {"epoch": int(tr.epoch) + 1}
        for key, metric in _TASK_METRICS[task].items():
            row[key] = 100.0 * float(tr.metrics.get(metric, 0.0))
        history.append(row)
        if on_epoch is not None:
            on_epoch(int(row["epoch"]), row)

    trainer.add_callback("on_fit_epoch_end", epoch_end)
    if after_epoch is not None:
        trainer.add_callback("on_train_epoch_end", lambda tr: after_epoch())
    t0 = time.perf_counter()
    with _quiet():
        trainer.train()
    ema = getattr(getattr(trainer, "ema", None), "ema", None)
    if ema is not None:
        model.load_state_dict({k: v.float() for k, v in ema.state_dict().items()})
    model.float().eval()
    for p in model.parameters():
        p.requires_grad_(True)
    yolo.select_end2end(model)  # (the trainer's validator selects the head it validates)
    return {
        **recipe.as_record(),
        "trainer": f"ultralytics {_trainer(task).__name__} (pruned object)",
        "time_s": time.perf_counter() - t0,
        "history": history,
    }
