"""YOLO detectors as models: YOLOv8, YOLO11 and YOLO26, for detection (``yolo11n``), instance
segmentation (``yolo11n-seg``) and pose (``yolo11n-pose``), built from ultralytics' own model
yamls and made prunable. Training, validation and calibration with ultralytics live in
:mod:`pbkit.tasks.detect`.

- C2f (YOLOv8), C3k2 (YOLO11, YOLO26, a C2f subclass) and C2PSA split their tensor with ``chunk``
  or ``split``, which dependency tracing mis-maps: each is replaced by an exact equivalent whose
  first 1x1 convolution is two (``C2fSplit``, ``C3k2Split``, ``C2PSASplit``: weights copied, the
  same outputs, tested).
- The position-sensitive attention (``Attention`` inside C2PSA's PSABlocks and YOLO26's attention
  C3k2) reads its heads' widths from attributes a channel cut does not update: it is held fixed
  (:func:`held_blocks`, with the reason the record keeps).
- The head (Detect, Segment, Pose, YOLO26's Segment26 / Pose26 and its one-to-one branch) is never
  pruned; export and finetuning use the pruned object, never a model rebuilt from the yaml (that
  silently restores the dense widths).
- YOLO26 is selected end to end (its one-to-one, NMS-free head: top-300 detections), as its guide
  deploys it.
- ultralytics is only used inside :func:`pbkit.models.ultralytics_env.ultralytics_offline`: it never
  installs packages or reaches the network.
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pbkit.core.errors import PbkitError
from pbkit.models.ultralytics_env import ultralytics_offline

SIZES = ("n", "s", "m", "l", "x")
FAMILIES = {"yolov8": "YOLOv8", "yolo11": "YOLO11", "yolo26": "YOLO26"}
# name suffix -> ultralytics task
VARIANTS = {"": "detect", "-seg": "segment", "-pose": "pose"}
TASK_WORDS = {
    "detect": "detection",
    "segment": "instance segmentation (boxes + masks)",
    "pose": "pose (boxes + 17 keypoints)",
}
# variants ultralytics ships that pbkit does not prune, and why (one line each)
UNSUPPORTED = {
    "-obb": "oriented boxes (-obb) need ultralytics' OBB validator and rotated-box parity",
    "-cls": "classification (-cls) models are ultralytics classifiers, not detectors",
}
NAME = re.compile(r"^(yolov8|yolo11|yolo26)([a-z]?)(-[a-z0-9]+)?$")
PREFIXES = tuple(FAMILIES)
INPUT_SIZE = 640


@dataclass(frozen=True)
class YoloName:
    """A YOLO name in parts: ``yolo11n-seg`` is family ``yolo11``, size ``n``, variant ``-seg``."""

    family: str
    size: str
    variant: str

    @property
    def name(self) -> str:
        return f"{self.family}{self.size}{self.variant}"

    @property
    def task(self) -> str:
        """ultralytics' task: detect | segment | pose."""
        return VARIANTS[self.variant]

    @property
    def yaml(self) -> str:
        """ultralytics' model yaml (the scale is read from the name)."""
        return f"{self.name}.yaml"

    @property
    def title(self) -> str:
        return f"{FAMILIES[self.family]}-{self.size}"


def names() -> list[str]:
    """Every YOLO name pbkit knows, family by family."""
    return [f + s + v for f in FAMILIES for v in VARIANTS for s in SIZES]


def parse(name: str) -> YoloName:
    """The parts of a YOLO name, or one line saying what pbkit takes."""
    m = NAME.match(name)
    family = m.group(1) if m else next((f for f in FAMILIES if name.startswith(f)), "yolov8")
    choices = ", ".join(family + s for s in SIZES)
    if m is None or m.group(2) not in SIZES:
        raise PbkitError(
            f"unknown {FAMILIES[family]} model {name!r}; choose one of: {choices} (each also as"
            " -seg and -pose)"
        )
    variant = m.group(3) or ""
    if variant in UNSUPPORTED:
        base = family + m.group(2)
        raise PbkitError(
            f"{name}: {UNSUPPORTED[variant]}; pbkit prunes {base}, {base}-seg and {base}-pose"
        )
    if variant not in VARIANTS:
        raise PbkitError(
            f"unknown {FAMILIES[family]} variant {name!r}; choose one of: {choices}, with -seg or"
            " -pose for instance segmentation or pose"
        )
    return YoloName(family, m.group(2), variant)


def size_of(name: str) -> str:
    return parse(name).size


def model_class(task: str) -> Any:
    """ultralytics' model class for its task (detect | segment | pose)."""
    from ultralytics.nn.tasks import DetectionModel, PoseModel, SegmentationModel

    classes = {"detect": DetectionModel, "segment": SegmentationModel, "pose": PoseModel}
    if task not in classes:
        raise PbkitError(
            f"ultralytics {task} models are not pruned by pbkit; it prunes detect, segment and"
            " pose models"
        )
    return classes[task]


def build(name: str, num_classes: int = 80) -> nn.Module:
    """The dense model from ultralytics' bundled yaml (random init), head strides set."""
    y = parse(name)
    with ultralytics_offline(), contextlib.redirect_stdout(io.StringIO()):
        return model_class(y.task)(y.yaml, nc=num_classes, verbose=False)


def build_from_yaml(arch: dict[str, Any], num_classes: int) -> nn.Module:
    """A dense model from a model yaml a checkpoint carries (its task read off the yaml's head)."""
    with ultralytics_offline(), contextlib.redirect_stdout(io.StringIO()):
        from ultralytics.nn.tasks import guess_model_task

        task = guess_model_task(arch)
        return model_class(task)(copy.deepcopy(arch), nc=num_classes, verbose=False)


def pretrained_file(name: str) -> Path:
    """Download ``<name>.pt`` (explicitly asked for), or say what to provide."""
    file = f"{parse(name).name}.pt"
    hint = f"download {file} elsewhere and pass --checkpoint {file} --set model.trust_checkpoint="
    hint += "true"
    try:
        with ultralytics_offline():
            from ultralytics.utils.downloads import attempt_download_asset

            path = Path(attempt_download_asset(file))
    except Exception as e:  # no network: requests/urllib errors of many kinds
        path = Path(file)
        if not path.is_file():
            raise PbkitError(
                f"pretrained weights {file} need the network ({type(e).__name__}); {hint}"
            ) from e
    if not path.is_file():
        raise PbkitError(f"pretrained weights {file} could not be fetched (offline?); {hint}")
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


class C3k2Split(C2fSplit):
    """C3k2 (YOLO11, YOLO26: a C2f whose inner blocks are Bottlenecks, C3k blocks or
    Bottleneck + PSABlock pairs) with its first 1x1 convolution split in two: same function."""


class C2PSASplit(nn.Module):
    """C2PSA with its first 1x1 convolution split in two (cv0: the half passed on, cv1: the half
    through the PSABlocks): no split, same function."""

    def __init__(self, c2psa: nn.Module) -> None:
        super().__init__()
        c = c2psa.c
        self.c = c
        self.cv0 = copy.deepcopy(c2psa.cv1)
        self.cv1 = copy.deepcopy(c2psa.cv1)
        for conv, part in ((self.cv0, slice(0, c)), (self.cv1, slice(c, 2 * c))):
            _slice_conv_bn(conv, part)
        self.cv2 = c2psa.cv2
        self.m = c2psa.m
        for attr in ("i", "f", "type", "np"):
            if hasattr(c2psa, attr):
                setattr(self, attr, getattr(c2psa, attr))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv2(torch.cat((self.cv0(x), self.m(self.cv1(x))), 1))


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
    """In place, returns the model: every C2f, C3k2 and C2PSA replaced by its split equivalent, the
    parameters float32 and trainable (a checkpoint ultralytics saved holds fp16 weights that need
    no gradient: the dependency graph, traced through autograd, would find nothing to prune), and a
    YOLO26 head selected end to end."""
    with ultralytics_offline():
        from ultralytics.nn.modules.block import C2PSA, C2f, C3k2

    swaps = {C2f: C2fSplit, C3k2: C3k2Split, C2PSA: C2PSASplit}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            split = swaps.get(type(child))
            if split is not None:
                setattr(parent, name, split(child))
    model.float()
    for p in model.parameters():
        p.requires_grad_(True)
    select_end2end(model)
    return model


def select_end2end(model: nn.Module) -> None:
    """A head with a one-to-one branch (YOLO26) infers with it: NMS-free top-k detections."""
    for head in detect_head(model):
        if getattr(head, "one2one_cv2", None) is not None:
            head.end2end = True


def detect_head(model: nn.Module) -> list[nn.Module]:
    """The head: Detect, or its Segment / Pose subclasses (YOLO26's one-to-one branch inside)."""
    with ultralytics_offline():
        from ultralytics.nn.modules.head import Detect

    return [m for m in model.modules() if isinstance(m, Detect)]


def protected_layers(model: nn.Module) -> list[nn.Module]:
    """What pruning never touches: the whole head (its outputs, its inner widths, YOLO26's
    one-to-one branch, the prototype and keypoint branches), but for the layers of
    :func:`narrowed_with_neck`, whose output width is the neck's own: held, they would tie the
    neck's P3/P4/P5 widths to the dense ones, as the first convolutions of YOLOv8's head do not
    (their input channels follow the neck). Where a head has none (YOLOv8), the head itself."""
    out: list[nn.Module] = []
    for head in detect_head(model):
        out += _cover(head, {id(m) for m in narrowed_with_neck(head)})
    return out


def narrowed_with_neck(head: nn.Module) -> list[nn.Module]:
    """The layers of a head that narrow with the neck (their outputs are the neck's channels, one
    for one): the depth-wise convolution at the input of each class branch of YOLO11's and YOLO26's
    heads (:func:`_depthwise_inputs`), and the 1x1 convolutions of YOLO26's prototype module
    (Proto26's ``feat_refine``) that map P4 and P5 to P3's channels before they are added into P3.
    Held, the latter tie P3 to its dense width and YOLO26n-seg stops short of 2x; narrowed, its
    fusion convolution and its training-only semantic branch read fewer input channels
    (:func:`training_branches_traced`), and the prototypes and every output keep their widths."""
    proto = getattr(head, "proto", None)
    refine = getattr(proto, "feat_refine", None)
    return [*_depthwise_inputs(head), *(refine if isinstance(refine, nn.ModuleList) else [])]


@contextlib.contextmanager
def training_branches_traced(model: nn.Module) -> Iterator[None]:
    """Within: each YOLO26 prototype module (Proto26) of ``model`` also returns its semantic
    segmentation logits in eval mode, as its training forward does, so that a dependency graph
    traced from the eval outputs sees that training-only branch and cuts its input channels with
    the P3 channels it reads (left out, the training forward, and ultralytics' trainer, would no
    longer run after a cut). Its BatchNorm statistics are not touched (eval mode); the branch
    itself stays in the held head. Only if ultralytics' block module is already imported."""
    block = sys.modules.get("ultralytics.nn.modules.block")
    proto26 = getattr(block, "Proto26", None)
    patched = [
        m
        for m in model.modules()
        if proto26 is not None
        and type(m) is proto26
        and isinstance(getattr(m, "semseg", None), nn.Module)
        and isinstance(getattr(m, "feat_fuse", None), nn.Module)
    ]
    for m in patched:
        m.forward = _with_semantic(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


def _with_semantic(proto: nn.Module) -> Any:
    """Proto26's own forward, then its semantic branch on the fused input it read (the input of
    ``feat_fuse``, as ultralytics' training forward feeds ``semseg``)."""
    original = type(proto).forward

    def forward(x: Any, *args: Any, **kwargs: Any) -> Any:
        seen: list[torch.Tensor] = []
        handle = proto.feat_fuse.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0]))
        try:
            out = original(proto, x, *args, **kwargs)
        finally:
            handle.remove()
        if isinstance(out, tuple) or not seen:  # (training: it returned the branch already)
            return out
        return out, proto.semseg(seen[0])

    return forward


def _cover(module: nn.Module, released: set[int]) -> list[nn.Module]:
    """The fewest submodules of ``module`` that hold all of it but the ``released`` ones."""
    if id(module) in released:
        return []
    if not any(id(m) in released for m in module.modules()):
        return [module]
    return [m for child in module.children() for m in _cover(child, released)]


def _depthwise_inputs(head: nn.Module) -> list[nn.Module]:
    """The depth-wise convolutions (ultralytics DWConv: conv + bn) that read a head's inputs
    directly: the first layer of each class branch of a non-legacy head (both branches of an
    end-to-end one)."""
    found = []
    for name in ("cv3", "one2one_cv3"):
        branches = getattr(head, name, None)
        if not isinstance(branches, nn.ModuleList):
            continue
        for branch in branches:
            first = branch[0][0] if isinstance(branch[0], nn.Sequential) else branch[0]
            conv = getattr(first, "conv", None)
            if isinstance(conv, nn.Conv2d) and conv.groups > 1 and conv.groups == conv.in_channels:
                found.append(first)
    return found


def task_of(model: nn.Module) -> str:
    """ultralytics' task of a model by its head: detect | segment | pose (| obb)."""
    with ultralytics_offline():
        from ultralytics.nn.modules.head import OBB, Pose, Segment

    for head in detect_head(model):
        for cls, task in ((Segment, "segment"), (Pose, "pose"), (OBB, "obb")):
            if isinstance(head, cls):
                return task
    return "detect"


def is_end2end(model: nn.Module) -> bool:
    return any(bool(getattr(h, "end2end", False)) for h in detect_head(model))


def held_blocks(model: nn.Module) -> dict[nn.Module, str]:
    """Blocks held fixed from the start, with the reason the record keeps: the position-sensitive
    attention of C2PSA and of YOLO26's attention C3k2 (its forward reshapes ``qkv`` by the stored
    ``num_heads``, ``key_dim`` and ``head_dim``, which a channel cut does not update; traced, the
    graph's index mapping does not finish)."""
    import sys

    block = sys.modules.get("ultralytics.nn.modules.block")
    attention = getattr(block, "Attention", None)
    if attention is None:
        return {}
    why = (
        "position-sensitive attention (PSABlock): its heads' widths are stored attributes"
        " (num_heads, key_dim, head_dim) a channel cut does not update; held fixed, the FFN and the"
        " rest of the block pruned"
    )
    return {m: why for m in model.modules() if type(m) is attention}


# In the flattened eval outputs [decoded, boxes, scores, *neck features] of a YOLOv8 detector, the
# raw head outputs.
RAW_HEAD = (1, 2)
RAW_HEAD_LABEL = "raw head outputs (box distributions, class logits)"


def _is_levels(shapes: list[tuple[int, ...]]) -> bool:
    """Three feature maps P3, P4, P5 of one batch: each half the size of the one before."""
    if len(shapes) != 3 or any(len(s) != 4 for s in shapes):
        return False
    return all(
        b[0] == a[0] and b[2] * 2 == a[2] and b[3] * 2 == a[3]
        for a, b in zip(shapes, shapes[1:], strict=False)
    )


def raw_head_positions(shapes: list[tuple[int, ...]]) -> tuple[list[int], str]:
    """In a YOLO head's flattened eval outputs, the positions of its raw outputs, and their label.

    A head branch flattens as ``[boxes, scores, P3, P4, P5, *extras]`` (extras: mask coefficients
    and prototypes, or keypoints), after the decoded outputs; YOLO26 has two branches (one-to-many,
    one-to-one). The raw outputs are each branch's tensors but the neck's feature maps. None found:
    ``([], "")``."""
    starts = [
        i
        for i in range(2, len(shapes) - 2)
        if _is_levels(shapes[i : i + 3]) and len(shapes[i - 1]) == 3 and len(shapes[i - 2]) == 3
    ]
    found: list[int] = []
    extras: list[tuple[int, ...]] = []
    for j, i in enumerate(starts):
        end = starts[j + 1] - 2 if j + 1 < len(starts) else len(shapes)
        found += [i - 2, i - 1, *range(i + 3, end)]
        extras += [shapes[k] for k in range(i + 3, end)]
    if not found:
        return [], ""
    if len(starts) == 1 and not extras and shapes[starts[0] - 2][1] > 4:
        return found, RAW_HEAD_LABEL
    parts = ["boxes", "class logits"]
    if any(len(s) == 4 for s in extras):
        parts += ["mask coefficients", "prototypes"]
    elif extras:
        parts.append("keypoints")
    label = f"raw head outputs ({', '.join(parts)})"
    if len(starts) == 2:
        label += " of both branches (one-to-many, one-to-one)"
    return found, label


def raw_outputs(out: Any) -> list[torch.Tensor]:
    """The raw head tensors of an eval-mode forward ``(decoded, raw)``: boxes, class logits and
    the task's own (mask coefficients and prototypes, keypoints), the one-to-many branch's then
    the one-to-one branch's (YOLO26); the neck's feature maps left out."""
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], list | tuple | dict):
        return _raw(out[1])
    return [out] if isinstance(out, torch.Tensor) else list(out)


def _raw(raw: Any) -> list[torch.Tensor]:
    if isinstance(raw, dict):
        return [t for k, v in raw.items() if k != "feats" for t in _raw(v)]
    if isinstance(raw, list | tuple):
        return [t for v in raw for t in _raw(v)]
    return [raw] if isinstance(raw, torch.Tensor) else []
