"""Weights from files, read without running code from them: state dicts (plain or wrapped), the
tensors of a pickled module only when the file is trusted, and a format-independent hash."""

from __future__ import annotations

import hashlib
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pbkit.core.errors import PbkitError, first_line


def read_file(path: str | Path, trust: bool = False) -> Any:
    """Read a checkpoint file safely; every failure becomes one clear line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PbkitError(f"checkpoint {str(path)!r} not found")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols, on stderr
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e) and "Unsupported global" not in str(e):
            reason = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
            raise PbkitError(
                f"checkpoint {str(path)!r} is corrupt or not a PyTorch file ({reason}); if it "
                "is a pickle you trust, pass --trust (unpickling runs code from the file; "
                "model.trust_checkpoint=true)"
            ) from e
        if "Unsupported global" in str(e):
            raise PbkitError(
                f"checkpoint {str(path)!r} holds pickled Python objects, which pbkit does not "
                "load by default (unpickling runs code from the file); if you trust it, pass "
                "--trust (model.trust_checkpoint=true)"
            ) from e
        raise PbkitError(
            f"checkpoint {str(path)!r} is corrupt or not a PyTorch file ({first_line(e)})"
        ) from e
    except PbkitError:
        raise
    except (ImportError, ModuleNotFoundError) as e:  # a trusted pickle of classes not installed
        raise PbkitError(
            f"checkpoint {str(path)!r} needs a module that is not installed here ({first_line(e)})"
        ) from e
    except Exception as e:  # (a text file, random bytes: KeyError, ValueError, zip errors, ...)
        raise PbkitError(
            f"checkpoint {str(path)!r} is corrupt or not a PyTorch file ({first_line(e)})"
        ) from e


def load_state(model: nn.Module, obj: Any, where: str) -> None:
    """Load a (wrapped) state dict, or a pickled module's state, into a dense model."""
    if isinstance(obj, dict):
        for key in ("ema", "model", "state_dict", "model_state_dict", "net"):
            if isinstance(obj.get(key), dict | nn.Module):
                obj = obj[key]
                break
    if isinstance(obj, nn.Module):
        obj = obj.float().state_dict()
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PbkitError(f"checkpoint {where!r} holds no state dict of tensors")
    obj = {k.removeprefix("module."): v for k, v in obj.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(obj))
    unexpected = sorted(set(obj) - set(own))
    wrong = sorted(k for k, v in obj.items() if k in own and own[k].shape != v.shape)
    if missing or unexpected or wrong:
        raise PbkitError(
            f"checkpoint {where!r} does not fit the model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]}"
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in obj.items()}, strict=True)


def state_sha256(model: nn.Module) -> str:
    """A hash of the weights themselves (names, shapes, dtypes, bytes), independent of file
    format."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """Draw ``model``'s weights afresh, seeded, keeping its architecture (a pruned model becomes the
    small-dense model of the scratch baseline, never a masked large one): every module's own
    ``reset_parameters`` (convolutions, linear layers, norms with their running statistics), and
    N(0, 0.02) truncated at 2 std for parameters a module holds without one (ViT position
    embeddings and tokens)."""
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        elif hasattr(module, "reset_running_stats"):
            module.reset_running_stats()
        else:
            for p in module.parameters(recurse=False):
                with torch.no_grad():
                    nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04)
    return model
