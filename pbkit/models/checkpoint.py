"""Saving and loading models, pruned or dense, without running code from the file.

A pbkit model file is a ``torch.save`` of plain containers, tensors and numbers:
``{"format": "pbkit-model/1", "spec": ModelSpec dict, "modules": {module_name: {attr: value}},
"state": state_dict, "buffers": {name: tensor}}``. Loading rebuilds the dense architecture from the
spec, writes the saved per-module attributes (channel counts, ``num_heads``, ...) and swaps in
tensors of the saved shapes, so a pruned model reloads in a fresh process although it no longer
matches its class. ``buffers`` holds the non-persistent buffers the state dict leaves out (a blur
pool's per-channel filter, cut with its channels); files written before it existed load as before.
Every file is read with ``torch.load(weights_only=True)``: no unrestricted unpickling.

A model whose source is a pickled module (``--model model.pt``, or a module handed to the Python
API) has no architecture pbkit can rebuild from a spec: its file holds the module itself, pickled
(``"pickled": bytes``, classes of a ``__main__`` pickled by value), next to the spec. Reading that
runs code from the file, so :func:`load_model` refuses it unless the caller says it trusts the file.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pbkit.core.errors import PbkitError, first_line
from pbkit.core.fileio import atomic_write
from pbkit.models.sources import TRUST_HINT, build
from pbkit.models.spec import ModelSpec
from pbkit.models.ultralytics_env import ultralytics_offline
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
    model: nn.Module, spec: ModelSpec, path: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    payload: dict[str, Any] = {"format": FORMAT, "spec": spec.to_dict(), "extra": extra or {}}
    if spec.origin is not None and spec.origin.pickled:
        payload["pickled"] = pickled(model)
    else:
        payload.update(
            modules=module_attributes(model),
            state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            buffers={k: v.detach().cpu().clone() for k, v in non_persistent_buffers(model).items()},
        )
    return atomic_write(path, lambda p: torch.save(payload, p))


def pickled(model: nn.Module) -> bytes:
    """``model`` as ``torch.save`` bytes (loaded onto the CPU). Classes another interpreter could
    not import (defined in a script or a notebook's ``__main__``, or in a module loaded from a file
    path) are pickled by value (cloudpickle), so a fresh process can load them."""
    import io

    from ray import cloudpickle

    by_value = [sys.modules[n] for n in _unimportable(model)]
    for module in by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        buf = io.BytesIO()
        torch.save(model, buf, pickle_module=cloudpickle)
    finally:
        for module in by_value:
            cloudpickle.unregister_pickle_by_value(module)
    return buf.getvalue()


def _unimportable(model: nn.Module) -> list[str]:
    """The modules defining ``model``'s classes that a fresh interpreter would not find on its path
    (``__main__`` aside: cloudpickle pickles that by value itself)."""
    import os
    from importlib.machinery import PathFinder

    # a fresh `python -m ...` searches its working folder, PYTHONPATH and the installation's own
    # folders; not what this process added to sys.path while it ran
    roots = (sys.prefix, sys.base_prefix, sys.exec_prefix)
    fresh = [os.getcwd(), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    fresh += [p for p in sys.path if p and p.startswith(roots)]

    def findable(top: str) -> bool:
        for finder in sys.meta_path:  # (an editable install is found by a finder of its own)
            try:
                found = (
                    PathFinder.find_spec(top, fresh)
                    if finder is PathFinder
                    else finder.find_spec(top, None)
                )
            except Exception:
                continue
            if found is not None:
                return True
        return False

    names = {type(m).__module__ for m in model.modules()}
    return sorted(
        n for n in names if n != "__main__" and n in sys.modules and not findable(n.split(".")[0])
    )


def unpickled(data: bytes, where: str) -> nn.Module:
    import io

    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as e:
        raise PbkitError(f"{where}: its pickled model does not load: {first_line(e)}") from e
    if not isinstance(obj, nn.Module):
        raise PbkitError(f"{where}: its pickled model is a {type(obj).__name__}, not a module")
    return obj


def is_model_file(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def load_model(
    path: str | Path, trust: bool = False
) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Load a pbkit model file (dense or pruned) into a fresh, working module. A file that holds a
    pickled module loads only with ``trust`` (its code runs)."""
    obj = read_file(path)
    if not is_model_file(obj):
        raise PbkitError(f"{str(path)!r} is not a pbkit model file (format {FORMAT})")
    spec = ModelSpec.from_dict(obj["spec"])
    if "pickled" in obj:
        if not trust:
            source = spec.origin.describe() if spec.origin else spec.name
            raise PbkitError(
                f"{str(path)!r} holds a pickled model ({source}): loading it runs code from the "
                f"file; {TRUST_HINT}"
            )
        model = unpickled(obj["pickled"], str(path))
    else:
        model = build(spec, pretrained=False)
        apply_file(model, obj, str(path))
    model.eval()
    return model, spec, obj.get("extra", {})


def holds_pickle(path: str | Path) -> bool:
    """Whether a pbkit model file holds a pickled module (loading it needs trust)."""
    obj = read_file(path)
    return is_model_file(obj) and "pickled" in obj


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


def load_base(spec: ModelSpec, path: str | Path, trust: bool = False, seed: int = 0) -> nn.Module:
    """Build ``spec`` with the user's weights: a pbkit model file, a state dict (possibly wrapped:
    ``state_dict``, ``model``, ``ema``...), or, trusted, a pickled model (ultralytics ``.pt``)."""
    # a trusted ultralytics .pt imports ultralytics while it is unpickled: keep that offline
    with ultralytics_offline() if spec.source == "ultralytics" else contextlib.nullcontext():
        obj = read_file(path, trust=trust)
    if is_model_file(obj):
        if "pickled" in obj:
            return unpickled(obj["pickled"], str(path)) if trust else load_model(path)[0]
        model = build(spec, seed=seed)
        apply_file(model, obj, str(path))
        return model
    return build(spec, seed=seed, load=lambda m: load_state(m, obj, str(path)))
