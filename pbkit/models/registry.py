"""Models by name: one registry, ``create_model(name)``, everything discoverable with ``pbkit
list``. Each entry carries its metadata: family (cnn, vit, yolo), source, input size, classes and
the task it serves (classify, detect), which picks the :mod:`pbkit.tasks` implementation.

Names:
- the study's CIFAR variants (``resnet18_cifar``, ``resnet50_cifar``, ``resnet56_cifar``,
  ``vgg19_cifar``, plus the small ``resnet20_cifar``), 32x32 input;
- ``tv:<name>``: any torchvision classification model (``tv:resnet50``);
- ``timm:<name>``: any timm model (``timm:vit_small_patch16_224``);
- ``yolov8{n,s,m,l,x}``: ultralytics detectors (:mod:`pbkit.models.yolo`);
- ``tv:<name>`` of torchvision's segmentation models and ``timmseg:<vit>``: segmentation
  (:mod:`pbkit.models.segment`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pbkit.core.errors import PbkitError, choices_error
from pbkit.models import archs, segment


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

YOLO_MODELS = {
    f"yolov8{s}": f"YOLOv8-{s}, ultralytics' own yaml, 640x640, 80 classes (study: yolov8m on COCO)"
    for s in "nsmlx"
}

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

# Families a zoo run (benchmarks/zoo.py, results/perf/zoo-*.md) found not to prune here: the
# pattern, the name that was tried, and the reason a user can act on. `pbkit list models` marks them
# and `pbkit prune` says so before it tries (under the memory and time budgets, which stop it in one
# line). (tv:resnext101_64x4d was one until its grouped convolutions left with one input channel per
# group were kept from torch-pruning's importance: pbkit/prune/graphfix.py; tv:vit_h_14 until the
# memory budget stopped counting memory the allocator keeps freed and the graph kept no activation:
# pbkit/core/budget.py, graphfix.shapes_only; timm:coatnext_nano_rw_224 with those).
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


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model's dense architecture (no weights)."""

    name: str
    num_classes: int
    input_size: int
    family: str
    source: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    task: str = "classify"  # the pbkit.tasks implementation that trains, evaluates and protects it

    def to_dict(self) -> dict[str, Any]:
        return dict(
            name=self.name,
            num_classes=self.num_classes,
            input_size=self.input_size,
            family=self.family,
            source=self.source,
            kwargs=dict(self.kwargs),
            task=self.task,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        task = d.get("task") or (
            "detect" if d.get("source") == "ultralytics" else "classify"
        )  # older files
        return cls(
            **{k: d[k] for k in ("name", "num_classes", "input_size", "family", "source")},
            kwargs=dict(d.get("kwargs") or {}),
            task=task,
        )


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def timm_names() -> list[str]:
    import timm

    return sorted(timm.list_models())


def resolve(
    name: str,
    num_classes: int | None = None,
    input_size: int | None = None,
    kwargs: dict[str, Any] | None = None,
) -> ModelSpec:
    """Check that ``name`` exists and fill in its defaults; raise a one-line error otherwise."""
    kwargs = dict(kwargs or {})
    if name in MODELS:
        e = MODELS[name]
        return ModelSpec(
            name,
            num_classes or e.num_classes,
            input_size or e.input_size,
            e.family,
            e.source,
            kwargs,
            task=e.task,
        )
    if name.startswith("yolov8"):
        from pbkit.models import yolo

        yolo.size_of(name)  # a clear error for an unknown size
        return ModelSpec(
            name,
            num_classes or 80,
            input_size or yolo.INPUT_SIZE,
            "yolo",
            "ultralytics",
            kwargs,
            task="detect",
        )
    if name.startswith("tv:") and name[3:] in segment.torchvision_names():
        return ModelSpec(
            name, num_classes or 21, input_size or 520, "cnn", "torchvision", kwargs, task="segment"
        )
    if name.startswith("timmseg:"):
        import timm

        short = name[8:]
        if not timm.is_model(short) or not _VIT_NAME.match(short):
            raise PbkitError(
                f"timmseg: takes a timm ViT ({short!r} is not one; e.g."
                " timmseg:vit_tiny_patch16_224)"
            )
        return ModelSpec(
            name,
            num_classes or 21,
            input_size or _timm_default_size(short),
            "vit",
            "timm",
            kwargs,
            task="segment",
        )
    if name.startswith("tv:"):
        short = name[3:]
        if short not in torchvision_names():
            raise PbkitError(
                f"unknown torchvision classification model {short!r} (see `pbkit list models"
                " --json` for the names)"
            )
        family = "vit" if _VIT_NAME.match(short) else "cnn"
        return ModelSpec(
            name,
            num_classes or 1000,
            input_size or _tv_default_size(short),
            family,
            "torchvision",
            kwargs,
        )
    if name.startswith("timm:"):
        import timm

        short = name[5:]
        if not timm.is_model(short):
            raise PbkitError(
                f"unknown timm model {short!r} (see `pbkit list models --json` for the names)"
            )
        size = input_size or int(kwargs.get("img_size") or _timm_default_size(short))
        family = "vit" if _VIT_NAME.match(short) else "cnn"
        return ModelSpec(name, num_classes or 1000, size, family, "timm", kwargs)
    raise choices_error("model", name, [*MODELS, *YOLO_MODELS, *(p + "<name>" for p in PREFIXES)])


def _tv_default_size(short: str) -> int:
    """The model's own input size: the crop its default weights were evaluated at (EfficientNet-B7
    600, ViT-H/14 518, Inception 299, most 224)."""
    from torchvision.models import get_model_weights

    try:
        crop = get_model_weights(short).DEFAULT.transforms.keywords.get("crop_size")
    except (AttributeError, ValueError, KeyError):
        crop = None
    return int(crop[0] if isinstance(crop, (list, tuple)) else crop) if crop else 224


def _timm_default_size(short: str) -> int:
    import timm

    cfg = timm.models.get_pretrained_cfg(short)
    size = getattr(cfg, "input_size", None) if cfg is not None else None
    return int(size[-1]) if size else 224


def build(
    spec: ModelSpec,
    pretrained: bool = False,
    seed: int = 0,
    load: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """Build the model as pbkit prunes it: the dense architecture (seeded random init, or the hub's
    pretrained weights), ``load`` applied to it (user weights in the original layout), then
    ``prepare``d (YOLOv8: C2f made prunable)."""
    model = _build_dense(spec, pretrained, seed)
    if load is not None:
        load(model)
    return prepare(model, spec)


def prepare(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """Pruning-friendly, function-preserving rewrites of an architecture (YOLOv8's C2f, torchvision
    Swin's window attention, MaxViT's attention, ShuffleNetV2's channel shuffle, timm's mixed
    depth-wise convolutions)."""
    if spec.source == "ultralytics":
        from pbkit.models import yolo

        return yolo.make_prunable(model)
    if spec.name.startswith("tv:swin_"):
        from pbkit.models import swin

        return swin.make_prunable(model)  # widths read from the weights (the same outputs)
    if spec.name.startswith("tv:maxvit_"):
        from pbkit.models import maxvit

        return maxvit.make_prunable(
            model
        )  # attention widths read from the weights (the same outputs)
    if spec.name.startswith("tv:shufflenet_v2_"):
        from pbkit.models import shufflenet

        return shufflenet.make_prunable(
            model
        )  # its channel shuffle a module of its own (the same outputs)
    if spec.name.startswith("timm:swinv2_") and not spec.name.startswith("timm:swinv2_cr"):
        from pbkit.models import swin

        return swin.make_timm_prunable(model)
    if spec.source == "timm" and any(type(m).__name__ == "MixedConv2d" for m in model.modules()):
        from pbkit.models import mixconv

        return mixconv.make_prunable(
            model
        )  # its depth-wise mixed convolutions prune channel by channel
    return model


def _build_dense(spec: ModelSpec, pretrained: bool, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if spec.task == "segment":
        return _fetching(
            spec,
            pretrained,
            lambda: segment.build(
                spec.name, spec.num_classes, spec.input_size, pretrained, spec.kwargs
            ),
        )
    if spec.source == "pbkit":
        if pretrained:
            raise PbkitError(
                f"no pretrained weights are published for {spec.name}; "
                "pass a checkpoint (weights=checkpoint) or train a base (base.epochs > 0)"
            )
        return MODELS[spec.name].builder(num_classes=spec.num_classes, **spec.kwargs)
    if spec.source == "ultralytics":
        from pbkit.models import weights, yolo

        model = yolo.build(spec.name, spec.num_classes)
        if pretrained:  # the official file, explicitly asked for: a pickled ultralytics checkpoint
            weights.load_state(
                model, weights.read_file(yolo.pretrained_file(spec.name), trust=True), spec.name
            )
        return model
    return _fetching(spec, pretrained, lambda: _build_hub(spec, pretrained))


def _build_hub(spec: ModelSpec, pretrained: bool) -> nn.Module:
    if spec.source == "torchvision":
        import torchvision

        if pretrained and spec.num_classes != 1000:
            raise PbkitError(
                f"{spec.name}: pretrained torchvision weights have 1000 classes, not"
                f" {spec.num_classes}"
            )
        kw = dict(spec.kwargs)
        if not pretrained and spec.name.startswith("tv:vit_") and "image_size" not in kw:
            kw["image_size"] = spec.input_size  # its position embedding is sized for the input
        return torchvision.models.get_model(
            spec.name[3:],
            weights="DEFAULT" if pretrained else None,
            num_classes=spec.num_classes,
            **kw,
        )
    import timm

    kw = dict(spec.kwargs)
    if spec.input_size and "img_size" not in kw and spec.family == "vit":
        default = _timm_default_size(spec.name[5:])
        if spec.input_size != default:
            kw["img_size"] = spec.input_size
    return timm.create_model(
        spec.name[5:], pretrained=pretrained, num_classes=spec.num_classes, **kw
    )


def _fetching(spec: ModelSpec, pretrained: bool, make: Callable[[], nn.Module]) -> nn.Module:
    """Build a hub model; what goes wrong (offline weights, bad kwargs) is one line."""
    try:
        return make()
    except PbkitError:
        raise
    except (OSError, RuntimeError, ConnectionError) as e:
        if pretrained:
            raise PbkitError(
                f"could not fetch pretrained weights for {spec.name} (offline?): "
                f"{type(e).__name__}; download them elsewhere and pass weights=checkpoint "
                "with model.checkpoint=<file>"
            ) from e
        raise PbkitError(f"could not build {spec.name}: {e}") from e
    except TypeError as e:
        raise PbkitError(f"could not build {spec.name} with kwargs {spec.kwargs}: {e}") from e


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
