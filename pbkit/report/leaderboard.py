"""Leaderboards from records, fair by construction (../shared/reference/fairness.md).

- Records that differ only in their seeds are one row: mean +- std and n of every metric.
- Rows are ranked only within a group that holds the setup S3.2 equal (dataset, network, scope,
  target, the base models, finetuning epochs, LR schedule and the rest of its recipe, KD
  included); each group states the strictest setup its rows share (:mod:`pbkit.report.setups`)
  and, when one comparison was split in several groups, which field split it.
- Neighbours whose mean +- std intervals overlap are marked as not separable (rank ``=k``).
- Trainability accuracy (TA, the mean metric over the first LR stage) sits next to the final one.
- Scratch rows (``init: scratch``) sit next to the pruned rows of their architecture (SX-A).
- Across finetuning recipes: the method x recipe matrix, whether the top methods' order holds
  under every recipe, and what one recipe change (the LR, KD on/off) did to every method.

The work is split by concern, one typed step after the other: :mod:`~pbkit.report.discover` finds
the records, :mod:`~pbkit.report.rows` makes a :class:`Row` of each, :mod:`~pbkit.report.stats`
aggregates the seeds into an :class:`Entry`, :mod:`~pbkit.report.rank` groups and ranks them
(a :class:`GroupInfo` per group), :mod:`~pbkit.report.recipes` compares across recipes and
:mod:`~pbkit.report.render` writes tables, markdown, CSV and JSON. This module is their public
face: the CLI, studies and scripts import the leaderboard from here.
"""

from __future__ import annotations

from pbkit.report.discover import find_records, unfinished
from pbkit.report.rank import Board, GroupInfo, leaderboard, rank
from pbkit.report.recipes import (
    CrossFinetuning,
    RecipeEffect,
    ScratchRow,
    cross_finetuning,
    recipe_effects,
    scratch_rows,
)
from pbkit.report.render import (
    board_columns,
    markdown,
    markdown_across,
    render,
    setup_line,
    title,
)
from pbkit.report.rows import Row, point_label, recipe_hash, recipe_line, rows, seed_of
from pbkit.report.stats import METRICS, Entry, aggregate, score, separable, spread

__all__ = [
    "METRICS",
    "Board",
    "CrossFinetuning",
    "Entry",
    "GroupInfo",
    "RecipeEffect",
    "Row",
    "ScratchRow",
    "aggregate",
    "board_columns",
    "cross_finetuning",
    "find_records",
    "leaderboard",
    "markdown",
    "markdown_across",
    "point_label",
    "rank",
    "recipe_effects",
    "recipe_hash",
    "recipe_line",
    "render",
    "rows",
    "scratch_rows",
    "score",
    "seed_of",
    "separable",
    "setup_line",
    "spread",
    "title",
    "unfinished",
]
