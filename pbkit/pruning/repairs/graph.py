"""Repairs to how torch-pruning builds its dependency graph and maps channel indices through it.

- **shapes only** (:func:`shapes_only`): the graph keeps the traced forward pass's autograd nodes
  for as long as the pruner lives, and with them every activation that pass saved for a backward
  pass that never comes (12 GiB for a ViT at 768 px). Traced under this, those activations are not
  kept (the nodes keep their dims and sizes, all that torch-pruning and these repairs read).
- **concat sizes** (:func:`exact_concat_sizes`): torch-pruning maps a concatenation's inputs onto
  its output channels with widths it infers by walking the graph; where an input comes from a
  ``split`` (timm's cross-stage-partial nets, Res2Net) it reads the wrong chunk's width, or none,
  and adds ``None`` to an integer. The autograd graph knows every input's real shape: a feature
  map concatenation's widths are taken from it, and other concatenations get only the widths
  torch-pruning could not infer.
- **channel splits** (:func:`channel_splits`): splits and slices of a feature map's channels are
  held fixed (torch-pruning maps a chunk that feeds two layers onto the wrong ones); with them the
  **astray groups** check (:func:`astray`): a group whose indices still run past a layer's end is
  held before the first step.
- **gated token splits** (:func:`token_splits`, :func:`token_split_maps`): a gated MLP's
  ``fc1(x).chunk(2, dim=-1)`` is mapped half by half (torch-pruning maps no split of a token
  tensor downstream of a position embedding).
- **empty expand** (:func:`empty_expand`): an expand torch-pruning takes for grouped-query heads
  but that repeats no channel (GCViT's global query) passes indices through instead of dividing by
  zero; **zero-channel reshape** (:func:`zero_channel_reshape`): a reshape torch-pruning infers as
  0 channels (a path from the model's input: SHViT's) gets no map instead of a division by zero.
- **one-channel groups** (:func:`leave_one_channel_groups`): a grouped convolution left with one
  input channel per group makes torch-pruning's magnitude importance index past its scores; those
  groups are left as they are.
- **square maps** (:func:`square_maps`): a parameter outside torch-pruning's layers laid out as an
  image map (Visformer's position embedding) loses channels, not columns.

Patches are undone when their block ends, so nothing outlives the prune loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from typing import Any

import torch
from torch import nn

from pbkit.pruning.repairs.common import fits


@contextlib.contextmanager
def shapes_only() -> Iterator[None]:
    """While the block runs, autograd saves no tensor for a backward pass, only its shape and type
    (an unused saved tensor, read anyway, comes back as an empty one on the meta device)."""

    def pack(t: torch.Tensor) -> tuple[torch.Size, torch.dtype]:
        return t.shape, t.dtype

    def unpack(saved: tuple[torch.Size, torch.dtype]) -> torch.Tensor:
        return torch.empty(saved[0], dtype=saved[1], device="meta")

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield


def _saved_dim(fn: Any, default: int) -> int:
    """The dimension an autograd node (cat, split, slice) worked on; negative dims are saved
    unsigned."""
    dim = int(getattr(fn, "_saved_dim", default))
    return dim - 2**64 if dim >= 2**63 else dim


def _feature_map_channels(node: Any) -> bool:
    """Whether a concatenation joins feature maps (N, C, H, W) along their channels."""
    shape = (
        tuple(node.grad_fn._input_metadata[0].shape)
        if getattr(node.grad_fn, "_input_metadata", None)
        else ()
    )
    return len(shape) == 4 and _saved_dim(node.grad_fn, 0) in (1, -3)


def _traced_sizes(node: Any) -> list[int] | None:
    """Each input's width along the concatenated axis, read from the autograd graph; None where
    the node's inputs cannot be matched one to one with the concatenation's operands."""
    fn = node.grad_fn
    try:
        operands = list(fn.next_functions)
        if not operands or any(f is None for f, _ in operands) or len(operands) != len(node.inputs):
            return None
        if any(n.grad_fn is not f for n, (f, _) in zip(node.inputs, operands, strict=True)):
            return None
        shapes = [tuple(f._input_metadata[nr].shape) for f, nr in operands]
        dim = _saved_dim(fn, 1)
        dim = dim + len(shapes[0]) if dim < 0 else dim
        return [int(s[dim]) for s in shapes]
    except (AttributeError, IndexError, TypeError, RuntimeError):
        return None


@contextlib.contextmanager
def exact_concat_sizes() -> Iterator[None]:
    """While the block runs, concatenations whose input widths torch-pruning cannot infer get
    them from the traced shapes (see the module's docstring)."""
    with fits("concat sizes"):
        from torch_pruning import ops
        from torch_pruning.dependency import index_mapping, shape_infer

        original = index_mapping.update_concat_index_mapping
        concat = ops.OPTYPE.CONCAT
        between, recursive = (
            shape_infer.infer_channels_between,
            shape_infer.infer_in_channels_recursively,
        )

    def update(graph: Any, node: Any) -> Any:
        with fits("concat sizes"):
            unsized = node.type == concat and node.module.concat_sizes is None
            traced = _traced_sizes(node) if unsized else None
            feature_map = traced is not None and _feature_map_channels(node)
            inputs = list(node.inputs)
        if feature_map:  # exact; torch-pruning's walk can misread split chunks
            node.module.concat_sizes = traced
        elif traced is not None:
            inferred = [between(graph, n, node) for n in inputs]
            # only where torch-pruning would fail: it knows the output's width (and checks the
            # filled sizes add up to it) but not every input's
            if None in inferred and recursive(graph, node, recursive_depth=[0]) is not None:
                node.module.concat_sizes = [
                    t if i is None else i for i, t in zip(inferred, traced, strict=True)
                ]
        return original(graph, node)

    index_mapping.update_concat_index_mapping = update
    try:
        yield
    finally:
        index_mapping.update_concat_index_mapping = original


@fits("channel splits")
def channel_splits(graph: Any) -> list[Any]:
    """The graph's splits (``split``, ``chunk``) and slices (``x[:, :k]``) of a feature map's
    channels (channels first, or last as in MambaOut's gated convolution).

    Model code splits with widths it fixed when it was built (``x.split(self.width, 1)``), and
    torch-pruning maps a split's chunks onto the nodes that take them by the order it met those
    nodes, one per chunk: where a chunk feeds two layers (Res2Net's and the cross-stage-partial
    nets' residual branches) the indices land in the wrong layers, and wherever a split's input
    loses channels the model's own split no longer fits it. Every channel group that reaches one of
    these is held fixed (the graph build adds them to the ignored layers): the rest of the model
    prunes."""
    from torch_pruning import ops

    found = []
    for node in graph.module2node.values():
        if node.type not in (ops.OPTYPE.SPLIT, ops.OPTYPE.SLICE):
            continue
        sizes = tuple(getattr(node.grad_fn, "_saved_self_sym_sizes", ()) or ())
        dim = _saved_dim(node.grad_fn, 0)
        if len(sizes) == 4 and (dim in (1, -3) or node.type == ops.OPTYPE.SPLIT and dim in (3, -1)):
            found.append(node.module)  # (N, C, H, W); a split of the last axis: (N, H, W, C)
    return found


def _chunks_reached(fn: Any, split: Any, depth: int) -> set[int]:
    """The outputs of the autograd node ``split`` that ``fn`` reads, walking back at most
    ``depth`` nodes."""
    found: set[int] = set()
    frontier, seen = [fn], set()
    for _ in range(depth):
        nxt = []
        for f in frontier:
            if f is not None and id(f) not in seen:
                seen.add(id(f))
                nxt += _inputs(f, split, found)
        frontier = nxt
    return found


def _inputs(f: Any, split: Any, found: set[int]) -> list[Any]:
    """The autograd nodes ``f`` reads, but leaves and ``split``, whose outputs read are added to
    ``found``."""
    out = []
    for g, nr in getattr(f, "next_functions", ()):
        if g is split:
            found.add(int(nr))
        elif g is not None and type(g).__name__ != "AccumulateGrad":
            out.append(g)
    return out


def _last_axis_width(fn: Any) -> int | None:
    """The width a split of a token tensor (..., N, C) cuts along its last axis; None for any
    other split."""
    sizes = tuple(getattr(fn, "_saved_self_sym_sizes", ()) or ())
    if len(sizes) not in (2, 3):
        return None
    dim = _saved_dim(fn, 0)
    return int(sizes[-1]) if dim in (len(sizes) - 1, -1) else None


@fits("gated token splits")
def token_splits(graph: Any) -> None:
    """Give torch-pruning the two halves of each gated split of a token tensor's channels (a gated
    MLP's ``fc1(x).chunk(2, dim=-1)``, :func:`gated`): it maps only splits of a feature map's
    channel axis, and none at all downstream of a ViT's position embedding, so a group from ``fc1``
    reached the value half alone and ran on past the layers' ends. :func:`token_split_maps` maps
    the halves."""
    from torch_pruning import ops

    for node in graph.module2node.values():
        if node.type != ops.OPTYPE.SPLIT or node.grad_fn is None:
            continue
        width = _last_axis_width(node.grad_fn)
        if width is None or width % 2 or not gated(node):
            continue  # (other token splits are left to torch-pruning: q, k, v and the like)
        node.module.split_sizes = [width // 2, width // 2]
        node.module.offsets = [0, width // 2, width]
        node.module.pbkit_token_split = True


def gated(node: Any) -> bool:
    """Whether a token split's two chunks meet again in one element-wise product (a gated MLP:
    value times the activated gate), which keeps their channels paired."""
    if len(node.outputs) != 2:
        return False
    return any(
        type(out.grad_fn).__name__ == "MulBackward0"
        and _chunks_reached(out.grad_fn, node.grad_fn, 3) == {0, 1}
        for out in node.outputs
    )


@contextlib.contextmanager
def token_split_maps() -> Iterator[None]:
    """While the block runs, the token splits :func:`token_splits` sized map indices chunk by
    chunk, as torch-pruning does for a feature map's channel splits."""
    with fits("gated token splits"):
        from torch_pruning.dependency import index_mapping

        original, chunk = index_mapping.update_split_index_mapping, index_mapping._SplitIndexMapping

    def update(graph: Any, node: Any) -> Any:
        with fits("gated token splits"):
            if not getattr(node.module, "pbkit_token_split", False) or node.module.offsets is None:
                mine = False
            else:
                _map_halves(node, chunk)
                mine = True
        return None if mine else original(graph, node)

    index_mapping.update_split_index_mapping = update
    try:
        yield
    finally:
        index_mapping.update_split_index_mapping = original


def _map_halves(node: Any, chunk: Callable[..., Any]) -> None:
    offsets = node.module.offsets
    for i, out in enumerate(node.outputs):
        for dep in node.dependencies:
            if dep.target is out:
                dep.index_mapping[0] = chunk(offset=offsets[i : i + 2], reverse=False)
        for dep in out.dependencies:
            if dep.target is node:
                dep.index_mapping[0] = chunk(offset=offsets[i : i + 2], reverse=True)


@contextlib.contextmanager
def empty_expand() -> Iterator[None]:
    """While the block runs, an expand torch-pruning takes for a language model's grouped-query
    heads but that repeats nothing of the channels (GCViT's global query, expanded over the batch's
    windows) passes indices through; torch-pruning would divide by its zero repeat."""
    with fits("empty expand"):
        from torch_pruning.dependency import index_mapping

        kind = index_mapping._GQAIndexMapping
        expand = kind.__call__

    def repeat(mapping: Any, idxs: Any) -> Any:
        with fits("empty expand"):
            empty = mapping.head_dim * mapping.repeat == 0
        return list(idxs) if empty else expand(mapping, idxs)

    kind.__call__ = repeat
    try:
        yield
    finally:
        kind.__call__ = expand


@contextlib.contextmanager
def zero_channel_reshape() -> Iterator[None]:
    """While the block runs, a reshape whose side torch-pruning infers as 0 channels (a path from
    the model's input: SHViT's) gets no map; torch-pruning would divide by zero."""
    with fits("zero-channel reshape"):
        from torch_pruning.dependency import index_mapping

        reshape = index_mapping.update_reshape_index_mapping

    def reshaped(graph: Any, node: Any) -> Any:
        try:
            return reshape(graph, node)
        except ZeroDivisionError:
            return None

    index_mapping.update_reshape_index_mapping = reshaped
    try:
        yield
    finally:
        index_mapping.update_reshape_index_mapping = reshape


@contextlib.contextmanager
def index_maps() -> Iterator[None]:
    """While the block runs, torch-pruning's index maps are repaired where they fail (it remaps
    every time it makes a group, so this spans the graph build and every step):
    :func:`token_split_maps`, :func:`empty_expand`, :func:`zero_channel_reshape`."""
    with token_split_maps(), empty_expand(), zero_channel_reshape():
        yield


def grouped_convolutions(model: nn.Module) -> set[int]:
    """The ids of ``model``'s grouped convolutions with more than one input channel per group (as
    built, before any pruning), for :func:`one_channel_groups`."""
    return {
        id(m)
        for m in model.modules()
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)
        and m.groups > 1
        and m.in_channels != m.groups
    }


@fits("one-channel groups")
def one_channel_groups(group: Any, grouped: AbstractSet[int] = frozenset()) -> bool:
    """Whether a channel group reaches a grouped convolution left with one input channel per group:
    one that has more outputs than inputs, whose input the group prunes, or one of ``grouped``
    (:func:`grouped_convolutions`: built with more channels per group; it now looks depth-wise).
    torch-pruning's magnitude importance indexes such a layer's scores past their end (it repeats
    them per group only while a group has more than one channel); the prune loop leaves these
    groups as they are from then on (ResNeXt-64x4d, DPN and RegNet reach it)."""
    from torch_pruning.pruner import function

    for dep, _ in group:
        m = dep.target.module
        if (
            not isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)
            or m.groups <= 1
            or m.in_channels != m.groups
        ):
            continue
        if (
            id(m) in grouped
            or dep.handler == function.prune_conv_in_channels
            and m.out_channels != m.in_channels
        ):
            return True
    return False


def leave_one_channel_groups(pruner: Any, model: nn.Module) -> set[int]:
    """Make ``pruner`` score no group :func:`one_channel_groups` finds (no score: torch-pruning
    leaves the group as it is). Returns the grouped convolutions it looks for."""
    grouped = grouped_convolutions(model)
    with fits("one-channel groups"):
        score = pruner.estimate_importance
        pruner.estimate_importance = lambda g: None if one_channel_groups(g, grouped) else score(g)
    return grouped


def astray(groups: list[Any], grouped: AbstractSet[int]) -> list[nn.Module]:
    """The root layers of the groups whose channel indices torch-pruning maps past a layer's end
    (what a split it maps wrong leaves): the graph build holds them before the first step. Groups
    :func:`one_channel_groups` leaves are not scored."""
    with fits("astray groups"):
        import torch_pruning as tp

        check = tp.importance.MagnitudeImportance(p=2)
        roots = [group[0].dep.target.module for group in groups]
    found = []
    for group, root in zip(groups, roots, strict=True):
        if one_channel_groups(group, grouped):
            continue
        try:
            check(group)
        except (IndexError, RuntimeError) as e:  # (torch's index_select raises the latter)
            if "out of bounds" not in str(e):
                raise
            found.append(root)
    return found


@fits("square maps")
def square_maps(model: nn.Module, customized: AbstractSet[type]) -> list[Any]:
    """torch-pruning's pruning dimension for the parameters outside its layers that are laid out as
    an image map, ``(1, C, S, S)`` with ``C != S`` (Visformer's position embeddings): their
    channels, dimension 1. Left to itself it cuts the last dimension of more than one, a column of
    the map, and the model fails once a cut meets the map's side. The others (a ViT's ``(1, N, C)``
    embedding, a ``(C,)`` scale) keep torch-pruning's choice."""
    import torch_pruning as tp

    wrapped: set[int] = set()
    for m in model.modules():
        kind = tp.ops.module2type(m)
        if (kind in tp.pruner.function.PrunerBox and kind != tp.ops.OPTYPE.ELEMENTWISE) or type(
            m
        ) in customized:
            wrapped |= {id(p) for p in m.parameters()}
    return [
        tp._helpers.UnwrappedParameters(parameters=p, pruning_dim=1)
        for p in model.parameters()
        if id(p) not in wrapped
        and p.dim() == 4
        and p.shape[0] == 1
        and p.shape[2] == p.shape[3] > 1
        and p.shape[1] != p.shape[2]
    ]


def kept(idxs: Any, width: int) -> list[int]:
    """The channels of ``width`` that torch-pruning's indices ``idxs`` leave (its callers run it
    inside their own :func:`fits`)."""
    from torch_pruning import _helpers

    plain = (
        _helpers.to_plain_idxs(idxs)
        if len(idxs) and isinstance(idxs[0], _helpers._HybridIndex)
        else idxs
    )
    cut = {int(i) for i in plain}
    return [i for i in range(width) if i not in cut]
