"""Pruning: the 16 methods (criteria and regularizers) and the loop that prunes to a MACs target
with torch-pruning's dependency graph."""

from pbkit.prune.calibration import Calibration
from pbkit.prune.loop import PruneResult, PruneSettings, prune_to_target

__all__ = ["Calibration", "PruneResult", "PruneSettings", "prune_to_target"]
