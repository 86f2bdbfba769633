"""What rebuilds a model's dense architecture (no weights): :class:`ModelSpec`, and for a model from
outside pbkit's names, where it comes from (:class:`Origin`).

Both travel inside pbkit model files as plain containers (``torch.load(weights_only=True)`` reads
them) and into the record (``model.origin``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

# the kinds of model source that come from the user rather than pbkit's names
USER_KINDS = ("file", "import", "pickle", "object", "ultralytics-checkpoint")
# the kinds whose model files hold the pickled module itself (reading one runs code from the file)
PICKLED_KINDS = ("pickle", "object")


@dataclass(frozen=True)
class Origin:
    """Where a model from outside pbkit's names comes from: what rebuilds it and what identifies it.

    - ``file``: a Python file and the function in it that builds the model (``net.py:build``);
    - ``import``: an import path and the function it names (``my_pkg.models:build``);
    - ``pickle``: a whole pickled ``nn.Module`` (``torch.save(model, "model.pt")``);
    - ``object``: a module handed to the Python API (:func:`pbkit.prune`);
    - ``ultralytics-checkpoint``: a checkpoint ``yolo train`` wrote (``best.pt``), rebuilt from the
      model yaml it carries (``arch``) with its weights."""

    kind: str
    path: str | None = None  # the .py or .pt file, absolute
    sha256: str | None = None  # of that file (object: of the module's architecture and weights)
    function: str | None = None  # the builder a file or module defines
    module: str | None = None  # the import path (import)
    package: str | None = None  # the installed distribution that provides the module, if any
    version: str | None = None  # its version
    class_name: str | None = None  # the model's class (pickle, object)
    arch: dict[str, Any] | None = field(default=None, repr=False)  # ultralytics: the model yaml

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Origin:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def pickled(self) -> bool:
        """Whether model files of this source hold the pickled module (loading runs its code)."""
        return self.kind in PICKLED_KINDS

    def identity(self) -> dict[str, Any]:
        """What identifies the source in a run's id: its content, never where it lies."""
        keep = ("kind", "sha256", "function", "module", "version")
        return {k: getattr(self, k) for k in keep if getattr(self, k) is not None}

    def describe(self) -> str:
        """The source in words: ``file /x/net.py:build (sha256 1a2b3c4d5e6f)``."""
        if self.kind == "file":
            where = f"file {self.path}:{self.function}"
        elif self.kind == "import":
            pkg = f", {self.package}=={self.version}" if self.package else ""
            where = f"import {self.module}:{self.function}{pkg}"
        elif self.kind == "object":
            where = f"Python object {self.class_name}"
        else:
            where = f"{self.kind} {self.path}"
        return where + (f" (sha256 {self.sha256[:12]})" if self.sha256 else "")


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
    origin: Origin | None = None  # a model from outside pbkit's names: where it comes from

    @property
    def label(self) -> str:
        """A short name for run ids and titles (a path or import path shortened)."""
        o = self.origin
        if o is None:
            return self.name
        if o.kind == "file":
            stem = (o.path or "model").rsplit("/", 1)[-1].removesuffix(".py")
            return f"{stem}-{o.function}"
        if o.kind == "import":
            return f"{(o.module or '').rsplit('.', 1)[-1]}-{o.function}"
        if o.kind == "object":
            return o.class_name or "model"
        stem = (o.path or "model").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        if o.kind == "ultralytics-checkpoint" and o.arch:
            scale = str(o.arch.get("yaml_file") or "yolo").rsplit("/", 1)[-1].rsplit(".", 1)[0]
            return f"{scale}-{stem}"
        return stem

    def to_dict(self) -> dict[str, Any]:
        out = dict(
            name=self.name,
            num_classes=self.num_classes,
            input_size=self.input_size,
            family=self.family,
            source=self.source,
            kwargs=dict(self.kwargs),
            task=self.task,
        )
        if self.origin is not None:
            out["origin"] = self.origin.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        # older files: no task (detect for ultralytics), no origin
        task = d.get("task") or ("detect" if d.get("source") == "ultralytics" else "classify")
        origin = Origin.from_dict(d["origin"]) if d.get("origin") else None
        return cls(
            **{k: d[k] for k in ("name", "num_classes", "input_size", "family", "source")},
            kwargs=dict(d.get("kwargs") or {}),
            task=task,
            origin=origin,
        )
