"""Models: the registry (names, metadata, building), the CIFAR architectures, YOLOv8 made
prunable, model files that reload pruned models, weights from files, MACs and parameter counts."""

from pbkit.models.registry import (
    KNOWN_FAILURES,
    MODELS,
    PREFIXES,
    YOLO_MODELS,
    ModelEntry,
    ModelSpec,
    build,
    classifier_heads,
    known_failure,
    prepare,
    resolve,
    timm_names,
    torchvision_names,
)

__all__ = [
    "KNOWN_FAILURES",
    "MODELS",
    "PREFIXES",
    "YOLO_MODELS",
    "ModelEntry",
    "ModelSpec",
    "build",
    "classifier_heads",
    "known_failure",
    "prepare",
    "resolve",
    "timm_names",
    "torchvision_names",
]
