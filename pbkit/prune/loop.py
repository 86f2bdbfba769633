"""Step 2 and 3 of the study: group (DepGraph) and prune iteratively until a MACs speed-up target.

The Importance comes from :mod:`pbkit.prune.methods`; torch-pruning's MetaPruner decides and
removes. The pruning ratio follows a linear schedule to 1.0 over ``iterative_steps``; after every
step MACs are recounted and pruning stops as soon as base/pruned >= target. The achieved ratio is
returned. What the task protects (classifier or Detect head) and its calibration set come in as
arguments: nothing here knows which task a model serves.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pbkit.core import budget, device
from pbkit.core.errors import PbkitError
from pbkit.models import counts
from pbkit.prune import graphfix, knapsack, latency, methods, opaque
from pbkit.prune.calibration import Calibration

PROTECTED_MAX_RATIO = 0.9  # the protected-global scope keeps at least 10% of every group


@dataclass(frozen=True)
class PruneSettings:
    """How far and how to prune: the target, the scope, the schedule; reg and delta_reg are the
    sparsifying methods' regularizer strengths."""

    speedup: float
    scope: str = "protected"
    iterative_steps: int = 400
    round_to: int | None = None
    seed: int = 0
    reg: float = 5e-4
    delta_reg: float = 1e-4
    max_memory_gib: float | None = (
        None  # budgets (None: 75% of the machine's memory; no time limit)
    )
    max_graph_s: float | None = None
    latency: latency.LatencySettings | None = (
        None  # prune to a measured speed-up on a backend (else MACs)
    )


@dataclass
class PruneResult:
    macs_base: int
    macs_pruned: int
    params_base: int
    params_pruned: int
    steps: int
    step_time_s: float
    total_time_s: float
    ignored_layers: list[str]
    max_pruning_ratio: float = 1.0
    sparsify: dict[str, Any] | None = None  # the sparse-training run, its time apart ("reg time")
    interleave: dict[str, Any] | None = (
        None  # training between pruning steps (interleaved schedule)
    )
    latency: dict[str, Any] | None = (
        None  # a latency target: the table, the trajectory, the final measurement
    )
    real_counts: int = (
        0  # forward passes that counted MACs (the others were known from the layers' shapes)
    )
    # the pruning loop's wall time (steps, counting, checks), training between steps excluded
    loop_time_s: float = 0.0
    held_fixed: list[str] = field(
        default_factory=list
    )  # blocks the graph could not follow: their channels kept

    @property
    def achieved_speedup(self) -> float:
        return self.macs_base / max(self.macs_pruned, 1)


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    """timm-style attention blocks: a fused ``qkv`` Linear and a ``num_heads`` attribute (Swin's
    window attention is pruned as one block instead: :mod:`pbkit.prune.opaque`)."""
    windowed = opaque.attention_classes()
    return [
        m
        for m in model.modules()
        if not isinstance(m, windowed)
        and isinstance(getattr(m, "qkv", None), nn.Linear)
        and isinstance(getattr(m, "num_heads", None), int)
    ]


def _fix_attention(model: nn.Module, pruner: Any) -> None:
    """Keep num_heads / head_dim / attn_dim in step with the pruned qkv projection, and stored view
    shapes with their parameters (:func:`graphfix.view_shapes`)."""
    graphfix.view_shapes(model)
    for m in _attention_modules(model):
        qkv: nn.Linear = m.qkv  # type: ignore[assignment]
        heads = int(pruner.num_heads.get(qkv, m.num_heads))
        m.num_heads = heads  # type: ignore[assignment]
        attn_dim = qkv.out_features // 3
        m.head_dim = attn_dim // heads  # type: ignore[assignment]
        if hasattr(m, "attn_dim"):
            m.attn_dim = attn_dim  # type: ignore[assignment]
    embed = getattr(getattr(model, "patch_embed", None), "proj", None)
    if isinstance(embed, nn.Conv2d):
        for attr in ("embed_dim", "num_features"):
            if isinstance(getattr(model, attr, None), int):
                setattr(model, attr, embed.out_channels)


GRAPH_HINT = (
    "a structure the dependency graph cannot follow (window attention and similar); raise "
    "prune.max_memory_gib / prune.max_graph_s only if the machine has room"
)


MAPPED_WRONG = (
    "the dependency graph mapped this model's channels wrong (a structure it cannot follow)"
)
CUT_WRONG = (
    "a layer reads a width the dependency graph does not know of (a reshape to a fixed size, a"
    " width taken from the input)"
)


class _StepFailed(PbkitError):
    """A pruning step failed inside torch-pruning, or the model no longer runs after one."""


@contextlib.contextmanager
def _failing(what: str, why: str, error: type[PbkitError] = PbkitError) -> Iterator[None]:
    """An error inside torch-pruning or in the pruned model's forward pass as one line: what
    failed, the error's first line, and its likely cause."""
    try:
        yield
    except PbkitError:
        raise
    except (RuntimeError, IndexError, ValueError, TypeError, AttributeError, KeyError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise error(f"{what}: {type(e).__name__}: {first}; {why}") from e


def _copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``. Tensors a module caches from a forward pass that tracked gradients
    (LeViT's attention biases) cannot be deep-copied: the copy holds them detached."""
    memo: dict[int, Any] = {}
    for m in model.modules():
        for value in vars(m).values():
            items = (
                value.values()
                if isinstance(value, dict)
                else value
                if isinstance(value, list | tuple)
                else [value]
            )
            for t in items:
                if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                    memo[id(t)] = t.detach().clone()
    return copy.deepcopy(model, memo)


def _restore(model: nn.Module, backup: nn.Module) -> None:
    """Make ``model`` the copy taken before pruning, in place (callers keep the same object)."""
    model.__dict__.clear()
    model.__dict__.update(backup.__dict__)


def _graph_hint(model: nn.Module, memory_gib: float) -> str:
    """What to do past a graph budget: a model whose weights alone take a third of the memory
    budget is too large for it (its structure is not at fault), any other is hard to trace."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if weights * 3 < memory_gib * budget.GIB:
        return GRAPH_HINT
    return (
        f"the model's weights alone take {weights / budget.GIB:.1f} GiB and tracing holds them"
        " several times over: raise prune.max_memory_gib (this machine has"
        f" {budget.total_memory_bytes() / budget.GIB:.0f} GiB) or prune it on a machine with more"
        " memory"
    )


def _graph(
    pruner_cls: Any,
    model: nn.Module,
    example: Any,
    importance: Any,
    s: PruneSettings,
    max_ratio: float,
    protected: list[nn.Module],
    num_heads: dict[nn.Module, int],
    extra: dict[str, Any],
    held: Sequence[nn.Module] | None = None,
) -> tuple[Any, list[Any], list[nn.Module]]:
    """Build the Pruner (its dependency graph) and list the prunable groups, with the blocks held
    fixed. Where the whole model cannot be traced, its attention-like blocks are held fixed (each
    one node whose input and output channels stay) and it is traced again: the rest prunes.
    ``held``: hold those fixed from the start."""
    if held is not None:
        try:
            return (
                *_build(
                    pruner_cls,
                    model,
                    example,
                    importance,
                    s,
                    max_ratio,
                    protected,
                    num_heads,
                    extra,
                    held,
                ),
                list(held),
            )
        except _Untraceable as e:
            raise PbkitError(str(e)) from e
    try:
        return (
            *_build(
                pruner_cls,
                model,
                example,
                importance,
                s,
                max_ratio,
                protected,
                num_heads,
                extra,
                (),
            ),
            [],
        )
    except _Untraceable as first:
        held = opaque.untraceable(model)
        if not held:
            raise PbkitError(str(first)) from first
        try:
            return (
                *_build(
                    pruner_cls,
                    model,
                    example,
                    importance,
                    s,
                    max_ratio,
                    protected,
                    num_heads,
                    extra,
                    held,
                ),
                held,
            )
        except _Untraceable:
            raise PbkitError(
                f"{first} (and with its {len(held)} attention blocks held fixed)"
            ) from first


class _Untraceable(Exception):
    """The dependency graph failed on this model (one line)."""


def _build(
    pruner_cls: Any,
    model: nn.Module,
    example: Any,
    importance: Any,
    s: PruneSettings,
    max_ratio: float,
    protected: list[nn.Module],
    num_heads: dict[nn.Module, int],
    extra: dict[str, Any],
    held: Sequence[nn.Module],
) -> tuple[Any, list[Any]]:
    hooks = {id(m): set(m._forward_hooks) for m in model.modules()}
    try:
        custom = opaque.pruners(model, held, opaque.entries(model, held, example) if held else None)
        if custom:
            extra = {
                **extra,
                "customized_pruners": {**custom, **extra.get("customized_pruners", {})},
            }
        maps = graphfix.square_maps(model, set(extra.get("customized_pruners", {})))
        if maps:  # (torch-pruning finds the other parameters outside its layers itself)
            extra = {
                **extra,
                "unwrapped_parameters": [*maps, *extra.get("unwrapped_parameters", [])],
            }
        # hidden: blocks it cannot trace, as single layers with pruners of their own; shapes_only:
        # the graph keeps no activation of its traced forward pass
        with opaque.hidden(model, also=held), graphfix.exact_concat_sizes(), graphfix.shapes_only():
            pruner = pruner_cls(
                model,
                example,
                importance=importance,
                global_pruning=s.scope != "local",
                pruning_ratio=1.0,
                max_pruning_ratio=max_ratio,
                iterative_steps=s.iterative_steps,
                ignored_layers=[*protected, *opaque.fixed(model), *held],
                round_to=s.round_to,
                num_heads=num_heads,
                **extra,
            )
        graphfix.token_splits(pruner.DG)
        pruner.ignored_layers.extend(
            graphfix.channel_splits(pruner.DG)
        )  # the groups reaching them stay
        score = pruner.estimate_importance  # (no score: torch-pruning leaves the group as it is)
        grouped = graphfix.grouped_convolutions(model)
        pruner.estimate_importance = lambda g: (
            None if graphfix.one_channel_groups(g, grouped) else score(g)
        )
        groups = list(
            pruner.DG.get_all_groups(
                ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
            )
        )
        import torch_pruning as tp

        check = tp.importance.MagnitudeImportance(
            p=2
        )  # every group's channel indices map onto its layers
        astray = []
        for group in groups:
            if not graphfix.one_channel_groups(group, grouped):
                try:
                    check(group)
                except (
                    IndexError,
                    RuntimeError,
                ) as e:  # indices mapped past a layer's end: the group is held
                    if "out of bounds" not in str(e):
                        raise
                    astray.append(group[0].dep.target.module)
        if astray:
            pruner.ignored_layers.extend(astray)
            groups = list(
                pruner.DG.get_all_groups(
                    ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
                )
            )
    except PbkitError:
        raise
    except Exception as e:  # tracing failures come in many types
        for m in model.modules():  # the hooks a trace that failed mid-forward left behind
            for key in set(m._forward_hooks) - hooks.get(id(m), set()):
                del m._forward_hooks[key]
        raise _Untraceable(
            f"the dependency graph could not trace this model: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    if not groups:
        raise PbkitError("the dependency graph found no prunable channel group in this model")
    return pruner, groups


def _index_mapped(f: Callable[..., PruneResult]) -> Callable[..., PruneResult]:
    """``f`` run with torch-pruning's index maps repaired (:func:`graphfix.index_maps`)."""

    @functools.wraps(f)
    def run(*args: Any, **kwargs: Any) -> PruneResult:
        with graphfix.index_maps():
            return f(*args, **kwargs)

    return run


@_index_mapped
def prune_to_target(
    model: nn.Module,
    method: methods.Method,
    settings: PruneSettings,
    *,
    input_size: int,
    num_classes: int,
    protected: list[nn.Module],
    calibration: Calibration | None = None,
    sparse_train: Callable[[Any], dict[str, Any]] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    between_steps: Callable[[int], float] | None = None,
    name: str = "the model",
    latency_tools: knapsack.Tools | None = None,
    on_text: Callable[[int, str], None] | None = None,
    hold: Sequence[str] = (),
) -> PruneResult:
    """Prune ``model`` in place until base MACs / pruned MACs >= ``settings.speedup``, never
    touching the ``protected`` modules (the task's heads).

    Data-driven criteria run ``method.collect`` on the pinned ``calibration`` batches before every
    step (inside the step time). Sparsifying methods call ``sparse_train(pruner)`` once, before
    pruning, with the method's regularizing Pruner (its time is recorded apart).
    ``between_steps(i)`` runs before pruning step ``i`` (from 1) and returns the seconds it took,
    which are kept out of the step and prune times: training between pruning steps (CPD's
    interleaved schedule).

    With ``settings.latency`` the target is a measured speed-up on a backend instead:
    :func:`pbkit.prune.knapsack.run` prunes with ``latency_tools`` (the table, the end-to-end
    measurement), reporting each step through ``on_text``; the table's build and the measurements
    are kept out of the prune time like training between steps.

    Where a step fails inside torch-pruning or leaves a model that no longer runs (a layer that
    reads a width from its input), the model is put back as it was and pruned again with its
    attention-like blocks held fixed (``hold``: their names), as where the graph cannot be traced.
    """
    s = settings
    if s.speedup <= 1.0:
        raise PbkitError(f"speed-up target must be > 1, got {s.speedup}")
    methods.check_scope(s.scope)
    if not protected:
        raise PbkitError(
            f"could not find the head (a layer with {num_classes} outputs) to protect from pruning"
        )
    model.eval()
    if method.precheck is not None and (problem := method.precheck(model)) is not None:
        raise PbkitError(problem)
    names = {m: n for n, m in model.named_modules()}
    counter = counts.StepCounter(model, input_size)
    macs_base = counter.base
    params_base = counts.count_params(model)
    dev = device.of(model)
    example = counts.example_input(input_size).to(dev)
    if calibration is not None:  # pinned batches on the model's device, moved once
        calibration = dataclasses.replace(calibration, batches=device.to(calibration.batches, dev))
    if method.collect is not None and not (calibration and calibration.batches):
        raise PbkitError(
            f"method {method.key!r} needs calibration data ({method.data}): pass --dataset D "
            "or set prune.calibration.dataset (synthetic works offline)"
        )
    if (
        method.collect is not None
        and method.needs_loss
        and calibration is not None
        and calibration.loss is None
    ):
        raise PbkitError(
            f"method {method.key!r} needs the {calibration.task} loss: calibrate on a"
            f" {calibration.task} dataset (prune.calibration.dataset=...), not on"
            f" {calibration.info.get('dataset')}"
        )
    if method.stage == "sparsify" and sparse_train is None:
        raise PbkitError(
            f"method {method.key!r} trains with a regularizer first: pass --dataset D "
            "(or set prune.calibration.dataset) and sparsify.epochs"
        )
    torch.manual_seed(s.seed)
    num_heads = {m.qkv: m.num_heads for m in _attention_modules(model)}
    ctx = {"num_classes": num_classes, "seed": s.seed, "reg": s.reg, "delta_reg": s.delta_reg}
    pruner_cls, extra = method.pruner_class(ctx)
    importance = method.importance(ctx)
    max_ratio = PROTECTED_MAX_RATIO if s.scope == "protected" else 1.0
    memory = s.max_memory_gib if s.max_memory_gib is not None else budget.default_memory_gib()
    t_start = time.perf_counter()
    graph = functools.partial(
        _graph, pruner_cls, model, example, importance, s, max_ratio, protected, num_heads, extra
    )
    what, hint = f"dependency graph of {name}", _graph_hint(model, memory)
    rss = budget.resident_gib()
    try:
        with budget.guarded(what, memory, s.max_graph_s, hint=hint):
            pruner, groups, held = (
                graph(held=[model.get_submodule(n) for n in hold]) if hold else graph()
            )
    except (
        budget.OverBudget
    ) as over:  # the graph ran away: trace it again with attention-like blocks held fixed
        candidates = opaque.untraceable(model)
        if not candidates or hint != GRAPH_HINT:
            raise
        budget.release_memory()
        kept = max(
            0.0, budget.resident_gib() - rss
        )  # freed but not handed back: the retry reuses it first
        try:
            with budget.guarded(what, memory + kept, s.max_graph_s, hint=hint):
                pruner, groups, held = graph(held=candidates)
        except PbkitError:
            raise PbkitError(
                f"{over} (and with its {len(candidates)} attention blocks held fixed)"
            ) from over
    retry = [] if held else opaque.untraceable(model)  # what to hold fixed should a step fail
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    backup = (
        _copy(model)
        if retry
        and method.stage != "sparsify"
        and s.latency is None
        and between_steps is None
        and weights < memory * budget.GIB / 3
        else None
    )
    failed: _StepFailed | None = None
    sparsified = (
        sparse_train(pruner) if method.stage == "sparsify" and sparse_train is not None else None
    )
    if sparsified is not None:
        t_start += sparsified["time_s"]  # prune time excludes the regularized training ("reg time")
    steps, macs, step_times = 0, macs_base, []
    latency_info = None
    t_loop, excluded_from = (
        time.perf_counter(),
        t_start,
    )  # t_start moves on by what the times exclude
    # (what torch-pruning leaves behind a cut, per-channel tensors and chunk offsets, follows it)
    with budget.guarded(f"pruning {name}", memory, None), graphfix.cuts_follow():
        if s.latency is not None:
            if latency_tools is None:
                raise PbkitError(
                    "a latency target needs the backend's table and measurement (no tools given)"
                )

            def collect() -> None:
                assert calibration is not None and method.collect is not None
                method.collect(importance, model, pruner, calibration)

            steps, step_times, trained, latency_info = knapsack.run(
                model,
                pruner,
                importance,
                latency_tools,
                s.latency,
                s.speedup,
                s.scope,
                max_ratio,
                input_size,
                collect=collect if method.collect is not None else None,
                between_steps=between_steps,
                after_prune=lambda: _fix_attention(model, pruner),
                on_step=on_text,
            )
            t_start += trained + latency_info["table"]["time_s"] + latency_info["measure_s"]
            macs = counter.exact()
        else:

            def reached(m: int) -> bool:
                return macs_base / max(m, 1) >= s.speedup

            try:
                exact = True
                while steps < s.iterative_steps:
                    if between_steps is not None:
                        t_start += between_steps(steps + 1)
                    t0 = time.perf_counter()
                    if method.collect is not None:
                        assert calibration is not None
                        method.collect(importance, model, pruner, calibration)
                    with _failing(
                        f"pruning step {steps + 1} failed inside torch-pruning",
                        MAPPED_WRONG,
                        _StepFailed,
                    ):
                        pruner.step()
                        _fix_attention(model, pruner)
                    step_times.append(time.perf_counter() - t0)
                    steps += 1
                    with _failing(
                        f"after pruning step {steps} the model no longer runs",
                        CUT_WRONG,
                        _StepFailed,
                    ):
                        macs, exact = counter.after_step(reached)
                    if on_step is not None:
                        on_step(steps, macs_base / max(macs, 1))  # (a lower bound while not exact)
                    if exact and reached(macs):
                        break
                with _failing(
                    f"after pruning step {steps} the model no longer runs", CUT_WRONG, _StepFailed
                ):
                    if not exact:
                        macs = counter.exact()
                    elif counter.free == 0:  # MACs read from the weights' shapes alone: run it once
                        with torch.no_grad():
                            model(example)
            except _StepFailed as e:
                if backup is None:
                    raise
                failed = e
    if (
        failed is not None and backup is not None
    ):  # again, with the attention-like blocks held fixed
        again = [names[m] for m in retry]
        _restore(model, backup)
        del backup, pruner, groups
        protected[:] = [model.get_submodule(names[m]) for m in protected]
        try:
            return prune_to_target(
                model,
                method,
                settings,
                input_size=input_size,
                num_classes=num_classes,
                protected=protected,
                calibration=calibration,
                on_step=on_step,
                name=name,
                on_text=on_text,
                hold=again,
            )
        except PbkitError as e:
            raise PbkitError(
                f"{failed} (and with its {len(again)} attention blocks held fixed: {e})"
            ) from failed

    loop_s = time.perf_counter() - t_loop - (t_start - excluded_from)
    achieved = macs_base / max(macs, 1)
    if latency_info is not None:
        achieved = latency_info[
            "measured_speedup"
        ]  # (the MACs speed-up is the result's achieved_speedup)
    if macs == macs_base:
        raise PbkitError(
            f"nothing was pruned in {steps} steps: the {method.key} criterion could not rank the "
            "channels (every score equal?)"
        )
    if achieved < s.speedup:
        floor = (
            " (the protected scope keeps >= 10% of every group)" if s.scope == "protected" else ""
        )
        raise PbkitError(
            f"speed-up target {s.speedup}x is unreachable: {achieved:.2f}x after "
            f"{steps} steps in the {s.scope} scope{floor}"
        )
    return PruneResult(
        macs_base=macs_base,
        macs_pruned=macs,
        params_base=params_base,
        params_pruned=counts.count_params(model),
        steps=steps,
        step_time_s=sum(step_times) / len(step_times),
        total_time_s=time.perf_counter() - t_start,
        ignored_layers=sorted(names.get(m, "?") for m in protected),
        held_fixed=sorted(names.get(m, "?") for m in held),
        max_pruning_ratio=max_ratio,
        sparsify=sparsified,
        latency=latency_info,
        real_counts=counter.real_counts,
        loop_time_s=loop_s,
    )
