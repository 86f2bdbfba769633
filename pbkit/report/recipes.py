"""Across finetuning recipes: the method x recipe matrix and whether the top methods' order holds
under every recipe (cross-finetuning), what one recipe change (the LR, KD on/off) did to every
method, and each scratch row (``init: scratch``, SX-A) next to the pruned rows of its
architecture."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pbkit.report import setups
from pbkit.report.rank import Board, GroupInfo, flat, recipe_facts, s1
from pbkit.report.stats import Entry, score, separable, spread

# a cell of the method x recipe matrix: (mean, std over seeds, n, TA)
Cell = tuple[float | None, float, int, float | None]


@dataclass(kw_only=True)
class Verdict:
    """Two of the top methods under the recipes they share."""

    a: str
    b: str
    per_recipe: dict[str, str]  # recipe label -> a | b (separably better) | tie
    verdict: str
    holds: bool  # one wins under every recipe


@dataclass(kw_only=True)
class CrossFinetuning:
    """One comparison (same S1 and bases) finetuned with more than one recipe."""

    model: str
    dataset: str
    scope: str
    target: float
    recipes: list[str]
    matrix: dict[str, dict[str, Cell]]  # method -> recipe label -> cell
    top: list[str]  # the leading methods by their mean over the recipes
    verdicts: list[Verdict]
    setup: str  # S3.1 (same finetuning epochs) | S2


@dataclass(kw_only=True)
class MethodChange:
    """What one recipe change did to one method's final metric and TA."""

    method: str
    before: float
    after: float
    change: float
    ta_change: float | None
    separable: bool


@dataclass(kw_only=True)
class RecipeEffect:
    """Two recipes of one comparison that differ in one field (or in KD only)."""

    model: str
    dataset: str
    scope: str
    target: float
    field: str  # the field that differs, or kd
    from_recipe: str  # KD off, or the smaller value
    to_recipe: str
    per_method: list[MethodChange]
    mean_change: float


@dataclass(kw_only=True)
class PrunedBeside:
    """A pruned row of a scratch row's architecture, under one recipe."""

    pruned: float | None
    pruned_std: float
    gap: float  # pruned - scratch
    setup: str | None  # between the two (SX-A: the same total epochs)
    why: str | None  # what breaks it
    separable: bool


@dataclass(kw_only=True)
class ScratchRow:
    """A scratch row and the pruned rows of its architecture per recipe."""

    model: str
    dataset: str | None
    scope: str
    target: float
    method: str
    scratch: float | None
    scratch_std: float
    n: int
    epochs: int | None
    pruned: dict[str, PrunedBeside]  # recipe label -> the pruned row


def cross_finetuning(board: Board, top: int = 3) -> list[CrossFinetuning]:
    """Per comparison with more than one finetuning recipe (same S1 and bases): the method x recipe
    matrix of means, and for each pair of the top methods (by their mean over the recipes every
    one of them ran) whether one beats the other under every recipe, or the order flips, or they
    are not separable."""
    out = []
    comparisons: dict[tuple[str, str, str, float, str], Board] = {}
    for info, g in board:
        if info.init == "pruned":
            key = (
                info.model,
                info.dataset,
                info.scope,
                info.target,
                json.dumps(g[0].facts["base"]),
            )
            comparisons.setdefault(key, []).append((info, g))
    for key, groups in comparisons.items():
        if len(groups) < 2:
            continue
        groups.sort(key=lambda ig: ig[0].recipe_label)
        recipes = [info.recipe_label for info, _ in groups]
        matrix: dict[str, dict[str, Entry]] = {}
        for info, g in groups:
            for e in g:
                matrix.setdefault(e.method, {})[info.recipe_label] = e
        # the leaders by their mean over the recipes every method ran (else over all it ran)
        common = [r for r in recipes if all(r in row for row in matrix.values())] or recipes
        means = {
            m: (
                sum(score(row[r]) or 0 for r in common if r in row)
                / max(sum(r in row for r in common), 1)
            )
            for m, row in matrix.items()
        }
        leaders = sorted(matrix, key=lambda m: -means[m])[:top]
        verdicts = []
        for i, a in enumerate(leaders):
            for b in leaders[i + 1 :]:
                shared = [r for r in recipes if r in matrix[a] and r in matrix[b]]
                if len(shared) < 2:
                    continue
                wins = {
                    r: (
                        "a"
                        if separable(matrix[a][r], matrix[b][r])
                        and (score(matrix[a][r]) or 0) > (score(matrix[b][r]) or 0)
                        else "b"
                        if separable(matrix[a][r], matrix[b][r])
                        else "tie"
                    )
                    for r in shared
                }
                verdicts.append(
                    Verdict(
                        a=a,
                        b=b,
                        per_recipe=wins,
                        verdict=_verdict(a, b, shared, wins, matrix),
                        holds=len(set(wins.values())) == 1 and "tie" not in wins.values(),
                    )
                )
        out.append(
            CrossFinetuning(
                model=key[0],
                dataset=key[1],
                scope=key[2],
                target=key[3],
                recipes=recipes,
                matrix={
                    m: {r: (score(e), spread(e), e.n, e.ta) for r, e in row.items()}
                    for m, row in matrix.items()
                },
                top=leaders,
                verdicts=verdicts,
                setup="S3.1" if _same_epochs(groups) else "S2",
            )
        )
    return out


def _verdict(
    a: str, b: str, shared: list[str], wins: dict[str, str], matrix: dict[str, dict[str, Entry]]
) -> str:
    if all(w == "a" for w in wins.values()):
        return f"{a} beats {b} under every recipe ({'; '.join(shared)})"
    if all(w == "b" for w in wins.values()):
        return f"{b} beats {a} under every recipe ({'; '.join(shared)})"
    if "a" in wins.values() and "b" in wins.values():
        return (
            f"the order flips: {a} wins with"
            f" {'; '.join(r for r, w in wins.items() if w == 'a')}, {b} with"
            f" {'; '.join(r for r, w in wins.items() if w == 'b')}"
        )
    if all(w == "tie" for w in wins.values()):
        ahead = {
            r: a if (score(matrix[a][r]) or 0) >= (score(matrix[b][r]) or 0) else b for r in shared
        }
        means = (
            "; by the means "
            + ("the order flips: " if len(set(ahead.values())) > 1 else "")
            + ", ".join(
                f"{m} is ahead with {'; '.join(r for r in shared if ahead[r] == m)}"
                for m in dict.fromkeys(ahead.values())
            )
        )
        return (
            f"{a} and {b} are not separable under any recipe they share"
            f" ({'; '.join(shared)}){means}"
        )
    lead = a if "a" in wins.values() else b
    return (
        f"{lead} wins with {'; '.join(r for r, w in wins.items() if w != 'tie')};"
        f" not separable with {'; '.join(r for r, w in wins.items() if w == 'tie')}"
    )


def _same_epochs(groups: Board) -> bool:
    return len({g[0].facts["ft_epochs"] for _, g in groups}) == 1


def recipe_effects(board: Board) -> list[RecipeEffect]:
    """For every two recipes of one comparison that differ in one field only (the learning rate,
    KD on/off): per method, the change of the final metric and of TA from one to the other (read
    as KD off -> on, and smaller -> larger value)."""
    out = []
    pruned = [(info, g) for info, g in board if info.init == "pruned"]
    for i, first in enumerate(pruned):
        for second in pruned[i + 1 :]:
            if _s1(first[0]) != _s1(second[0]):
                continue
            fa, fb = _with_base(first[1][0]), _with_base(second[1][0])
            differ = [k for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]
            kd = bool(differ) and all(k.startswith("ft_recipe.kd.") for k in differ)
            if len(differ) != 1 and not kd:
                continue
            if kd:
                field = "kd"
                to, frm = (first, second) if fa.get("ft_recipe.kd.enabled") else (second, first)
            else:
                field = differ[0].split(".", 1)[-1]
                va, vb = fa.get(differ[0]), fb.get(differ[0])
                larger = isinstance(va, int | float) and isinstance(vb, int | float) and va > vb
                to, frm = (first, second) if larger else (second, first)
            before = {e.method: e for e in frm[1]}
            per = []
            for e in to[1]:
                o = before.get(e.method)
                if o is None:
                    continue
                se, so = score(e), score(o)
                if se is None or so is None:
                    continue
                per.append(
                    MethodChange(
                        method=e.method,
                        before=so,
                        after=se,
                        change=se - so,
                        ta_change=(
                            (e.ta - o.ta) if e.ta is not None and o.ta is not None else None
                        ),
                        separable=separable(e, o),
                    )
                )
            if per:
                info = to[0]
                out.append(
                    RecipeEffect(
                        model=info.model,
                        dataset=info.dataset,
                        scope=info.scope,
                        target=info.target,
                        field=field,
                        from_recipe=frm[0].recipe_label,
                        to_recipe=to[0].recipe_label,
                        per_method=per,
                        mean_change=sum(p.change for p in per) / len(per),
                    )
                )
    return out


def _with_base(e: Entry) -> dict[str, Any]:
    """The recipe's facts and the bases: two recipes compared must differ in one field only."""
    return {**flat({"base": e.facts["base"]}), **recipe_facts(e)}


def _s1(info: GroupInfo) -> tuple[str, str, str, float]:
    return (info.model, info.dataset, info.scope, info.target)


def scratch_rows(board: Board) -> list[ScratchRow]:
    """Each scratch row next to the pruned rows of the same architecture (method, S1, bases): the
    setup between them (SX-A when the total epochs match) and the gap per recipe."""
    out = []
    pruned = [(info, e) for info, g in board if info.init == "pruned" for e in g]
    for info, g in board:
        if info.init != "scratch":
            continue
        for s in g:
            mates = [(i, e) for i, e in pruned if e.method == s.method and s1(e) == s1(s)]
            per = {}
            for i, e in mates:
                setup, why = setups.infer([s.facts, e.facts])
                per[i.recipe_label] = PrunedBeside(
                    pruned=score(e),
                    pruned_std=spread(e),
                    gap=(score(e) or 0) - (score(s) or 0),
                    setup=setup,
                    why=why,
                    separable=separable(e, s),
                )
            out.append(
                ScratchRow(
                    model=s.model,
                    dataset=s.dataset,
                    scope=s.scope,
                    target=s.target,
                    method=s.method,
                    scratch=score(s),
                    scratch_std=spread(s),
                    n=s.n,
                    epochs=s.facts["total_epochs"],
                    pruned=per,
                )
            )
    return out
