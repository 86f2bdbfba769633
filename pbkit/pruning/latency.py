"""Pruning against a measured latency instead of MACs (``prune.target: latency``).

In the spirit of NetAdapt and HALP, checked by measurement:

- a per-layer **latency table**: each prunable convolution and linear layer, at the run's input
  shape, timed on the target backend over a grid of widths, aligned (multiples of ``align``) and
  unaligned, for its input and for its output width (a separable model: ``T(cin, cout) =
  T(cin, C_out) * T(C_in, cout) / T(C_in, C_out)``), each timing less the backend's per-call
  overhead (which a layer timed alone pays and a layer inside a model does not); the model's
  predicted latency is its own per-call overhead plus the sum over its layers, scaled to the whole
  model's measured latency;
- **group selection** as a greedy knapsack: the next channels to go are those with the least
  importance per predicted millisecond saved, in whole steps of the width grid the table shows is
  faster (aligned widths where unaligned ones cost more; this is where alignment comes from,
  without a hand-set ``round_to``);
- a **closed loop**: once the prediction reaches ``target ** FIRST_CHECK`` (short of the target,
  since predictions run optimistic), the whole model is measured end to end against the dense one
  (the bench protocol); while the measured speed-up falls short of the target beyond its noise
  (the lower bound of its interval), pruning goes on in measured steps, damped far from the
  target and small near it, and stops at the first that meets it.

Nothing here runs a backend: the table's timings and the end-to-end measurement come in as
callables (:mod:`pbkit.measure.layers` makes them for every backend ``pbkit bench`` has).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

ALIGN = 8  # the width step probed for alignment (SIMD lanes of fp32 AVX2, tensor-core tiles)
# the knapsack rounds prune to a predicted speed-up of target ** this; measured steps follow
FIRST_CHECK = 0.7
DAMPING, FAR_STEP = (
    0.6,
    0.25,
)  # far from the target, a measured step removes this share of the gap, at most this
# an unaligned width that costs this much more than the aligned one below it counts as slower
PENALTY = 0.03
# a layer's compute (its time alone less the per-call overhead) is kept at least this share of it
MIN_COMPUTE = 0.05


@dataclass(frozen=True)
class Layer:
    """A tabled layer of the dense model: what its timing depends on besides its widths."""

    name: str
    kind: str  # conv | depthwise | linear
    cin: int
    cout: int
    shape: tuple[
        int, ...
    ]  # its input at the run's batch and input size (channels at dim 1, or last for linear)
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    bias: bool = True

    @property
    def signature(self) -> str:
        """Everything but its widths: layers that share it share a table entry."""
        spatial = self.shape[2:] if self.kind != "linear" else self.shape[1:-1]
        return (
            f"{self.kind}:{self.cin}x{self.cout}:in{list(self.shape[:1]) + list(spatial)}"
            f":k{list(self.kernel)}"
            f":s{list(self.stride)}:p{list(self.padding)}:d{list(self.dilation)}:b{int(self.bias)}"
        )

    def module(self, cin: int, cout: int) -> nn.Module:
        """A fresh layer of this kind with these widths (for timing)."""
        if self.kind == "linear":
            return nn.Linear(cin, cout, bias=self.bias)
        groups = cin if self.kind == "depthwise" else 1
        return nn.Conv2d(
            cin,
            cout if self.kind != "depthwise" else cin,
            self.kernel,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=groups,
            bias=self.bias,
        )

    def input(self, cin: int) -> torch.Tensor:
        shape = list(self.shape)
        shape[-1 if self.kind == "linear" else 1] = cin
        return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def probe(model: nn.Module, example: torch.Tensor) -> dict[str, Layer]:
    """The model's convolutions (plain and depthwise) and linear layers with the input shape each
    sees on ``example``; other grouped convolutions are left to the table's scale."""
    found: dict[str, Layer] = {}
    hooks = []

    def hook(name: str) -> Callable[..., None]:
        def record(m: nn.Module, args: tuple[Any, ...], _out: Any) -> None:
            if name in found or not args or not isinstance(args[0], torch.Tensor):
                return
            shape = tuple(int(s) for s in args[0].shape)
            if isinstance(m, nn.Conv2d) and isinstance(m.padding, tuple):
                depthwise = m.groups == m.in_channels == m.out_channels and m.groups > 1
                if m.groups != 1 and not depthwise:
                    return
                found[name] = Layer(
                    name,
                    "depthwise" if depthwise else "conv",
                    m.in_channels,
                    m.out_channels,
                    shape,
                    tuple(m.kernel_size),
                    tuple(m.stride),
                    tuple(m.padding),
                    tuple(m.dilation),
                    m.bias is not None,
                )
            elif isinstance(m, nn.Linear):
                found[name] = Layer(
                    name, "linear", m.in_features, m.out_features, shape, bias=m.bias is not None
                )

        return record

    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            hooks.append(m.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return found


def widths_of(model: nn.Module, layers: Iterable[str]) -> dict[str, tuple[int, int]]:
    mods = dict(model.named_modules())
    out = {}
    for name in layers:
        m = mods.get(name)
        if isinstance(m, nn.Conv2d):
            out[name] = (m.in_channels, m.out_channels)
        elif isinstance(m, nn.Linear):
            out[name] = (m.in_features, m.out_features)
    return out


def grid(full: int, anchors: int, align: int = ALIGN) -> tuple[list[int], list[int]]:
    """Widths to time along one dimension of size ``full``: aligned ones (multiples of ``align``,
    ``full`` included) near ``anchors`` evenly spaced fractions, and the unaligned width just above
    each (one more channel). A dimension narrower than two steps is timed at plain anchors."""
    fractions = np.linspace(0.1, 1.0, max(anchors, 2))
    if full < 2 * align:
        plain = sorted({max(1, round(full * f)) for f in fractions} | {full})
        return plain, []
    aligned = sorted(
        {max(align, align * round(full * f / align)) for f in fractions if full * f >= align / 2}
        | ({full} if full % align == 0 else set())
    )
    aligned = [w for w in aligned if w <= full]
    unaligned = sorted({w + 1 for w in aligned if w + 1 < full})
    if full % align:
        unaligned = sorted(set(unaligned) | {full})
    return aligned, unaligned


@dataclass
class Curve:
    """Latency against one width, piecewise linear between timed widths; below the narrowest,
    proportional to the width."""

    widths: list[int]
    ms: list[float]

    def __call__(self, w: Any) -> Any:
        x = np.asarray(w, dtype=np.float64)
        xs, ys = np.asarray(self.widths, dtype=np.float64), np.asarray(self.ms, dtype=np.float64)
        inside = np.interp(x, xs, ys)
        below = ys[0] * x / xs[0]
        return np.where(x < xs[0], below, inside)


@dataclass
class Axis:
    """One dimension (input or output width) of a layer's cost: the aligned and the unaligned
    curve."""

    aligned: Curve | None
    unaligned: Curve | None
    align: int = ALIGN

    def __call__(self, w: Any) -> Any:
        x = np.asarray(w)
        if self.aligned is None or self.unaligned is None:
            only = self.aligned or self.unaligned
            assert only is not None
            return only(x)
        return np.where(x % self.align == 0, self.aligned(x), self.unaligned(x))

    def penalty(self) -> float:
        """How much more an unaligned width costs than the aligned one below it (median over the
        grid); 0 where the axis has no aligned/unaligned pairs."""
        if self.aligned is None or self.unaligned is None:
            return 0.0
        pairs = [
            (a, self.aligned(a)) for a in self.aligned.widths if a + 1 in self.unaligned.widths
        ]
        if not pairs:
            return 0.0
        return float(
            np.median(
                [float(self.unaligned(a + 1)) / max(float(ms), 1e-12) - 1.0 for a, ms in pairs]
            )
        )


@dataclass
class Cost:
    """A layer signature's latency as a function of its widths (separable)."""

    kind: str
    full: tuple[int, int]
    full_ms: float
    out: Axis  # at full input width (for depthwise: the channels)
    inp: Axis | None  # at full output width (None for depthwise)
    overhead_ms: float = (
        0.0  # the per-call cost taken off every timing (a layer alone pays it, one in a model not)
    )

    def __call__(self, cin: Any, cout: Any) -> Any:
        if self.inp is None:
            return self.out(cout)
        return self.out(cout) * self.inp(cin) / max(self.full_ms, 1e-12)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Cost:
        def axis(a: dict[str, Any] | None) -> Axis | None:
            if a is None:
                return None
            made = [Curve(**a[k]) if a[k] else None for k in ("aligned", "unaligned")]
            return Axis(made[0], made[1], align=a["align"])

        out = axis(d["out"])
        assert out is not None
        full = (int(d["full"][0]), int(d["full"][1]))
        return cls(
            d["kind"],
            full,
            float(d["full_ms"]),
            out,
            axis(d["inp"]),
            float(d.get("overhead_ms", 0.0)),
        )


Timer = Callable[[Layer, int, int], float]  # (layer, cin, cout) -> median ms on the backend


def monotone(ms: list[float]) -> list[float]:
    """The closest non-decreasing sequence (least squares, pool adjacent violators): a wider layer
    is not faster, so a dip in the timings is noise, and the knapsack must not chase it."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in ms:
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, n = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += n
    return [b[0] / b[1] for b in blocks for _ in range(int(b[1]))]


def time_cost(
    layer: Layer, timer: Timer, anchors: int, align: int = ALIGN, overhead: float = 0.0
) -> Cost:
    """Time one signature over its width grid, twice (widest first, then narrowest first; the
    lower of the two kept, so that neither a cold start nor a drift in the machine's speed bends
    the curves), take the per-call ``overhead`` off (what running anything costs on the backend:
    a layer timed alone pays it, a layer inside a model does not; on small inputs it is most of
    the time, and left in it would look like a cost no pruning saves: every predicted saving would
    come out too small and the first measurement overshoot), then make each curve non-decreasing
    and pass through the full width's time."""
    dw = layer.kind == "depthwise"
    out_w, inp_w = grid(layer.cout, anchors, align), None if dw else grid(layer.cin, anchors, align)
    points = [(layer.cin, layer.cout)]
    points += [
        (w, w) if dw else (layer.cin, w) for w in sorted(set(out_w[0] + out_w[1]) - {layer.cout})
    ]
    if inp_w is not None:
        points += [(w, layer.cout) for w in sorted(set(inp_w[0] + inp_w[1]) - {layer.cin})]
    ordered = sorted(points, key=lambda p: -p[0] * p[1])
    timed = {p: timer(layer, *p) for p in ordered}
    for p in reversed(ordered):
        timed[p] = min(timed[p], timer(layer, *p))
    timed = {p: max(t - overhead, MIN_COMPUTE * t) for p, t in timed.items()}
    full_ms = timed[(layer.cin, layer.cout)]

    def axis(
        widths: tuple[list[int], list[int]], full: int, at: Callable[[int], tuple[int, int]]
    ) -> Axis:
        made: list[Curve | None] = []
        for ws in widths:
            if not ws:
                made.append(None)
                continue
            ms = monotone([full_ms if w == full else timed[at(w)] for w in ws])
            if (
                full in ws
            ):  # the curve meets the full width's time there (the separable model's anchor)
                ms = [v * full_ms / ms[ws.index(full)] for v in ms]
            made.append(Curve(ws, ms))
        return Axis(made[0], made[1], align)

    out = axis(out_w, layer.cout, (lambda w: (w, w)) if dw else (lambda w: (layer.cin, w)))
    inp = None if inp_w is None else axis(inp_w, layer.cin, lambda w: (w, layer.cout))
    return Cost(layer.kind, (layer.cin, layer.cout), full_ms, out, inp, overhead)


@dataclass
class Table:
    """The per-layer latency table of one model on one backend, precision and batch."""

    layers: dict[str, Layer]
    costs: dict[str, Cost]  # by signature
    # (measured whole-model latency - fixed_ms) / sum of the layers' (calibrated on the dense model)
    scale: float = 1.0
    fixed_ms: float = 0.0  # the whole model's per-call overhead: no pruning saves it
    info: dict[str, Any] = field(
        default_factory=dict
    )  # backend, precision, batch, cache hits, build time

    def layer_ms(self, name: str, cin: Any, cout: Any) -> Any:
        layer = self.layers[name]
        return self.costs[layer.signature](cin, cout)

    def raw(self, widths: dict[str, tuple[int, int]]) -> float:
        return sum(
            (float(self.layer_ms(n, *w)) for n, w in widths.items() if n in self.layers), 0.0
        )

    def predict(self, widths: dict[str, tuple[int, int]]) -> float:
        """The model's predicted latency (ms) at these layer widths."""
        return self.fixed_ms + self.scale * self.raw(widths)

    def calibrate(
        self, dense_ms: float, widths: dict[str, tuple[int, int]], overhead_ms: float = 0.0
    ) -> float:
        """Fit the table to the dense model's measured latency: its per-call ``overhead_ms`` is
        fixed, the rest scales with the layers' sum (the untabled operations along with them).
        Returns that sum (ms)."""
        raw = self.raw(widths)
        self.fixed_ms = overhead_ms if 0 <= overhead_ms < dense_ms else 0.0
        self.scale = (dense_ms - self.fixed_ms) / raw if raw > 0 else 1.0
        return raw

    def penalty(self, name: str, dim: str) -> float:
        c = self.costs[self.layers[name].signature]
        axis = c.out if dim == "out" or c.inp is None else c.inp
        return axis.penalty()

    def to_json(self) -> dict[str, Any]:
        return {
            "info": self.info,
            "scale": self.scale,
            "fixed_ms": self.fixed_ms,
            "layers": {
                n: {**asdict(layer), "signature": layer.signature}
                for n, layer in self.layers.items()
            },
            "costs": {s: c.to_json() for s, c in self.costs.items()},
        }


def build_table(
    layers: dict[str, Layer],
    timer: Timer,
    anchors: int,
    cached: dict[str, Cost] | None = None,
    on_entry: Callable[[int, int, str], None] | None = None,
    overhead: Callable[[Layer], float] | None = None,
) -> tuple[Table, int]:
    """Time every signature not already in ``cached`` (less its per-call ``overhead``, if given);
    returns the table and how many were timed."""
    costs: dict[str, Cost] = {}
    todo = sorted({layer.signature: layer for layer in layers.values()}.items())
    timed = 0
    for i, (sig, layer) in enumerate(todo):
        if cached is not None and sig in cached:
            costs[sig] = cached[sig]
        else:
            costs[sig] = time_cost(
                layer, timer, anchors, overhead=overhead(layer) if overhead is not None else 0.0
            )
            timed += 1
        if on_entry is not None:
            on_entry(i + 1, len(todo), sig)
    return Table(layers, costs), timed


# --- the knapsack -------------------------------------------------------------------------------


@dataclass
class Option:
    """Removing the ``k`` least important units of one group: what it costs and saves."""

    key: Any
    k: int
    importance: float  # summed (normalised) importance of what goes
    saved_ms: float  # predicted latency saved

    @property
    def ratio(self) -> float:
        return self.importance / self.saved_ms if self.saved_ms > 0 else math.inf


def best_option(
    key: Any, sorted_imp: np.ndarray, saved: np.ndarray, ks: np.ndarray, need: float | None = None
) -> Option | None:
    """The group's best removal among ``ks`` (counts of units; ``saved[i]`` the predicted ms the
    i-th saves): least importance per millisecond saved, saving no more than ``need`` ms (the
    smallest removal that saves anything is always allowed), so that one choice does not overshoot
    the goal. None when nothing saves time."""
    if len(ks) == 0:
        return None
    cum = np.cumsum(np.clip(sorted_imp, 0, None))
    imp = cum[ks - 1]
    ok = saved > 1e-9
    if not ok.any():
        return None
    if need is not None:
        smallest = int(np.argmax(ok))
        ok &= saved <= need
        ok[smallest] = True
    ratios = np.where(ok, imp / np.where(ok, saved, 1.0), np.inf)
    i = int(np.argmin(ratios))
    return Option(key, int(ks[i]), float(imp[i]), float(saved[i]))


def pick(options: Iterable[Option | None]) -> Option | None:
    """The greedy knapsack's next choice: the option with the least importance per ms saved."""
    best = None
    for o in options:
        if o is not None and (best is None or o.ratio < best.ratio):
            best = o
    return best


# --- the closed loop ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencySettings:
    backend: str
    precision: str = "fp32"
    batch: int = 1
    rounds: int = (
        6  # knapsack rounds (importance re-scored between them) before the first measurement
    )
    step: float = 0.04  # closed loop: most predicted latency removed per measured step (fraction)
    min_step: float = 0.01  # ... and least
    max_checks: int = 12  # end-to-end measurements before giving up
    anchors: int = 6  # width grid anchors per dimension


@dataclass
class Measured:
    """One end-to-end measurement of the pruned model against the dense one."""

    speedup: float
    ci: tuple[float, float]
    dense_ms: float
    pruned_ms: float
    cov: float
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def realisation(predicted: float, measured: float) -> float:
    """alpha in measured = predicted ** alpha (how much of a predicted speed-up shows), from one
    point; 1 where the prediction is no speed-up."""
    if predicted <= 1.0001 or measured <= 0:
        return 1.0
    return max(math.log(max(measured, 1e-6)) / math.log(predicted), 0.05)


def next_goal(
    current_ms: float,
    predicted_speedup: float,
    measured: Measured,
    target: float,
    s: LatencySettings,
) -> float:
    """The predicted latency to prune to next, when ``measured`` falls short of ``target``: the
    gap in measured speed-up mapped through the realisation seen so far, approached from below
    (far away, part of the way there, at most ``FAR_STEP``; near, in steps of ``min_step`` to
    ``step``), so that the loop overshoots by at most about one small step."""
    alpha = realisation(predicted_speedup, measured.speedup)
    needed = float(
        (target / max(measured.ci[0], 1e-6)) ** (1.0 / alpha)
    )  # predicted factor still to go
    gap = 1.0 - 1.0 / needed
    cut = min(gap * DAMPING, FAR_STEP) if gap > s.step else min(max(gap, s.min_step), s.step)
    return current_ms * (1.0 - cut)


def meets(m: Measured, target: float) -> bool:
    """The measured speed-up meets the target beyond the measured noise: its interval's lower
    bound."""
    return m.ci[0] >= target
