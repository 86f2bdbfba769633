"""Every repair pbkit makes to torch-pruning, in one package.

torch-pruning (1.6.1, :data:`~pbkit.pruning.repairs.common.WRITTEN_FOR`) builds a dependency graph
of a model's channels by tracing one forward pass, then prunes channel groups through it. On many
models it gets something wrong; each repair below fixes one thing, and each has a test that shows
torch-pruning alone still gets it wrong (``tests/test_repairs_needed.py``), so a release that
fixes one upstream is noticed.

- :mod:`.graph`: how the graph is built and maps indices (shapes only, concat sizes, channel
  splits, astray groups, gated token splits, empty expand, zero-channel reshape, one-channel
  groups, square maps);
- :mod:`.cuts`: what a cut leaves behind (extra channel tensors, split offsets, view shapes,
  attention widths);
- :mod:`.held`: blocks the graph must see as one node, or holds fixed (window attention, patch
  merging, partitions, channel gates, blur pools, global context, mixed convolutions, channel
  shuffle, held blocks), with :mod:`.pruners`, the pruners that cut their weights;
- :mod:`.common`: the release they were written for (checked at import), and
  :class:`~pbkit.pruning.repairs.common.RepairBroken`, the error of a repair that no longer fits the
  installed torch-pruning (told apart from a model the graph cannot trace).

Patches live only as long as the ``with`` block that applies them. The prune loop
(:mod:`pbkit.pruning.build`, :mod:`pbkit.pruning.loop`) decides when each applies.
"""

from pbkit.pruning.repairs.common import WRITTEN_FOR, RepairBroken

# every repair by name (the name RepairBroken gives), and the module that makes it
REPAIRS = {
    "shapes only": "graph",
    "concat sizes": "graph",
    "channel splits": "graph",
    "astray groups": "graph",
    "gated token splits": "graph",
    "empty expand": "graph",
    "zero-channel reshape": "graph",
    "one-channel groups": "graph",
    "square maps": "graph",
    "extra channel tensors": "cuts",
    "split offsets": "cuts",
    "view shapes": "cuts",
    "attention widths": "cuts",
    "window attention": "held",
    "patch merging": "held",
    "partitions": "held",
    "channel gates": "held",
    "blur pools": "held",
    "global context": "held",
    "mixed convolutions": "held",
    "channel shuffle": "held",
    "held blocks": "held",
}

__all__ = ["REPAIRS", "WRITTEN_FOR", "RepairBroken"]
