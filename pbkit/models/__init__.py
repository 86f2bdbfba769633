"""Models: the registry's names (:mod:`.registry`), every source a model can come from, the user's
own included (:mod:`.sources`), the CIFAR architectures, YOLOv8 made prunable, model files that
reload pruned models, weights from files, MACs and parameter counts."""

from pbkit.models.registry import (
    KNOWN_FAILURES,
    MODELS,
    PREFIXES,
    USER_PATTERNS,
    YOLO_MODELS,
    ModelEntry,
    classifier_heads,
    known_failure,
    timm_names,
    torchvision_names,
)
from pbkit.models.sources import build, prepare, resolve
from pbkit.models.spec import ModelSpec, Origin

__all__ = [
    "KNOWN_FAILURES",
    "MODELS",
    "PREFIXES",
    "USER_PATTERNS",
    "YOLO_MODELS",
    "ModelEntry",
    "ModelSpec",
    "Origin",
    "build",
    "classifier_heads",
    "known_failure",
    "prepare",
    "resolve",
    "timm_names",
    "torchvision_names",
]
