"""Step 2 and 3 of the study: group (DepGraph) and prune iteratively until a MACs speed-up target.

The Importance comes from :mod:`pbkit.pruning.methods`; torch-pruning's MetaPruner decides and
removes. The pruning ratio follows a linear schedule to 1.0 over ``iterative_steps``; after every
step MACs are recounted and pruning stops as soon as base/pruned >= target. The achieved ratio is
returned. What the task protects (classifier or Detect head) and its calibration set come in as
arguments: nothing here knows which task a model serves.

The loop in pieces:

- the checks of the arguments (:func:`_check`), once;
- the retry policy (:func:`_plan`): a list of :class:`Attempt` s, run in order by :func:`_run`
  until one succeeds: the model as it is, then with its attention-like blocks held fixed;
- one attempt (:func:`_attempt`): build the graph (:func:`_trace`, :mod:`pbkit.pruning.build`),
  sparse training if the method trains first, the steps (:func:`_macs_steps`, or
  :func:`pbkit.pruning.knapsack.run` for a latency target), the check of what they reached
  (:func:`_result`).

pbkit's repairs to torch-pruning (:mod:`pbkit.pruning.repairs`) apply while it runs: the index maps
throughout, what follows a cut during the steps.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pbkit.core import budget, device
from pbkit.core.errors import PbkitError, first_line
from pbkit.models import counts
from pbkit.pruning import build, knapsack, latency, methods
from pbkit.pruning.calibration import Calibration
from pbkit.pruning.repairs import RepairBroken, cuts, graph, held

PROTECTED_MAX_RATIO = 0.9  # the protected-global scope keeps at least 10% of every group
# the settings the pruning's budgets come from (named in a budget's message)
BUDGET_KEYS = ("prune.max_memory_gib", "prune.max_graph_s")


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


@dataclass(frozen=True)
class Sparsified:
    """What the sparse-training hook reports: the seconds it took (kept out of the prune time,
    "reg time") and the facts the record keeps (``method.sparsify``, ``time_s`` among them)."""

    time_s: float
    facts: dict[str, Any]


@dataclass(frozen=True)
class PruneHooks:
    """What the caller runs while the loop prunes, and the name its messages give the model; all
    optional.

    - ``sparse_train(pruner)``: sparsifying methods train with the method's regularizing Pruner
      once, before pruning;
    - ``between_steps(i)``: runs before pruning step ``i`` (from 1) and returns the seconds it
      took, kept out of the step and prune times (training between steps: CPD's interleaved
      schedule);
    - ``on_step(i, speedup)``: after each MACs step (a lower bound while not exact);
    - ``on_text(i, line)``: each step of a latency-targeted run;
    - ``latency_tools``: the backend's table and end-to-end measurement (a latency target).

    ``sparse_train`` and ``between_steps`` train the caller's model object itself, so a run with
    either prunes that object in one attempt (no copy to try again on)."""

    sparse_train: Callable[[Any], Sparsified] | None = None
    between_steps: Callable[[int], float] | None = None
    on_step: Callable[[int, float], None] | None = None
    on_text: Callable[[int, str], None] | None = None
    latency_tools: knapsack.Tools | None = None
    name: str = "the model"


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
    sparsified: Sparsified | None = None  # the sparse-training run, its time apart ("reg time")
    latency_run: knapsack.LatencyRun | None = None  # a latency target: table, steps, measurements
    real_counts: int = (
        0  # forward passes that counted MACs (the others were known from the layers' shapes)
    )
    # the pruning loop's wall time (steps, counting, checks), training between steps excluded
    loop_time_s: float = 0.0
    # blocks the graph could not follow: their channels kept
    held_fixed: list[str] = field(default_factory=list)

    @property
    def achieved_speedup(self) -> float:
        return self.macs_base / max(self.macs_pruned, 1)


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
        raise error(f"{what}: {first_line(e)}; {why}") from e


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


def adopt(model: nn.Module, pruned: nn.Module) -> None:
    """The one transfer of the in-place contract: the caller's ``model`` object becomes ``pruned``
    (the copy an attempt pruned). Its attributes (submodules, parameters, buffers, hooks) are the
    copy's from then on: the caller's reference to ``model`` sees the pruned model, while a
    reference it kept to one of the old submodules still sees that module as it was."""
    model.__dict__.clear()
    model.__dict__.update(pruned.__dict__)


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


# --- the entry point ------------------------------------------------------------------------------


def prune_to_target(
    model: nn.Module,
    method: methods.Method,
    settings: PruneSettings,
    *,
    input_size: int,
    num_classes: int,
    protected: list[nn.Module],
    calibration: Calibration | None = None,
    hooks: PruneHooks = PruneHooks(),
) -> PruneResult:
    """Prune ``model`` until base MACs / pruned MACs >= ``settings.speedup``, never touching the
    ``protected`` modules (the task's heads).

    Data-driven criteria run ``method.collect`` on the pinned ``calibration`` batches before every
    step (inside the step time). With ``settings.latency`` the target is a measured speed-up on a
    backend instead: :func:`pbkit.pruning.knapsack.run` prunes with ``hooks.latency_tools``, its
    table's build and measurements kept out of the prune time like training between steps.

    It tries the model as it is, then, where that graph cannot be traced or runs past its budget,
    or a step breaks a copy, with its attention-like blocks held fixed (the retry policy,
    :func:`_plan`); a repair that no longer fits torch-pruning is
    :class:`~pbkit.pruning.repairs.RepairBroken`, and no retry.

    The contract: ``model`` is pruned in place (the same object, its layers narrower, left in eval
    mode), and nothing else of the caller's is changed (``protected`` and the hooks are read, never
    edited). The first attempt prunes ``model`` itself, so its submodules (a protected head) stay
    the objects the caller holds. Where a second attempt is possible (:func:`_plan`: the model has
    attention-like blocks, no hook trains the model object itself, no latency target, and a copy
    fits the memory budget) a copy is kept before the first: should that one fail, ``model`` is
    made the copy again (:func:`adopt`), the second attempt prunes a copy of it and, if it
    succeeds, is made the model; if it fails too, ``model`` is left as it was given. Otherwise an
    error may leave ``model`` half-pruned (the prune stage builds its run folder under a temporary
    name and throws it away).
    """
    _check(model, method, settings, protected, num_classes, calibration, hooks)
    job = _job(model, method, settings, input_size, num_classes, protected, calibration, hooks)
    with graph.index_maps():
        return _run(model, job, _plan(model, job))


def _check(
    model: nn.Module,
    method: methods.Method,
    s: PruneSettings,
    protected: list[nn.Module],
    num_classes: int,
    calibration: Calibration | None,
    hooks: PruneHooks,
) -> None:
    """The arguments' problems as one line each, before any work."""
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
    if method.stage == "sparsify" and hooks.sparse_train is None:
        raise PbkitError(
            f"method {method.key!r} trains with a regularizer first: pass --dataset D "
            "(or set prune.calibration.dataset) and sparsify.epochs"
        )
    if s.latency is not None and hooks.latency_tools is None:
        raise PbkitError(
            "a latency target needs the backend's table and measurement (no tools given)"
        )


@dataclass(frozen=True)
class _Job:
    """What every attempt shares: the checked arguments, the calibration batches on the model's
    device, the protected modules by name, and the memory budget."""

    method: methods.Method
    settings: PruneSettings
    hooks: PruneHooks
    input_size: int
    num_classes: int
    calibration: Calibration | None
    protected: tuple[str, ...]  # names in the model
    ignored_layers: list[str]  # the result's (a module not in the model: "?")
    memory_gib: float

    @property
    def max_ratio(self) -> float:
        return PROTECTED_MAX_RATIO if self.settings.scope == "protected" else 1.0


def _job(
    model: nn.Module,
    method: methods.Method,
    s: PruneSettings,
    input_size: int,
    num_classes: int,
    protected: list[nn.Module],
    calibration: Calibration | None,
    hooks: PruneHooks,
) -> _Job:
    names = {m: n for n, m in model.named_modules()}
    if calibration is not None:  # pinned batches on the model's device, moved once
        moved = device.to(calibration.batches, device.of(model))
        calibration = dataclasses.replace(calibration, batches=moved)
    return _Job(
        method=method,
        settings=s,
        hooks=hooks,
        input_size=input_size,
        num_classes=num_classes,
        calibration=calibration,
        protected=tuple(names[m] for m in protected if m in names),
        ignored_layers=sorted(names.get(m, "?") for m in protected),
        memory_gib=(
            s.max_memory_gib if s.max_memory_gib is not None else budget.default_memory_gib()
        ),
    )


# --- the retry policy -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One try at pruning: the blocks held fixed from the start (their names), and whether a copy
    of the model is kept for the next attempt (the first, of two) or pruned (the second: made the
    model by :func:`adopt` if it succeeds)."""

    hold: tuple[str, ...] = ()
    on_copy: bool = False


class _Failed(Exception):
    """An attempt failed where the next one may get past: its graph could not be traced, or ran
    past its budget where the model's structure (not its size) is to blame, or a step on a copy
    broke the model. ``extra_gib``: memory freed but not handed back, which the next trace may
    use first."""

    def __init__(self, error: PbkitError, extra_gib: float = 0.0) -> None:
        super().__init__(str(error))
        self.error, self.extra_gib = error, extra_gib


def _plan(model: nn.Module, job: _Job) -> list[Attempt]:
    """The retry policy: the model as it is (blocks known not to prune held fixed from the start:
    :func:`pbkit.pruning.repairs.held.from_start`); then, if it has attention-like blocks
    (:func:`pbkit.pruning.repairs.held.untraceable`), with those held fixed: each one node whose
    output channels stay. The second is taken where the first one's graph cannot be traced or runs
    past its budget (the model is untouched then) or, where a copy was kept, a step fails inside
    torch-pruning or leaves a model that no longer runs. A copy is possible where no hook trains
    the model object itself, there is no latency target, and the weights take less than a third
    of the memory budget."""
    names = {m: n for n, m in model.named_modules()}
    first = tuple(names[m] for m in held.from_start(model))
    candidates = tuple(n for m in held.untraceable(model) if (n := names[m]) not in first)
    if not candidates:
        return [Attempt(first)]
    s, hooks = job.settings, job.hooks
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    on_copy = (
        job.method.stage != "sparsify"
        and hooks.between_steps is None
        and s.latency is None
        and weights < job.memory_gib * budget.GIB / 3
    )
    return [Attempt(first, on_copy), Attempt(first + candidates, on_copy)]


def _run(model: nn.Module, job: _Job, attempts: list[Attempt]) -> PruneResult:
    """Run ``attempts`` in order until one succeeds. Where every one fails, the error names the
    first failure and the last; a repair that no longer fits torch-pruning stops at once."""
    first: str | None = None  # (its text: the error would keep the failed attempt's memory)
    extra_gib = 0.0
    kept: nn.Module | None = None  # the model as given, while a later attempt may need it
    for i, attempt in enumerate(attempts):
        if attempt.on_copy and i == 0:
            kept, pruned = _copy(model), model  # the first prunes the model itself
        elif attempt.on_copy:
            if kept is not None:
                adopt(model, kept)  # as given again (the first may have cut some of it)
                kept = None
            pruned = _copy(model)
        else:
            pruned = model
        try:
            result = _attempt(pruned, job, attempt, extra_gib)
        except _Failed as f:
            if i + 1 < len(attempts):
                first, extra_gib = first or str(f.error), f.extra_gib
                pruned = model  # (the failed copy goes before the next is made)
                continue
            error: PbkitError = f.error
        except RepairBroken:
            raise
        except PbkitError as e:
            error = e
        else:
            if pruned is not model:
                adopt(model, pruned)
            return result
        if first is None:
            raise error from error.__cause__
        raise PbkitError(
            f"{first} (and with its {len(attempt.hold)} attention blocks held fixed: {error})"
        ) from error
    raise AssertionError("no attempt planned")


# --- one attempt ----------------------------------------------------------------------------------


@dataclass
class _Clock:
    """The prune time, from the attempt's start, and the loop's, from its first step; both less
    the seconds they exclude (sparse training, training between steps, a latency table's build
    and measurements)."""

    start: float = field(default_factory=time.perf_counter)
    excluded: float = 0.0
    loop_start: float = 0.0
    excluded_before_loop: float = 0.0

    def exclude(self, seconds: float) -> None:
        self.excluded += seconds

    def begin_loop(self) -> None:
        self.loop_start, self.excluded_before_loop = time.perf_counter(), self.excluded

    def total(self) -> float:
        return time.perf_counter() - self.start - self.excluded

    def loop(self) -> float:
        excluded = self.excluded - self.excluded_before_loop
        return time.perf_counter() - self.loop_start - excluded


@dataclass
class _Pruning:
    """One attempt in progress: the model it prunes, its MACs counter and example input, what the
    Pruner is built with, the Pruner once built, and the blocks it holds fixed."""

    model: nn.Module
    job: _Job
    counter: counts.StepCounter
    params_base: int
    example: torch.Tensor
    spec: build.PrunerSpec
    clock: _Clock
    hold: tuple[str, ...] = ()
    pruner: Any = None
    sparsified: Sparsified | None = None


@dataclass
class _Steps:
    """What the steps did: how many, their seconds, the MACs after them, and a latency-targeted
    run's own account."""

    steps: int
    times: list[float]
    macs: int
    latency: knapsack.LatencyRun | None = None


def _attempt(model: nn.Module, job: _Job, attempt: Attempt, extra_gib: float) -> PruneResult:
    """Build the graph, train sparse if the method does, step, and check what the steps reached."""
    p = _start(model, job, attempt)
    _trace(p, extra_gib)
    if job.method.stage == "sparsify" and job.hooks.sparse_train is not None:
        p.sparsified = job.hooks.sparse_train(p.pruner)
        p.clock.exclude(p.sparsified.time_s)  # the prune time excludes it ("reg time")
    p.clock.begin_loop()
    try:
        with (
            budget.guarded(f"pruning {job.hooks.name}", job.memory_gib, None, keys=BUDGET_KEYS),
            cuts.cuts_follow(),
        ):
            done = _latency_steps(p) if job.settings.latency is not None else _macs_steps(p)
    except _StepFailed as e:
        if attempt.on_copy:  # a copy was kept: the next attempt may get past it
            raise _Failed(e) from e
        raise
    return _result(p, done)


def _start(model: nn.Module, job: _Job, attempt: Attempt) -> _Pruning:
    """The attempt's counter (one real count of the base MACs), example input, seeded importance
    and Pruner arguments."""
    s = job.settings
    counter = counts.StepCounter(model, job.input_size)
    params_base = counts.count_params(model)
    example = counts.example_input(job.input_size).to(device.of(model))
    torch.manual_seed(s.seed)
    num_heads = cuts.attention_heads(model)
    ctx = {"num_classes": job.num_classes, "seed": s.seed, "reg": s.reg, "delta_reg": s.delta_reg}
    pruner_cls, extra = job.method.pruner_class(ctx)
    spec = build.PrunerSpec(
        pruner_cls=pruner_cls,
        importance=job.method.importance(ctx),
        extra=extra,
        global_pruning=s.scope != "local",
        max_ratio=job.max_ratio,
        iterative_steps=s.iterative_steps,
        round_to=s.round_to,
        num_heads=num_heads,
    )
    return _Pruning(model, job, counter, params_base, example, spec, _Clock(), attempt.hold)


def _graph(p: _Pruning, hold: Sequence[nn.Module]) -> tuple[Any, list[Any]]:
    """The Pruner and its groups for the attempt's model, with ``hold`` held fixed (the seam a test
    replaces to make a graph run away)."""
    protected = [p.model.get_submodule(n) for n in p.job.protected]
    return build.build(p.model, p.example, p.spec, protected, hold)


def _trace(p: _Pruning, extra_gib: float) -> None:
    """Build the attempt's graph within the memory and time budgets (the memory budget raised by
    ``extra_gib``). A graph that cannot be traced, or runs past its budget where the model's
    structure is to blame, fails the attempt so that the next may try."""
    job = p.job
    hint = _graph_hint(p.model, job.memory_gib)
    rss = budget.resident_gib()
    hold = [p.model.get_submodule(n) for n in p.hold]
    try:
        with budget.guarded(
            f"dependency graph of {job.hooks.name}",
            job.memory_gib + extra_gib,
            job.settings.max_graph_s,
            hint=hint,
            keys=BUDGET_KEYS,
        ):
            p.pruner, _ = _graph(p, hold)
    except build.Untraceable as e:
        error = PbkitError(str(e))
        error.__cause__ = e.__cause__
        raise _Failed(error) from e
    except budget.OverBudget as over:
        if hint != GRAPH_HINT:
            raise
        budget.release_memory()  # freed but not handed back: the next trace reuses it first
        raise _Failed(over, extra_gib=max(0.0, budget.resident_gib() - rss)) from over


def _collect(p: _Pruning) -> None:
    """A data-driven criterion's look at the calibration batches (before every step)."""
    method = p.job.method
    if method.collect is not None:
        assert p.job.calibration is not None
        method.collect(p.spec.importance, p.model, p.pruner, p.job.calibration)


def _macs_steps(p: _Pruning) -> _Steps:
    """Step until the MACs target is reached or the schedule ends; the model is run once after the
    last step where its MACs were read from its weights' shapes alone."""
    base, target = p.counter.base, p.job.settings.speedup

    def reached(macs: int) -> bool:
        return base / max(macs, 1) >= target

    done, exact = _Steps(0, [], base), True
    while done.steps < p.job.settings.iterative_steps:
        exact = _step(p, done, reached)
        if exact and reached(done.macs):
            break
    with _failing(
        f"after pruning step {done.steps} the model no longer runs", CUT_WRONG, _StepFailed
    ):
        if not exact:
            done.macs = p.counter.exact()
        elif p.counter.free == 0:  # MACs read from the weights' shapes alone: run it once
            with torch.no_grad():
                p.model(p.example)
    return done


def _step(p: _Pruning, done: _Steps, reached: Callable[[int], bool]) -> bool:
    """One pruning step and the MACs after it (``done`` updated); whether they are exact."""
    hooks = p.job.hooks
    if hooks.between_steps is not None:
        p.clock.exclude(hooks.between_steps(done.steps + 1))
    t0 = time.perf_counter()
    _collect(p)
    with _failing(
        f"pruning step {done.steps + 1} failed inside torch-pruning", MAPPED_WRONG, _StepFailed
    ):
        p.pruner.step()
        cuts.after_step(p.model, p.pruner)
    done.times.append(time.perf_counter() - t0)
    done.steps += 1
    with _failing(
        f"after pruning step {done.steps} the model no longer runs", CUT_WRONG, _StepFailed
    ):
        done.macs, exact = p.counter.after_step(reached)
    if hooks.on_step is not None:
        hooks.on_step(done.steps, p.counter.base / max(done.macs, 1))  # (a lower bound if inexact)
    return exact


def _latency_steps(p: _Pruning) -> _Steps:
    """Prune to a measured speed-up (:func:`pbkit.pruning.knapsack.run`)."""
    job, s = p.job, p.job.settings
    assert s.latency is not None and job.hooks.latency_tools is not None
    run = knapsack.run(
        p.model,
        p.pruner,
        p.spec.importance,
        job.hooks.latency_tools,
        knapsack.Goal(s.speedup, s.scope, job.max_ratio, job.input_size, s.latency),
        knapsack.StepHooks(
            after_prune=lambda: cuts.after_step(p.model, p.pruner),
            collect=(lambda: _collect(p)) if job.method.collect is not None else None,
            between_steps=job.hooks.between_steps,
            on_step=job.hooks.on_text,
        ),
    )
    p.clock.exclude(run.trained_s + run.table.time_s + run.measure_s)
    return _Steps(run.steps, run.step_times, p.counter.exact(), run)


def _result(p: _Pruning, done: _Steps) -> PruneResult:
    """The result, or the error of a target not reached."""
    loop_s = p.clock.loop()
    job, s, base = p.job, p.job.settings, p.counter.base
    achieved = base / max(done.macs, 1)
    if done.latency is not None:  # (the MACs speed-up is the result's achieved_speedup)
        achieved = done.latency.measured_speedup
    if done.macs == base:
        raise PbkitError(
            f"nothing was pruned in {done.steps} steps: the {job.method.key} criterion could not"
            " rank the channels (every score equal?)"
        )
    if achieved < s.speedup:
        floor = (
            " (the protected scope keeps >= 10% of every group)" if s.scope == "protected" else ""
        )
        raise PbkitError(
            f"speed-up target {s.speedup}x is unreachable: {achieved:.2f}x after "
            f"{done.steps} steps in the {s.scope} scope{floor}"
        )
    return PruneResult(
        macs_base=base,
        macs_pruned=done.macs,
        params_base=p.params_base,
        params_pruned=counts.count_params(p.model),
        steps=done.steps,
        step_time_s=sum(done.times) / len(done.times),
        total_time_s=p.clock.total(),
        ignored_layers=job.ignored_layers,
        held_fixed=sorted(p.hold),
        max_pruning_ratio=job.max_ratio,
        sparsified=p.sparsified,
        latency_run=done.latency,
        real_counts=p.counter.real_counts,
        loop_time_s=loop_s,
    )
