"""Saving and loading models, pruned or dense, without running code from the file.

A pbkit model file is a ``torch.save`` of plain containers, tensors and numbers:
``{"format": "pbkit-model/1", "spec": ModelSpec dict, "modules": {module_name: {attr: value}},
"state": state_dict, "buffers": {name: tensor}}``. Loading rebuilds the dense architecture from the
spec, writes the saved per-module attributes (channel counts, ``num_heads``, ...) and swaps in
tensors of the saved shapes, so a pruned model reloads in a fresh process although it no longer
matches its class. ``buffers`` holds the non-persistent buffers the state dict leaves out (a blur
pool's per-channel filter, cut with its channels); files written before it existed load as before.
Every file is read with ``torch.load(weights_only=True)``: no unrestricted unpickling.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pbkit.core.errors import PbkitError
from pbkit.core.fileio import atomic_write
from pbkit.core.runtime import ultralytics_offline
from pbkit.models import registry as models
from pbkit.models.weights import load_state, read_file

FORMAT = "pbkit-model/1"
_PRIMITIVE = (int, float, bool, str, type(None))


def _plain(value: Any) -> bool:
    """Exactly builtin scalars, or tuples/lists of them (no subclasses: enums, torch.Size, ...)."""
    if type(value) in _PRIMITIVE:
        return True
    if type(value) in (tuple, list):
        return all(type(v) in _PRIMITIVE for v in value)
    return False


def module_attributes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Plain attributes of every module (in_channels, num_features, num_heads, head_dim, ...)."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        attrs = {
            k: v
            for k, v in vars(m).items()
            if not k.startswith("_") and k != "training" and _plain(v)
        }
        if attrs:
            out[name] = attrs
    return out


def non_persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The buffers ``state_dict`` leaves out, by their state-dict-style names."""
    return {
        f"{name}.{b}" if name else b: t
        for name, m in model.named_modules()
        for b, t in m._buffers.items()
        if t is not None and b in m._non_persistent_buffers_set
    }


def save_model(
    model: nn.Module, spec: models.ModelSpec, path: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    payload = {
        "format": FORMAT,
        "spec": spec.to_dict(),
        "modules": module_attributes(model),
        "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "buffers": {k: v.detach().cpu().clone() for k, v in non_persistent_buffers(model).items()},
        "extra": extra or {},
    }
    return atomic_write(path, lambda p: torch.save(payload, p))


def is_model_file(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def load_model(path: str | Path) -> tuple[nn.Module, models.ModelSpec, dict[str, Any]]:
    """Load a pbkit model file (dense or pruned) into a fresh, working module."""
    obj = read_file(path)
    if not is_model_file(obj):
        raise PbkitError(f"{str(path)!r} is not a pbkit model file (format {FORMAT})")
    spec = models.ModelSpec.from_dict(obj["spec"])
    model = models.build(spec, pretrained=False)
    apply_file(model, obj, str(path))
    model.eval()
    return model, spec, obj.get("extra", {})


def apply_file(model: nn.Module, obj: dict[str, Any], where: str) -> None:
    """Reshape ``model`` in place to the saved attributes and tensors. A module shared between
    two places (CoaT's convolutional position encodings) is found under each of its names, as the
    state dict lists its tensors under each."""
    named = dict(model.named_modules(remove_duplicate=False))
    for name, attrs in obj["modules"].items():
        m = named.get(name)
        if m is None:
            raise PbkitError(f"{where}: module {name!r} does not exist in {obj['spec']['name']}")
        for k, v in attrs.items():
            setattr(
                m,
                k,
                tuple(v) if isinstance(v, list) and isinstance(getattr(m, k, None), tuple) else v,
            )
    state = obj["state"]
    for key, tensor in [*state.items(), *obj.get("buffers", {}).items()]:
        owner_name, _, leaf = key.rpartition(".")
        owner = named.get(owner_name)
        if owner is None:
            raise PbkitError(f"{where}: tensor {key!r} has no module in {obj['spec']['name']}")
        if leaf in owner._parameters:
            old = owner._parameters[leaf]
            owner._parameters[leaf] = nn.Parameter(
                tensor.clone(), requires_grad=old.requires_grad if old is not None else True
            )
        elif leaf in owner._buffers:
            owner._buffers[leaf] = tensor.clone()
        else:
            raise PbkitError(f"{where}: tensor {key!r} is neither a parameter nor a buffer")
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise PbkitError(f"{where}: file lacks tensors {sorted(missing)[:3]}...")


def load_base(
    spec: models.ModelSpec, path: str | Path, trust: bool = False, seed: int = 0
) -> nn.Module:
    """Build ``spec`` with the user's weights: a pbkit model file, a state dict (possibly wrapped:
    ``state_dict``, ``model``, ``ema``...), or, trusted, a pickled model (ultralytics ``.pt``)."""
    # a trusted ultralytics .pt imports ultralytics while it is unpickled: keep that offline
    with ultralytics_offline() if spec.source == "ultralytics" else contextlib.nullcontext():
        obj = read_file(path, trust=trust)
    if is_model_file(obj):
        model = models.build(spec, seed=seed)
        apply_file(model, obj, str(path))
        return model
    return models.build(spec, seed=seed, load=lambda m: load_state(m, obj, str(path)))
