"""The names pbkit knows, with their metadata (family, source, input size, classes, task), and what
the zoo found about them; everything discoverable with ``pbkit list models``. How a name (or a
file, an import path, a checkpoint) becomes a model is :mod:`pbkit.models.sources`.

Names:
- the study's CIFAR variants (``resnet18_cifar``, ``resnet50_cifar``, ``resnet56_cifar``,
  ``vgg19_cifar``, plus the small ``resnet20_cifar``), 32x32 input;
- ``tv:<name>``: any torchvision classification model (``tv:resnet50``);
- ``timm:<name>``: any timm model (``timm:vit_small_patch16_224``);
- ``yolov8{n,s,m,l,x}``, ``yolo11{n,s,m,l,x}``, ``yolo26{n,s,m,l,x}`` and their ``-seg`` and
  ``-pose`` variants: ultralytics detectors (:mod:`pbkit.models.yolo`, :data:`YOLO_ENTRIES`);
- ``tv:<name>`` of torchvision's segmentation models and ``timmseg:<vit>``: segmentation
  (:mod:`pbkit.models.segment`);
- the user's own (:data:`USER_PATTERNS`): ``path/to/net.py:build``, ``my_pkg.models:build``, a
  pickled module ``model.pt``, an ultralytics checkpoint ``best.pt``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from pbkit.models import archs


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str  # cnn | vit | yolo
    source: str  # pbkit | torchvision | timm
    input_size: int
    num_classes: int
    description: str
    builder: Callable[..., nn.Module] = field(repr=False)
    task: str = "classify"


MODELS: dict[str, ModelEntry] = {
    e.name: e
    for e in [
        ModelEntry(
            "resnet18_cifar",
            "cnn",
            "pbkit",
            32,
            100,
            "ResNet-18, CIFAR stem (study: CIFAR-100)",
            archs.resnet18_cifar,
        ),
        ModelEntry(
            "resnet50_cifar",
            "cnn",
            "pbkit",
            32,
            100,
            "ResNet-50, CIFAR stem (study: CIFAR-100)",
            archs.resnet50_cifar,
        ),
        ModelEntry(
            "resnet56_cifar",
            "cnn",
            "pbkit",
            32,
            10,
            "ResNet-56, He et al. CIFAR ResNet (16-32-64)",
            archs.resnet56_cifar,
        ),
        ModelEntry(
            "resnet20_cifar",
            "cnn",
            "pbkit",
            32,
            10,
            "ResNet-20, He et al. CIFAR ResNet (small, for tests)",
            archs.resnet20_cifar,
        ),
        ModelEntry(
            "vgg19_cifar",
            "cnn",
            "pbkit",
            32,
            100,
            "VGG-19-BN, one linear classifier (study: CIFAR-100)",
            archs.vgg19_cifar,
        ),
    ]
}


@dataclass(frozen=True)
class YoloEntry:
    """A YOLO name's metadata: its family (yolov8 | yolo11 | yolo26), scale, ultralytics task
    (detect | segment | pose) and what sets the family apart."""

    name: str
    family: str
    size: str
    task: str
    description: str


_YOLO_FAMILY = {
    "yolov8": ("YOLOv8", "C2f blocks, DFL boxes, NMS"),
    "yolo11": ("YOLO11", "C3k2 blocks, C2PSA attention, DFL boxes, NMS"),
    "yolo26": ("YOLO26", "C3k2 blocks, C2PSA attention, end-to-end NMS-free head, no DFL"),
}
_YOLO_TASK = {
    "": ("detect", "detection"),
    "-seg": ("segment", "instance segmentation (boxes + masks)"),
    "-pose": ("pose", "pose (boxes + 17 keypoints)"),
}
_STUDY = {"yolov8": "yolov8m", "yolo11": "yolo11m", "yolo26": "yolo26m"}
YOLO_ENTRIES: dict[str, YoloEntry] = {
    f"{f}{s}{v}": YoloEntry(
        f"{f}{s}{v}",
        f,
        s,
        task,
        f"{title}-{s} {words} ({blocks}), ultralytics' own yaml, 640x640, 80 classes"
        + (f" (study: {_STUDY[f]} on COCO)" if v == "" else ""),
    )
    for f, (title, blocks) in _YOLO_FAMILY.items()
    for v, (task, words) in _YOLO_TASK.items()
    for s in "nsmlx"
}
# name -> description (`pbkit list models`)
YOLO_MODELS = {n: e.description for n, e in YOLO_ENTRIES.items()}

PREFIXES = {
    "tv:": (
        "any torchvision classification model, e.g. tv:resnet50 (224x224, 1000 classes); its"
        " segmentation models too, e.g. tv:lraspp_mobilenet_v3_large (520x520, 21 classes)"
    ),
    "timm:": "any timm model, e.g. timm:vit_small_patch16_224 (224x224, 1000 classes)",
    "timmseg:": (
        "a timm ViT backbone with a light segmentation head, e.g. timmseg:vit_tiny_patch16_224 "
        "(224x224, 21 classes)"
    ),
}

# Models from outside pbkit's names, as `pbkit list models` shows them (the source's description).
USER_PATTERNS = {
    "path/to/net.py:build": (
        "a function in a Python file that returns an nn.Module (model.kwargs are its arguments); "
        "pbkit runs the file"
    ),
    "my_pkg.models:build": (
        "a function named by an import path (an installed package, or a folder on PYTHONPATH)"
    ),
    "model.pt": (
        "a whole pickled nn.Module (torch.save(model)); loading it runs code from the file: --trust"
    ),
    "best.pt": (
        "an ultralytics checkpoint (yolo train): detection, -seg or -pose, any classes and input"
        " size; --trust"
    ),
}

# Families a zoo run (benchmarks/zoo.py, results/perf/zoo-*.md) found not to prune here: the
# pattern, the name that was tried, and the reason a user can act on. `pbkit list models` marks them
# and `pbkit prune` says so before it tries (under the memory and time budgets, which stop it in one
# line). (tv:resnext101_64x4d was one until its grouped convolutions left with one input channel per
# group were kept from torch-pruning's importance: pbkit/pruning/repairs/graph.py; tv:vit_h_14 until
# the memory budget stopped counting memory the allocator keeps freed and the graph kept no
# activation: pbkit/core/budget.py, repairs/graph.py; timm:coatnext_nano_rw_224 with those).
# tests/test_cli.py holds this list to the failures of the committed zoo tables.
_SLOW = "pruning it stays within 10 GiB but runs past the zoo's 480 s on 2 CPU cores"
_GRAPH = "torch-pruning's dependency graph of it runs past the zoo's 150 s"
_PARITY = (
    "it prunes (1.5x), but the ONNX export of the dense model already misses fp32 parity with"
    " random weights"
)
KNOWN_FAILURES: list[tuple[re.Pattern[str], str, str]] = [
    (
        re.compile(r"^timm:aimv2_(1b|3b)_"),
        "timm:aimv2_1b_patch14_224",
        f"a 1.2B-parameter ViT: {_SLOW}",
    ),
    (
        re.compile(r"^timm:deepseek_vit_"),
        "timm:deepseek_vit_412m",
        (
            f"{_GRAPH} even with its 32 attention blocks held fixed; raise prune.max_graph_s to"
            " wait longer"
        ),
    ),
    (
        re.compile(r"^timm:edgenext_"),
        "timm:edgenext_small",
        (
            "torch-pruning maps the channels of its cross-covariance attention wrong (a step"
            " fails), and with those blocks held fixed its dependency graph runs past the zoo's"
            " 150 s"
        ),
    ),
    (
        re.compile(r"^timm:efficientnetv2_rw_t$"),
        "timm:efficientnetv2_rw_t",
        f"{_PARITY} (max error 0.63 on logits near 1e3); not checked with trained weights",
    ),
    (
        re.compile(r"^timm:efficientvim_"),
        "timm:efficientvim_m1",
        (
            f"{_GRAPH} (its state-space mixers hold parameters the graph cannot see); raise"
            " prune.max_graph_s to wait longer"
        ),
    ),
    (
        re.compile(r"^timm:gcvit_"),
        "timm:gcvit_tiny",
        (
            "its attention takes its width from its input and a global query from another branch:"
            " it can be neither traced nor held fixed"
        ),
    ),
    (
        re.compile(r"^timm:gemma4_vit_"),
        "timm:gemma4_vit_167m",
        (
            "it prunes (1.5x at 768 px within 3.4 GiB), but torch's ONNX exporter writes an invalid"
            " graph of the dense model (ONNX Runtime rejects it)"
        ),
    ),
    (
        re.compile(r"^timm:(hieradet_|sam2_hiera_)"),
        "timm:hieradet_small",
        (
            "its blocks partition windows around their attention in channels-last layout: the"
            " dependency graph runs past the zoo's budgets even with the attention held fixed"
        ),
    ),
    (
        re.compile(r"^timm:iformer_"),
        "timm:iformer_t",
        f"{_GRAPH}; raise prune.max_graph_s to wait longer",
    ),
    (
        re.compile(r"^timm:samvit_"),
        "timm:samvit_base_patch16",
        f"a ViT at 1024x1024: {_SLOW}; give it longer, or prune it at a smaller model.input_size",
    ),
    (
        re.compile(r"^timm:visformer_tiny$"),
        "timm:visformer_tiny",
        f"{_PARITY} (max error 0.06); not checked with trained weights",
    ),
]


def known_failure(name: str) -> str | None:
    """Why ``name`` is known not to prune here (with the name that was tried), or None."""
    for pattern, tried, reason in KNOWN_FAILURES:
        if pattern.match(name):
            return reason + ("" if name == tried else f" (tried: {tried})")
    return None


_VIT_NAME = re.compile(r"^(vit|swin|maxvit|deit|beit|eva|cait|convit|xcit|levit|pvt|twins)")


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def timm_names() -> list[str]:
    import timm

    return sorted(timm.list_models())


def classifier_heads(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """Layers that produce the class logits: never pruned.

    timm's ``get_classifier()`` when present, else every Linear with ``num_classes`` outputs, else a
    1x1 convolution with ``num_classes`` outputs (SqueezeNet-style heads).
    """
    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
            return [head]
    heads: list[nn.Module] = [
        m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes
    ]
    if not heads:
        heads = [
            m
            for m in model.modules()
            if isinstance(m, nn.Conv2d)
            and m.out_channels == num_classes
            and m.kernel_size == (1, 1)
        ]
    return heads
