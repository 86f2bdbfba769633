"""Model sources: one table of handlers that turn a model's name into a :class:`ModelSpec` and build
its dense architecture (timm's ``create_model(name)``, for every kind of model pbkit prunes).

Each :class:`Source` says which names it takes (``matches``), resolves one into a spec with the
model's defaults (``resolve``: classes, input size, family, task) and builds the architecture
(``build``). The first source that matches a name owns it (:data:`SOURCES`, in order):

- pbkit's registry (``resnet18_cifar``), ultralytics' yamls (``yolov8n``), torchvision (``tv:``,
  segmentation models included), timm (``timm:``, ``timmseg:``);
- the user's own: ``path/to/net.py:build`` (a function in a Python file; pbkit runs the file),
  ``my_pkg.models:build`` (an import path), ``model.pt`` (a whole pickled module, or a checkpoint
  that ``yolo train`` wrote), and ``object:<Class>@<sha>`` (a module handed to the Python API,
  :func:`registered`).

A user's model tells pbkit what it is by running: a forward pass at the input size gives the
number of classes (classification: ``(N, classes)``; segmentation: ``(N, classes, H, W)``). What
it cannot tell (the input size of a model from a file) is asked for in one line.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from pbkit.core.errors import PbkitError, choices_error, first_line
from pbkit.core.fileio import sha256_file
from pbkit.models import segment
from pbkit.models.registry import _VIT_NAME, MODELS, PREFIXES, USER_PATTERNS, YOLO_MODELS
from pbkit.models.spec import ModelSpec, Origin
from pbkit.models.ultralytics_env import ultralytics_offline

TASKS = ("classify", "detect", "segment")
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".ckpt")
TRUST_HINT = "pass --trust (model.trust_checkpoint=true) if you trust it"


@dataclass(frozen=True)
class Hints:
    """What the configuration says about a model beyond its name (None: the model's own)."""

    num_classes: int | None = None
    input_size: int | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    task: str | None = None
    trust: bool = False  # unpickling allowed (a pickled module, an ultralytics checkpoint)


@dataclass(frozen=True)
class Source:
    key: str
    matches: Callable[[str], bool]
    resolve: Callable[[str, Hints], ModelSpec]
    build: Callable[[ModelSpec, bool], nn.Module]  # (spec, pretrained) -> the dense architecture


# ------------------------------------------------------------------------------------------------
# pbkit's own names and the hubs


def _registry(name: str, h: Hints) -> ModelSpec:
    e = MODELS[name]
    return ModelSpec(
        name,
        h.num_classes or e.num_classes,
        h.input_size or e.input_size,
        e.family,
        e.source,
        dict(h.kwargs),
        task=e.task,
    )


def _build_registry(spec: ModelSpec, pretrained: bool) -> nn.Module:
    if pretrained:
        raise PbkitError(
            f"no pretrained weights are published for {spec.name}; "
            "pass a checkpoint (weights=checkpoint) or train a base (base.epochs > 0)"
        )
    builder = MODELS[spec.name].builder
    return _call(builder, spec.kwargs, spec.num_classes, spec.name)


def _yolo(name: str, h: Hints) -> ModelSpec:
    from pbkit.models import yolo

    yolo.parse(name)  # a clear error for an unknown size or variant
    return ModelSpec(
        name,
        h.num_classes or 80,
        h.input_size or yolo.INPUT_SIZE,
        "yolo",
        "ultralytics",
        dict(h.kwargs),
        task="detect",
    )


def _build_yolo(spec: ModelSpec, pretrained: bool) -> nn.Module:
    from pbkit.models import weights, yolo

    model = yolo.build(spec.name, spec.num_classes)
    if pretrained:  # the official file, explicitly asked for: a pickled ultralytics checkpoint
        weights.load_state(
            model, weights.read_file(yolo.pretrained_file(spec.name), trust=True), spec.name
        )
    return model


def _tv_segment(name: str, h: Hints) -> ModelSpec:
    return ModelSpec(
        name,
        h.num_classes or 21,
        h.input_size or 520,
        "cnn",
        "torchvision",
        dict(h.kwargs),
        task="segment",
    )


def _timmseg(name: str, h: Hints) -> ModelSpec:
    import timm

    short = name[8:]
    if not timm.is_model(short) or not _VIT_NAME.match(short):
        raise PbkitError(
            f"timmseg: takes a timm ViT ({short!r} is not one; e.g. timmseg:vit_tiny_patch16_224)"
        )
    return ModelSpec(
        name,
        h.num_classes or 21,
        h.input_size or _timm_default_size(short),
        "vit",
        "timm",
        dict(h.kwargs),
        task="segment",
    )


def _build_segment(spec: ModelSpec, pretrained: bool) -> nn.Module:
    return _fetching(
        spec,
        pretrained,
        lambda: segment.build(
            spec.name, spec.num_classes, spec.input_size, pretrained, spec.kwargs
        ),
    )


def _tv(name: str, h: Hints) -> ModelSpec:
    from pbkit.models.registry import torchvision_names

    short = name[3:]
    if short not in torchvision_names():
        raise PbkitError(
            f"unknown torchvision classification model {short!r} (see `pbkit list models --json`"
            " for the names)"
        )
    family = "vit" if _VIT_NAME.match(short) else "cnn"
    size = h.input_size or _tv_default_size(short)
    return ModelSpec(name, h.num_classes or 1000, size, family, "torchvision", dict(h.kwargs))


def _build_tv(spec: ModelSpec, pretrained: bool) -> nn.Module:
    def make() -> nn.Module:
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

    return _fetching(spec, pretrained, make)


def _timm(name: str, h: Hints) -> ModelSpec:
    import timm

    short = name[5:]
    if not timm.is_model(short):
        raise PbkitError(
            f"unknown timm model {short!r} (see `pbkit list models --json` for the names)"
        )
    size = h.input_size or int(h.kwargs.get("img_size") or _timm_default_size(short))
    family = "vit" if _VIT_NAME.match(short) else "cnn"
    return ModelSpec(name, h.num_classes or 1000, size, family, "timm", dict(h.kwargs))


def _build_timm(spec: ModelSpec, pretrained: bool) -> nn.Module:
    def make() -> nn.Module:
        import timm

        kw = dict(spec.kwargs)
        if spec.input_size and "img_size" not in kw and spec.family == "vit":
            default = _timm_default_size(spec.name[5:])
            if spec.input_size != default:
                kw["img_size"] = spec.input_size
        model: nn.Module = timm.create_model(
            spec.name[5:], pretrained=pretrained, num_classes=spec.num_classes, **kw
        )
        return model

    return _fetching(spec, pretrained, make)


def _tv_default_size(short: str) -> int:
    """The model's own input size: the crop its default weights were evaluated at (EfficientNet-B7
    600, ViT-H/14 518, Inception 299, most 224)."""
    from torchvision.models import get_model_weights

    try:
        crop = get_model_weights(short).DEFAULT.transforms.keywords.get("crop_size")
    except (AttributeError, ValueError, KeyError):
        crop = None
    return int(crop[0] if isinstance(crop, list | tuple) else crop) if crop else 224


def _timm_default_size(short: str) -> int:
    import timm

    cfg = timm.models.get_pretrained_cfg(short)
    size = getattr(cfg, "input_size", None) if cfg is not None else None
    return int(size[-1]) if size else 224


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
        raise PbkitError(f"could not build {spec.name}: {first_line(e)}") from e
    except TypeError as e:
        raise PbkitError(
            f"could not build {spec.name} with kwargs {spec.kwargs}: {first_line(e)}"
        ) from e


# ------------------------------------------------------------------------------------------------
# the user's own models


_FILE = re.compile(r"^(?P<path>.+\.py):(?P<fn>[A-Za-z_]\w*)$")
_IMPORT = re.compile(r"^(?P<mod>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<fn>[A-Za-z_]\w*)$")
OBJECT_PREFIX = "object:"


def _is_import(name: str) -> bool:
    m = _IMPORT.match(name)
    return m is not None and m.group("mod") + ":" not in PREFIXES


@contextlib.contextmanager
def _on_path(folder: Path) -> Iterator[None]:
    """The file's folder importable while it runs (``import helpers`` beside ``net.py``), as
    ``python net.py`` would allow; removed again afterwards."""
    entry = str(folder)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(entry)


def _module_of_file(path: Path, sha: str) -> ModuleType:
    """The user's file run as a module (once per content: ``pbkit_user_<stem>_<sha>``)."""
    name = f"pbkit_user_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}_{sha[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PbkitError(f"model file {str(path)!r} cannot be loaded as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # (dataclasses and pickling look their module up by name)
    try:
        with _on_path(path.parent):
            spec.loader.exec_module(module)
    except BaseException as e:
        sys.modules.pop(name, None)
        if isinstance(e, KeyboardInterrupt):
            raise
        raise PbkitError(f"model file {str(path)!r} failed to run: {first_line(e)}") from e
    return module


def _file_parts(name: str) -> tuple[Path, str]:
    m = _FILE.match(name)
    assert m is not None
    path = Path(m.group("path")).expanduser()
    if not path.is_file():
        raise PbkitError(f"model file {str(path)!r} not found (from --model {name})")
    return path.resolve(), m.group("fn")


def _builder_of(module: ModuleType, fn: str, where: str) -> Callable[..., Any]:
    builder = getattr(module, fn, None)
    if builder is None:
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        shown = ", ".join(found[:8]) + (", ..." if len(found) > 8 else "")
        raise PbkitError(f"{where} has no {fn!r} (it defines: {shown or 'nothing callable'})")
    if not callable(builder):
        raise PbkitError(f"{where}: {fn!r} is a {type(builder).__name__}, not a function")
    return builder


def _call(
    builder: Callable[..., Any], kwargs: Mapping[str, Any], num_classes: int | None, where: str
) -> nn.Module:
    """``builder(**kwargs)`` (and ``num_classes`` where it takes one and it is known), checked."""
    kw = dict(kwargs)
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    if num_classes is not None and "num_classes" in params and "num_classes" not in kw:
        kw["num_classes"] = num_classes
    try:
        model = builder(**kw)
    except TypeError as e:
        raise PbkitError(
            f"{where} does not take the arguments {kw} (model.kwargs): {first_line(e)}"
        ) from e
    except PbkitError:
        raise
    except Exception as e:  # the user's code: whatever it raises is one line
        raise PbkitError(f"{where} raised {first_line(e)}") from e
    return _checked_module(model, where)


def _checked_module(model: Any, where: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise PbkitError(f"{where} gave a {type(model).__name__}, not a torch.nn.Module")
    if not any(True for _ in model.parameters()):
        raise PbkitError(f"{where} gave a module with no parameters: nothing to prune")
    return model


def _file(name: str, h: Hints) -> ModelSpec:
    path, fn = _file_parts(name)
    sha = sha256_file(path)
    where = f"{path.name}:{fn}"
    with _on_path(path.parent):
        model = _call(
            _builder_of(_module_of_file(path, sha), fn, str(path)), h.kwargs, h.num_classes, where
        )
    origin = Origin("file", path=str(path), sha256=sha, function=fn)
    return _user_spec(name, model, origin, h, where)


def _build_file(spec: ModelSpec, pretrained: bool) -> nn.Module:
    o = _origin(spec)
    assert o.path is not None and o.function is not None
    path = Path(o.path)
    if not path.is_file():
        raise PbkitError(
            f"{spec.name}: the model's file {o.path!r} is gone; it rebuilds the architecture"
        )
    sha = sha256_file(path)
    if sha != o.sha256:
        raise PbkitError(
            f"{o.path} changed since this model was made from it (sha256 {sha[:12]}, was "
            f"{(o.sha256 or '')[:12]}); restore it, or prune again from the new file"
        )
    _no_pretrained(spec, pretrained)
    module = _module_of_file(path, sha)
    with _on_path(path.parent):
        return _call(
            _builder_of(module, o.function, o.path),
            spec.kwargs,
            spec.num_classes,
            f"{path.name}:{o.function}",
        )


def _import_module(mod: str, name: str) -> ModuleType:
    try:
        return importlib.import_module(mod)
    except ModuleNotFoundError as e:
        raise PbkitError(
            f"module {mod!r} not found (from --model {name}): {first_line(e)}; install it or put "
            "its folder on PYTHONPATH"
        ) from e
    except Exception as e:
        raise PbkitError(f"importing {mod!r} failed: {first_line(e)}") from e


def _distribution(module: ModuleType) -> tuple[str | None, str | None]:
    """The installed distribution providing ``module`` and its version (None, None if none)."""
    from importlib import metadata

    top = module.__name__.split(".")[0]
    for dist in metadata.packages_distributions().get(top, []):
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None, None


def _import(name: str, h: Hints) -> ModelSpec:
    m = _IMPORT.match(name)
    assert m is not None
    mod, fn = m.group("mod"), m.group("fn")
    module = _import_module(mod, name)
    model = _call(_builder_of(module, fn, f"module {mod}"), h.kwargs, h.num_classes, name)
    file = getattr(module, "__file__", None)
    package, version = _distribution(module)
    origin = Origin(
        "import",
        path=file,
        sha256=sha256_file(file) if file and Path(file).is_file() else None,
        function=fn,
        module=mod,
        package=package,
        version=version,
    )
    return _user_spec(name, model, origin, h, name)


def _build_import(spec: ModelSpec, pretrained: bool) -> nn.Module:
    o = _origin(spec)
    assert o.module is not None and o.function is not None
    _no_pretrained(spec, pretrained)
    module = _import_module(o.module, spec.name)
    where = f"{o.module}:{o.function}"
    builder = _builder_of(module, o.function, f"module {o.module}")
    return _call(builder, spec.kwargs, spec.num_classes, where)


def read_pickle(path: Path, trust: bool, what: str = "model file") -> Any:
    """A pickled file's object, only when trusted (unpickling runs code from the file)."""
    from pbkit.models.weights import read_file

    if not trust:
        raise PbkitError(
            f"{what} {str(path)!r} is a pickle: loading it runs code from the file; {TRUST_HINT}"
        )
    with ultralytics_offline():  # an ultralytics checkpoint imports ultralytics while unpickled
        return read_file(path, trust=True)


def _ultralytics_model(obj: Any) -> nn.Module | None:
    """The model of a checkpoint ``yolo train`` wrote (``{"model": DetectionModel, ...}``)."""
    if not isinstance(obj, dict):
        return None
    for key in ("ema", "model"):
        m = obj.get(key)
        if isinstance(m, nn.Module) and type(m).__module__.startswith("ultralytics."):
            return m
    return None


def _pickle(name: str, h: Hints) -> ModelSpec:
    path = Path(name).expanduser()
    if not path.is_file():
        raise PbkitError(f"model file {str(path)!r} not found")
    path = path.resolve()
    obj = read_pickle(path, h.trust)
    sha = sha256_file(path)
    yolo_model = _ultralytics_model(obj)
    if yolo_model is not None:
        return _checkpoint_spec(name, path, sha, obj, yolo_model, h)
    if isinstance(obj, dict) and isinstance(obj.get("model"), nn.Module):
        obj = obj["model"]
    if isinstance(obj, dict):
        raise PbkitError(
            f"{str(path)!r} holds a dict, not a torch.nn.Module (a state dict? name the "
            "architecture with --model and pass this file as --checkpoint)"
        )
    model = _checked_module(obj, str(path))
    origin = Origin("pickle", path=str(path), sha256=sha, class_name=type(model).__name__)
    return _user_spec(name, model.float(), origin, h, path.name)


def _build_pickle(spec: ModelSpec, pretrained: bool) -> nn.Module:
    o = _origin(spec)
    assert o.path is not None
    _no_pretrained(spec, pretrained)
    path = Path(o.path)
    if not path.is_file():
        raise PbkitError(f"{spec.name}: the pickled model {o.path!r} is gone")
    obj = read_pickle(path, True)  # (resolving it asked for the trust)
    if isinstance(obj, dict) and isinstance(obj.get("model"), nn.Module):
        obj = obj["model"]
    return _checked_module(obj, o.path).float()


def _checkpoint_spec(
    name: str, path: Path, sha: str, obj: dict[str, Any], model: nn.Module, h: Hints
) -> ModelSpec:
    """An ultralytics checkpoint: its classes, input size and task from what it carries, its
    architecture rebuilt from its model yaml (so its pruned model files hold no pickle)."""
    task = str(
        getattr(model, "task", None) or (obj.get("train_args") or {}).get("task") or "detect"
    )
    if task not in ("detect", "segment", "pose"):
        raise PbkitError(
            f"{path.name} is an ultralytics {task} checkpoint; pbkit prunes ultralytics detection, "
            "instance segmentation and pose checkpoints (tasks detect, segment, pose)"
        )
    if h.task not in (None, "detect"):
        raise PbkitError(
            f"{path.name} is an ultralytics {task} checkpoint (pbkit task detect), not --task"
            f" {h.task}"
        )
    arch = getattr(model, "yaml", None)
    if not isinstance(arch, dict):
        raise PbkitError(f"{path.name}: the checkpoint's model carries no yaml to rebuild it from")
    names = getattr(model, "names", None) or {}
    nc = int(getattr(model, "nc", 0) or len(names) or arch.get("nc") or 0)
    if h.num_classes is not None and h.num_classes != nc:
        raise PbkitError(f"{path.name} detects {nc} classes, not model.num_classes={h.num_classes}")
    imgsz = (obj.get("train_args") or {}).get("imgsz")
    size = h.input_size or (int(imgsz) if isinstance(imgsz, int | float) else 640)
    origin = Origin(
        "ultralytics-checkpoint",
        path=str(path),
        sha256=sha,
        class_name=type(model).__name__,
        arch=_plain(arch),
    )
    return ModelSpec(name, nc, size, "yolo", "ultralytics", dict(h.kwargs), "detect", origin)


def _plain(value: Any) -> Any:
    """A yaml-like structure of plain containers (a pbkit model file is read weights_only)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _build_checkpoint(spec: ModelSpec, pretrained: bool) -> nn.Module:
    from pbkit.models import yolo

    o = _origin(spec)
    _no_pretrained(spec, pretrained)
    assert o.arch is not None
    return yolo.build_from_yaml(o.arch, spec.num_classes)  # detect, segment or pose, by its head


# modules handed to the Python API, by name, while its call runs (:func:`registered`)
_OBJECTS: dict[str, nn.Module] = {}


def object_name(model: nn.Module) -> tuple[str, str]:
    """The name an API model goes by (``object:<Class>@<sha12>``) and its content hash (its
    architecture as printed and its weights)."""
    from pbkit.models.weights import state_sha256

    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}\n{model!r}\n".encode())
    h.update(state_sha256(model).encode())
    sha = h.hexdigest()
    return f"{OBJECT_PREFIX}{type(model).__name__}@{sha[:12]}", sha


@contextlib.contextmanager
def registered(model: nn.Module) -> Iterator[str]:
    """Make ``model`` nameable (``object:<Class>@<sha12>``) while the block runs; pbkit prunes a
    deep copy, never the caller's object."""
    _checked_module(model, f"the model ({type(model).__name__})")
    name, _ = object_name(model)
    had = _OBJECTS.get(name)
    _OBJECTS[name] = model
    try:
        yield name
    finally:
        if had is None:
            _OBJECTS.pop(name, None)
        else:
            _OBJECTS[name] = had


def _object(name: str, h: Hints) -> ModelSpec:
    model = _OBJECTS.get(name)
    if model is None:
        raise PbkitError(
            f"{name} was a Python object of another process; its run folder holds it "
            "(pbkit.Run.load(<run folder>, trust=True))"
        )
    _, sha = object_name(model)
    origin = Origin("object", sha256=sha, class_name=type(model).__name__)
    return _user_spec(name, copy.deepcopy(model).float(), origin, h, type(model).__name__)


def _build_object(spec: ModelSpec, pretrained: bool) -> nn.Module:
    _no_pretrained(spec, pretrained)
    model = _OBJECTS.get(spec.name)
    if model is None:
        raise PbkitError(f"{spec.name} was a Python object of another process")
    return copy.deepcopy(model).float()


def _origin(spec: ModelSpec) -> Origin:
    if spec.origin is None:
        raise PbkitError(f"{spec.name}: the model file does not say where the model comes from")
    return spec.origin


def _no_pretrained(spec: ModelSpec, pretrained: bool) -> None:
    if pretrained:
        raise PbkitError(
            f"{spec.label} has no hub weights (model.weights: pretrained); pass its weights with "
            "--checkpoint FILE, or train a base (base.epochs > 0)"
        )


def _family(model: nn.Module) -> str:
    """cnn where the model has batch norms or more than one convolution, else vit (a family only
    gates the methods that need batch norms or convolutions)."""
    convs = sum(1 for m in model.modules() if isinstance(m, nn.Conv2d))
    norms = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return "cnn" if norms or convs > 1 else "vit"


def _user_spec(name: str, model: nn.Module, origin: Origin, h: Hints, where: str) -> ModelSpec:
    """A user's model as a spec: its task (--task, else classify), input size (--imgsz /
    model.input_size: it cannot be read off an arbitrary model) and classes (its output)."""
    task = h.task or "classify"
    if task not in TASKS:
        raise choices_error("task", task, list(TASKS))
    if task == "detect":
        raise PbkitError(
            f"{where}: --task detect is for ultralytics detectors (a yolo name or a best.pt "
            "checkpoint); pbkit has no detection loss or metric for another model"
        )
    if h.input_size is None:
        raise PbkitError(
            f"{where}: pbkit cannot tell this model's input size: give --imgsz N "
            "(model.input_size; square RGB images, N x N)"
        )
    nc = _classes(model, h.input_size, task, where)
    if h.num_classes is not None and h.num_classes != nc:
        raise PbkitError(
            f"{where} gives {nc} classes, not model.num_classes={h.num_classes} (the dataset's?)"
        )
    kwargs = dict(h.kwargs)
    return ModelSpec(name, nc, h.input_size, _family(model), origin.kind, kwargs, task, origin)


@torch.no_grad()
def _classes(model: nn.Module, size: int, task: str, where: str) -> int:
    """The number of classes a model outputs, read off one forward pass at ``size``."""
    from pbkit.models.outputs import output_tensors

    was = model.training
    model.eval()
    try:
        out = model(torch.zeros(1, 3, size, size))
    except Exception as e:
        raise PbkitError(
            f"{where} does not run on a (1, 3, {size}, {size}) input: {first_line(e)} "
            "(--imgsz sets the size)"
        ) from e
    finally:
        model.train(was)
    tensors = output_tensors(out)
    if len(tensors) != 1:
        raise PbkitError(
            f"{where} gives {len(tensors)} outputs; a {task} model gives one tensor of class scores"
        )
    t = tensors[0]
    want = 2 if task == "classify" else 4
    if t.dim() != want:
        shape = "(N, classes)" if task == "classify" else "(N, classes, H, W)"
        raise PbkitError(
            f"{where} gives an output of shape {tuple(t.shape)}; a {task} model gives {shape}"
            + (" (--task segment for per-pixel scores)" if t.dim() == 4 else "")
        )
    return int(t.shape[1])


# ------------------------------------------------------------------------------------------------
# the table


def _is_pickle_name(name: str) -> bool:
    return name.lower().endswith(PICKLE_SUFFIXES) and ":" not in name.split("/")[0]


def _is_yolo_name(name: str) -> bool:
    """A name of ultralytics' families (yolov8, yolo11, yolo26), not a file (``yolo11n.pt``)."""
    return (
        name.startswith(("yolov8", "yolo11", "yolo26"))
        and "/" not in name
        and not (_is_pickle_name(name))
    )


SOURCES: list[Source] = [
    Source("pbkit", lambda n: n in MODELS, _registry, _build_registry),
    Source("ultralytics", lambda n: n in YOLO_MODELS or _is_yolo_name(n), _yolo, _build_yolo),
    Source(
        "torchvision-segment",
        lambda n: n.startswith("tv:") and n[3:] in segment.torchvision_names(),
        _tv_segment,
        _build_segment,
    ),
    Source("timmseg", lambda n: n.startswith("timmseg:"), _timmseg, _build_segment),
    Source("torchvision", lambda n: n.startswith("tv:"), _tv, _build_tv),
    Source("timm", lambda n: n.startswith("timm:"), _timm, _build_timm),
    Source("object", lambda n: n.startswith(OBJECT_PREFIX), _object, _build_object),
    Source("file", lambda n: _FILE.match(n) is not None, _file, _build_file),
    Source("import", _is_import, _import, _build_import),
    Source("pickle", _is_pickle_name, _pickle, _build_pickle),
]
# the builders of the user's models, by their origin's kind
_BY_KIND = {
    "file": _build_file,
    "import": _build_import,
    "pickle": _build_pickle,
    "object": _build_object,
    "ultralytics-checkpoint": _build_checkpoint,
}


def source_of(name: str) -> Source:
    for s in SOURCES:
        if s.matches(name):
            return s
    shown = [*MODELS, *YOLO_MODELS, *(p + "<name>" for p in PREFIXES), *USER_PATTERNS]
    raise choices_error("model", name, shown)


def resolve(
    name: str,
    num_classes: int | None = None,
    input_size: int | None = None,
    kwargs: dict[str, Any] | None = None,
    task: str | None = None,
    trust: bool = False,
) -> ModelSpec:
    """Check that ``name`` names a model and fill in its defaults; one line otherwise. A user's
    model is built (its code runs) to read what it is."""
    hints = Hints(num_classes, input_size, dict(kwargs or {}), task, trust)
    spec = source_of(name).resolve(name, hints)
    if task is not None and spec.task != task:
        raise PbkitError(f"{spec.label} is a {spec.task} model, not --task {task}")
    return spec


def build(
    spec: ModelSpec,
    pretrained: bool = False,
    seed: int = 0,
    load: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """Build the model as pbkit prunes it: the dense architecture (seeded random init, the hub's
    pretrained weights, or the user's model as it comes), ``load`` applied to it (user weights in
    the original layout), then ``prepare``d (YOLOv8: C2f made prunable)."""
    torch.manual_seed(seed)
    if spec.origin is not None:
        model = _BY_KIND[spec.origin.kind](spec, pretrained)
    else:
        model = source_of(spec.name).build(spec, pretrained)
    if load is not None:
        load(model)
    return prepare(model, spec)


def prepare(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """Pruning-friendly, function-preserving rewrites of an architecture (ultralytics' C2f,
    torchvision Swin's window attention, MaxViT's attention, ShuffleNetV2's channel shuffle,
    timm's mixed depth-wise convolutions); by name for the hubs' models, by the blocks a user's
    model holds."""
    name = spec.name
    if spec.source == "ultralytics" or _holds(model, "ultralytics.nn.modules.block", "C2f"):
        from pbkit.models import yolo

        model = yolo.make_prunable(model)
    if name.startswith("tv:swin_"):
        from pbkit.models import swin

        return swin.make_prunable(model)  # widths read from the weights (the same outputs)
    if name.startswith("tv:maxvit_"):
        from pbkit.models import maxvit

        return maxvit.make_prunable(model)  # attention widths read from the weights
    if name.startswith("tv:shufflenet_v2_"):
        from pbkit.models import shufflenet

        return shufflenet.make_prunable(model)  # its channel shuffle a module of its own
    if name.startswith("timm:swinv2_") and not name.startswith("timm:swinv2_cr"):
        from pbkit.models import swin

        return swin.make_timm_prunable(model)
    if any(type(m).__name__ == "MixedConv2d" for m in model.modules()):
        from pbkit.models import mixconv

        return mixconv.make_prunable(model)  # depth-wise mixed convolutions, channel by channel
    return model


def _holds(model: nn.Module, module: str, cls: str) -> bool:
    """Whether ``model`` holds an instance of ``module.cls`` (never importing ``module``)."""
    mod = sys.modules.get(module)
    kind = getattr(mod, cls, None) if mod is not None else None
    return kind is not None and any(type(m) is kind for m in model.modules())
