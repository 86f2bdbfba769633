"""YOLOv8 detectors: built from ultralytics' own model yamls, made prunable, finetuned and validated
with the ultralytics trainer on the pruned object itself, offline.

- C2f splits its tensor with ``chunk``, which dependency tracing mis-maps: every C2f is replaced by
  ``C2fSplit`` (two 1x1 convolutions, weights copied), an exact equivalent (tested).
- The Detect head is never pruned; export and finetuning use the pruned object, never a model
  rebuilt from the yaml (that silently restores the dense widths).
- ultralytics never installs packages or reaches the network: ``YOLO_OFFLINE`` and
  ``YOLO_AUTOINSTALL=false`` are set before it is imported, font downloads are replaced by a local
  look-up, and a dataset yaml whose images are missing is refused before ultralytics could
  download them.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pbkit.errors import PbkitError

SIZES = ("n", "s", "m", "l", "x")
NAME = re.compile(r"^yolov8([nsmlx])$")
INPUT_SIZE = 640


def offline() -> None:
    """Configure ultralytics for offline use; call before importing it."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    os.environ.setdefault("YOLO_VERBOSE", "false")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(os.environ.get("PBKIT_CACHE", "~/.cache/pbkit")).expanduser()
                                                 / "ultralytics"))
    import ultralytics.data.utils as data_utils
    import ultralytics.utils as ul_utils
    import ultralytics.utils.checks as checks
    import ultralytics.utils.events as events

    # if ultralytics was imported before this call, its module-level flags were read already
    for mod in (ul_utils, checks, events):
        for flag in ("AUTOINSTALL", "ONLINE"):
            if hasattr(mod, flag):
                setattr(mod, flag, False)

    def local_font(font: str = "Arial.ttf") -> Path | None:  # never downloads
        from matplotlib import font_manager

        name = Path(font).name
        for f in font_manager.fontManager.ttflist:
            if name in f.fname and os.path.exists(f.fname):
                return Path(f.fname)
        return None

    checks.check_font = local_font
    data_utils.check_font = local_font  # imported by name there
    logging.getLogger("ultralytics").setLevel(logging.WARNING)


def size_of(name: str) -> str:
    m = NAME.match(name)
    if m is None:
        raise PbkitError(f"unknown YOLOv8 model {name!r}; choose one of: {', '.join('yolov8' + s for s in SIZES)}")
    return m.group(1)


def build(name: str, num_classes: int = 80) -> nn.Module:
    """The dense detector from ultralytics' bundled yaml (random init), Detect stride set."""
    size = size_of(name)
    offline()
    from ultralytics.nn.tasks import DetectionModel

    with contextlib.redirect_stdout(io.StringIO()):
        model = DetectionModel(f"yolov8{size}.yaml", nc=num_classes, verbose=False)
    return model


def pretrained_file(name: str) -> Path:
    """Download ``yolov8<size>.pt`` (explicitly asked for), or say what to provide."""
    size = size_of(name)
    offline()
    from ultralytics.utils.downloads import attempt_download_asset

    try:
        path = Path(attempt_download_asset(f"yolov8{size}.pt"))
    except Exception as e:  # no network: requests/urllib errors of many kinds
        path = Path(f"yolov8{size}.pt")
        if not path.is_file():
            raise PbkitError(f"pretrained weights yolov8{size}.pt need the network ({type(e).__name__}); download "
                             f"yolov8{size}.pt elsewhere and pass --checkpoint yolov8{size}.pt "
                             "--set model.trust_checkpoint=true") from e
    if not path.is_file():
        raise PbkitError(f"pretrained weights yolov8{size}.pt could not be fetched (offline?); download it elsewhere "
                         f"and pass --checkpoint yolov8{size}.pt --set model.trust_checkpoint=true")
    return path


class C2fSplit(nn.Module):
    """C2f with its first 1x1 convolution split in two (cv0, cv1): no chunk, same function."""

    def __init__(self, c2f: nn.Module) -> None:
        super().__init__()
        c = c2f.c
        self.c = c
        self.cv0 = copy.deepcopy(c2f.cv1)
        self.cv1 = copy.deepcopy(c2f.cv1)
        for conv, part in ((self.cv0, slice(0, c)), (self.cv1, slice(c, 2 * c))):
            _slice_conv_bn(conv, part)
        self.cv2 = c2f.cv2
        self.m = c2f.m
        for attr in ("i", "f", "type", "np"):  # ultralytics' graph bookkeeping on model.model[i]
            if hasattr(c2f, attr):
                setattr(self, attr, getattr(c2f, attr))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def _slice_conv_bn(block: nn.Module, part: slice) -> None:
    """Keep output channels ``part`` of an ultralytics Conv (conv + bn)."""
    conv, bn = block.conv, block.bn
    conv.weight = nn.Parameter(conv.weight.data[part].clone())
    if conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias.data[part].clone())
    conv.out_channels = conv.weight.shape[0]
    bn.weight = nn.Parameter(bn.weight.data[part].clone())
    bn.bias = nn.Parameter(bn.bias.data[part].clone())
    bn.running_mean = bn.running_mean[part].clone()
    bn.running_var = bn.running_var[part].clone()
    bn.num_features = bn.weight.shape[0]


def make_prunable(model: nn.Module) -> nn.Module:
    """Replace every C2f by its split equivalent, in place; returns the model."""
    from ultralytics.nn.modules.block import C2f

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is C2f:
                setattr(parent, name, C2fSplit(child))
    return model


def detect_head(model: nn.Module) -> list[nn.Module]:
    from ultralytics.nn.modules.head import Detect

    return [m for m in model.modules() if isinstance(m, Detect)]


# In the flattened eval outputs [decoded, boxes, scores, *neck features], the raw head outputs.
RAW_HEAD = (1, 2)
RAW_HEAD_LABEL = "raw head outputs (box distributions, class logits)"


def raw_outputs(out: Any) -> list[torch.Tensor]:
    """The raw per-level head tensors of an eval-mode forward ``(decoded, [p3, p4, p5])``."""
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], list | tuple | dict):
        raw = out[1]
        if isinstance(raw, dict):
            raw = [v for v in raw.values() if isinstance(v, torch.Tensor)]
        return list(raw)
    return [out] if isinstance(out, torch.Tensor) else list(out)


# ------------------------------------------------------------------------------------------------
# datasets, validation (mAP50-95) and finetuning with the ultralytics trainer


def check_dataset(yaml_path: str | Path) -> dict[str, Any]:
    """Read a detection dataset yaml and make sure its images are there (pbkit never downloads)."""
    import yaml

    path = Path(yaml_path).expanduser()
    if not path.is_file():
        raise PbkitError(f"detection dataset yaml {str(path)!r} not found")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise PbkitError(f"detection dataset yaml {str(path)!r} is malformed: {e}") from e
    for key in ("train", "val", "names"):
        if key not in cfg:
            raise PbkitError(f"detection dataset yaml {str(path)!r} lacks {key!r}")
    root = Path(cfg.get("path") or path.parent)
    if not root.is_absolute():
        root = (path.parent / root).resolve()
    for split in ("train", "val"):
        for rel in (cfg[split] if isinstance(cfg[split], list) else [cfg[split]]):
            p = Path(rel) if Path(rel).is_absolute() else root / rel
            if not p.exists():
                raise PbkitError(f"detection dataset: {split} images {str(p)!r} not found; pbkit never downloads "
                                 "datasets: fetch them (see the yaml's 'download' key) and retry")
    names = cfg["names"]
    n = len(names) if isinstance(names, list | dict) else int(cfg.get("nc", 0))
    return {"yaml": str(path), "root": str(root), "num_classes": n}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def evaluate(model: nn.Module, yaml_path: str, imgsz: int, batch: int = 16) -> float:
    """mAP50-95 (percent) of a model object on the dataset's val split, on the CPU."""
    offline()
    from ultralytics.models.yolo.detect import DetectionValidator

    args = {"data": yaml_path, "imgsz": imgsz, "batch": batch, "device": "cpu", "plots": False, "verbose": False,
            "save_json": False, "workers": 0, "half": False, "rect": False}
    validator = DetectionValidator(args=args)
    m = copy.deepcopy(model).float().eval()  # the validator fuses conv+bn in place
    with _quiet():
        stats = validator(model=m)
    return 100.0 * float(stats["metrics/mAP50-95(B)"])


def calibration_batches(yaml_path: str, imgsz: int, batches: int, batch_size: int,
                        seed: int) -> list[tuple[torch.Tensor, dict[str, Any]]]:
    """Pinned calibration batches from the dataset's train split, ultralytics' loader without
    augmentation: (images in [0, 1], the batch dict the detection loss reads)."""
    offline()
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset
    from ultralytics.utils import DEFAULT_CFG

    check_dataset(yaml_path)
    with _quiet():
        data = check_det_dataset(yaml_path)
        cfg = get_cfg(DEFAULT_CFG, {"imgsz": imgsz, "fraction": 1.0, "cache": False})
        ds = build_yolo_dataset(cfg, data["train"], batch_size, data, mode="val")
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, generator=g, num_workers=0,
                                         collate_fn=ds.collate_fn)
    out = []
    for batch in loader:
        batch["img"] = batch["img"].float() / 255.0
        out.append((batch["img"], batch))
        if len(out) == batches:
            break
    return out


def detection_loss(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """ultralytics' YOLOv8 training loss (box + cls + dfl) of ``model`` on a batch dict."""
    from ultralytics.cfg import get_cfg
    from ultralytics.utils import DEFAULT_CFG

    if not hasattr(model, "args") or not hasattr(model.args, "box"):
        model.args = get_cfg(DEFAULT_CFG)
    loss, _ = model.loss(batch)
    return loss.sum()


def sample(batch: dict[str, Any], i: int) -> dict[str, Any]:
    """Image ``i`` of a detection batch, with its own targets, as a batch of one."""
    keep = batch["batch_idx"] == i
    return {**batch, "img": batch["img"][i:i + 1], "cls": batch["cls"][keep], "bboxes": batch["bboxes"][keep],
            "batch_idx": torch.zeros(int(keep.sum()), dtype=batch["batch_idx"].dtype)}


def finetune(model: nn.Module, yaml_path: str, imgsz: int, recipe: dict[str, Any], workdir: Path | None = None,
             on_epoch: Callable[[int, dict[str, float]], None] | None = None,
             regularize: Callable[[], None] | None = None,
             after_epoch: Callable[[], None] | None = None) -> dict[str, Any]:
    """Finetune the pruned object itself with the ultralytics trainer; load its EMA weights back.

    ``regularize`` runs after every backward pass, before the optimizer step (sparse training);
    ``after_epoch`` after every epoch (GrowingReg's penalty update). The trainer's own outputs
    (checkpoints, logs) go to ``workdir``, a temporary folder removed afterwards when not given."""
    import tempfile

    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="pbkit-yolo-") as work:
            return finetune(model, yaml_path, imgsz, recipe, Path(work), on_epoch, regularize, after_epoch)
    import time

    offline()
    from ultralytics.models.yolo.detect import DetectionTrainer

    class PrunedTrainer(DetectionTrainer):  # the trainer's model is our object, never a yaml rebuild
        def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True) -> nn.Module:
            return model

        def optimizer_step(self) -> None:
            if regularize is not None:
                self.scaler.unscale_(self.optimizer)  # a no-op without AMP; the penalty sees true gradients
                regularize()
            super().optimizer_step()

    schedule = recipe.get("schedule")
    overrides = {
        # a name only (the trainer's model is set to our object below and never built from it)
        "model": str(getattr(model, "yaml", {}).get("yaml_file", "yolov8n.yaml")), "data": yaml_path, "epochs": int(recipe["epochs"]), "imgsz": imgsz,
        "batch": int(recipe["batch_size"]), "device": "cpu", "workers": 0, "amp": False, "plots": False,
        "val": True, "project": str(workdir), "name": "finetune", "exist_ok": True, "seed": int(recipe["seed"]),
        "deterministic": True, "optimizer": {"sgd": "SGD", "adamw": "AdamW", "adam": "Adam"}[recipe["optimizer"]],
        "lr0": float(recipe["lr"]), "momentum": float(recipe["momentum"]), "weight_decay": float(recipe["weight_decay"]),
        "cos_lr": schedule == "cosine", "lrf": 1.0 if schedule == "constant" else 0.01, "warmup_epochs": 0,
        "close_mosaic": 0, "verbose": False, "save": True, "pretrained": False,
    }
    trainer = PrunedTrainer(overrides=overrides)
    trainer.model = model
    history: list[dict[str, float]] = []

    def epoch_end(tr: Any) -> None:
        if int(tr.epoch) + 1 > int(recipe["epochs"]) or any(r["epoch"] == int(tr.epoch) + 1 for r in history):
            return  # the trainer's final evaluation fires the event once more
        row = {"epoch": int(tr.epoch) + 1, "mAP50-95": 100.0 * float(tr.metrics.get("metrics/mAP50-95(B)", 0.0))}
        history.append(row)
        if on_epoch is not None:
            on_epoch(row["epoch"], row)

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
    return {**recipe, "trainer": "ultralytics DetectionTrainer (pruned object)", "time_s": time.perf_counter() - t0,
            "history": history}
