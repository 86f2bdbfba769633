"""Pruning: the 16 methods (criteria and regularizers) and the loop that prunes to a MACs target
with torch-pruning's dependency graph, repaired where it goes wrong (:mod:`pbkit.pruning.repairs`).

- :mod:`.loop`: :func:`prune_to_target`, its settings, hooks and result, and the retry policy;
- :mod:`.build`: torch-pruning's Pruner for one model, built with the repairs;
- :mod:`.knapsack`, :mod:`.latency`: latency targets (the knapsack and closed loop, the table);
- :mod:`.methods`, :mod:`.criteria`, :mod:`.regularizers`, :mod:`.calibration`: the methods.
"""

from pbkit.pruning.calibration import Calibration
from pbkit.pruning.loop import PruneHooks, PruneResult, PruneSettings, Sparsified, prune_to_target

__all__ = [
    "Calibration",
    "PruneHooks",
    "PruneResult",
    "PruneSettings",
    "Sparsified",
    "prune_to_target",
]
