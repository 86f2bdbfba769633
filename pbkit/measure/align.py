"""The channel-alignment advisor: for the layers that matter, each layer timed alone on the backend
at its pruned output width and at the nearest multiples of 8, 16, 32 and 64, and the
``prune.round_to`` whose widths buy the most output channels per millisecond.

Kernels are often tuned for widths that are multiples of a vector or tile size (8, 16, 32, 64): a
pruned layer of 37 channels may cost as much as one of 48. The advice is per layer and summed over
the layers named (the ones where pruned time went, from ``pbkit explain``, else the largest by
MACs); the model-level effect is what a run pruned with that ``round_to`` then measures.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

from torch import nn

from pbkit.core import record
from pbkit.core.clock import utc_now
from pbkit.measure.layers import Timings
from pbkit.pruning.latency import Layer, probe

ALIGNMENTS = (8, 16, 32, 64)
MIN_GAIN = 1.05  # below this, alignment is noise on this backend: no recommendation
NOTE = (
    "each layer timed alone at these widths on this machine; summed over the layers shown. A run "
    "pruned with the recommended prune.round_to measures the model-level effect"
)


def nearest(width: int, align: int) -> int:
    """The multiple of ``align`` nearest ``width`` (ties up), never below ``align``."""
    return max(align, int(math.floor(width / align + 0.5)) * align)


def gains(
    timed: dict[str, dict[int, float]], widths: dict[str, int]
) -> tuple[dict[int, float], dict[int, float], float]:
    """Per alignment: the median over the layers of each layer's time per output channel at its
    pruned width over that at the aligned width (the median: one layer's noisy timing does not
    decide), the aligned layers' summed time, and the pruned layers' summed time."""
    pruned_ms = sum(timed[n][w] for n, w in widths.items())
    gain, aligned_ms = {}, {}
    for a in ALIGNMENTS:
        per_layer = []
        for n, w in widths.items():
            t_w, t_a = timed[n][w], timed[n][nearest(w, a)]
            if t_w > 0 and t_a > 0:
                per_layer.append((t_w / w) / (t_a / nearest(w, a)))
        aligned_ms[a] = sum(timed[n][nearest(w, a)] for n, w in widths.items())
        gain[a] = statistics.median(per_layer) if per_layer else 0.0
    return gain, aligned_ms, pruned_ms


def recommend(gain: dict[int, float]) -> int | None:
    best = max(gain, key=lambda a: (gain[a], -a))
    return best if gain[best] >= MIN_GAIN else None


def advise(
    time_layer: Callable[[Layer, int, int], float],
    layers: Sequence[Layer],
    where: tuple[str, str, int],
    progress: Callable[[int], None] | None = None,
) -> record.Alignment:
    """Time each layer at its width and the nearest multiples, then recommend a ``round_to``."""
    timed: dict[str, dict[int, float]] = {}
    widths = {L.name: L.cout for L in layers}
    for i, L in enumerate(layers):
        todo = sorted({L.cout, *(nearest(L.cout, a) for a in ALIGNMENTS)})
        timed[L.name] = {w: time_layer(L, L.cin, w) for w in todo}
        if progress is not None:
            progress(i + 1)
    gain, aligned_ms, pruned_ms = gains(timed, widths)
    backend, precision, batch = where
    return record.Alignment(
        backend=backend,
        precision=precision,
        batch=batch,
        utc=utc_now(),
        layers=[
            record.AlignedLayer(
                layer=L.name,
                cin=L.cin,
                cout=L.cout,
                ms=round(timed[L.name][L.cout], 6),
                widths_ms={str(w): round(ms, 6) for w, ms in timed[L.name].items()},
            )
            for L in layers
        ],
        gain={str(a): round(g, 4) for a, g in gain.items()},
        ms_pruned=round(pruned_ms, 6),
        ms_aligned={str(a): round(ms, 6) for a, ms in aligned_ms.items()},
        recommended=recommend(gain),
        note=NOTE,
    )


def layers_that_matter(
    model: nn.Module,
    timings: Timings,
    explained: record.Explained | None,
    count: int,
    dense_widths: dict[str, tuple[int, int]] | None = None,
) -> list[Layer]:
    """The model's convolutions and linear layers where its time goes: the ``count`` slowest by
    ``pbkit explain``'s pruned times where there are some, else the largest by MACs; with the
    dense model's widths (name -> (in, out) channels), only the layers whose output was pruned
    (a width pruning never chose says nothing about alignment)."""
    # a depthwise convolution's width is its input's: it follows, it is not chosen
    found = {n: L for n, L in probe(model, timings.example()).items() if L.kind != "depthwise"}
    if dense_widths is not None:
        found = {
            n: L for n, L in found.items() if n in dense_widths and L.cout < dense_widths[n][1]
        }
    if explained is not None:
        ranked = sorted(explained.layers, key=lambda r: r.pruned_ms, reverse=True)
        names = [r.layer for r in ranked if r.layer in found]
    else:
        names = sorted(found, key=lambda n: _macs(found[n]), reverse=True)
    return [found[n] for n in names[:count]]


def _macs(L: Layer) -> int:
    return L.cin * L.cout * math.prod(L.kernel or (1,)) * math.prod(L.shape[2:] or (1,))
