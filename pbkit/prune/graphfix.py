"""Repairs to torch-pruning's dependency graph, applied only while pbkit builds one.

torch-pruning (1.6) maps a channel concatenation's inputs onto its output channels with widths it
infers by walking the graph. Where an input comes from a ``split`` (timm's cross-stage-partial nets:
CSPDarkNet, the CS3 nets; Res2Net) that walk reads the wrong chunk's width, or none, and then adds
``None`` to an integer and the whole trace fails. The autograd graph of the traced forward pass
knows every input's real shape: :func:`exact_concat_sizes` takes a feature-map concatenation's
widths from it, and for other concatenations fills only the widths torch-pruning could not infer
where it would otherwise fail (it still checks that they add up to the output's width).

The patch is undone when the block ends, so nothing outlives the graph build. Splits and slices of
a feature map's channels are found by :func:`channel_splits` and held fixed; so are grouped
convolutions torch-pruning's importance cannot score (:func:`one_channel_groups`). While the prune
loop runs, per-channel tensors torch-pruning would leave whole (NFNet's ``gain``) are cut with the
layer's outputs, and chunk offsets follow their input's cuts (:func:`cuts_follow`). Parameters laid
out as an image map lose channels, not columns (:func:`square_maps`).

The graph keeps the traced forward pass's autograd nodes for as long as the pruner lives, and with
them every activation that pass saved for a backward pass that never comes: 12 GiB for a ViT at
768 px. Traced under :func:`shapes_only`, those activations are not kept (the nodes keep their
dims and sizes, all that torch-pruning and these repairs read)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from typing import Any


@contextlib.contextmanager
def shapes_only() -> Iterator[None]:
    """While the block runs, autograd saves no tensor for a backward pass, only its shape and type
    (an unused saved tensor, read anyway, comes back as an empty one on the meta device)."""
    import torch

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
    from torch_pruning import ops
    from torch_pruning.dependency import index_mapping, shape_infer

    original = index_mapping.update_concat_index_mapping

    def update(graph: Any, node: Any) -> Any:
        if node.type == ops.OPTYPE.CONCAT and node.module.concat_sizes is None:
            traced = _traced_sizes(node)
            if traced is not None and _feature_map_channels(node):
                node.module.concat_sizes = (
                    traced  # exact; torch-pruning's walk can misread split chunks
                )
            elif traced is not None:
                inferred = [shape_infer.infer_channels_between(graph, n, node) for n in node.inputs]
                # only where torch-pruning would fail: it knows the output's width (and checks the
                # filled sizes add up to it) but not every input's
                if (
                    None in inferred
                    and shape_infer.infer_in_channels_recursively(graph, node, recursive_depth=[0])
                    is not None
                ):
                    node.module.concat_sizes = [
                        t if i is None else i for i, t in zip(inferred, traced, strict=True)
                    ]
        return original(graph, node)

    index_mapping.update_concat_index_mapping = update
    try:
        yield
    finally:
        index_mapping.update_concat_index_mapping = original


def channel_splits(graph: Any) -> list[Any]:
    """The graph's splits (``split``, ``chunk``) and slices (``x[:, :k]``) of a feature map's
    channels (channels first, or last as in MambaOut's gated convolution).

    Model code splits with widths it fixed when it was built (``x.split(self.width, 1)``), and
    torch-pruning maps a split's chunks onto the nodes that take them by the order it met those
    nodes, one per chunk: where a chunk feeds two layers (Res2Net's and the cross-stage-partial
    nets' residual branches) the indices land in the wrong layers, and wherever a split's input
    loses channels the model's own split no longer fits it. Every channel group that reaches one of
    these is held fixed (:func:`pbkit.prune.loop._build` adds them to the ignored layers): the rest
    of the model prunes."""
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
            if f is None or id(f) in seen:
                continue
            seen.add(id(f))
            for g, nr in getattr(f, "next_functions", ()):
                if g is split:
                    found.add(int(nr))
                elif g is not None and type(g).__name__ != "AccumulateGrad":
                    nxt.append(g)
        frontier = nxt
    return found


def _last_axis_width(fn: Any) -> int | None:
    """The width a split of a token tensor (..., N, C) cuts along its last axis; None for any
    other split."""
    sizes = tuple(getattr(fn, "_saved_self_sym_sizes", ()) or ())
    if len(sizes) not in (2, 3):
        return None
    dim = _saved_dim(fn, 0)
    return int(sizes[-1]) if dim in (len(sizes) - 1, -1) else None


def token_splits(graph: Any) -> None:
    """Give torch-pruning the two halves of each gated split of a token tensor's channels (a gated
    MLP's ``fc1(x).chunk(2, dim=-1)``, :func:`gated`): it maps only splits of a feature map's
    channel axis, and none at all downstream of a ViT's position embedding, so a group from ``fc1``
    reached the value half alone and ran on past the layers' ends. :func:`index_maps` maps the
    halves."""
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
def index_maps() -> Iterator[None]:
    """While the block runs, torch-pruning's index maps are repaired where they fail:

    - the token splits :func:`token_splits` sized map indices chunk by chunk, as torch-pruning
      does for a feature map's channel splits;
    - an expand it takes for a language model's grouped-query heads but that repeats nothing of
      the channels (GCViT's global query, expanded over the batch's windows) passes indices
      through; torch-pruning would divide by its zero repeat;
    - a reshape whose side it infers as 0 channels (a path from the model's input: SHViT's) gets
      no map; torch-pruning would divide by zero."""
    from torch_pruning.dependency import index_mapping

    original, expand = (
        index_mapping.update_split_index_mapping,
        index_mapping._GQAIndexMapping.__call__,
    )
    reshape = index_mapping.update_reshape_index_mapping

    def reshaped(graph: Any, node: Any) -> Any:
        try:
            return reshape(graph, node)
        except ZeroDivisionError:
            return None

    def update(graph: Any, node: Any) -> Any:
        if not getattr(node.module, "pbkit_token_split", False) or node.module.offsets is None:
            return original(graph, node)
        offsets = node.module.offsets
        for i, out in enumerate(node.outputs):
            for dep in node.dependencies:
                if dep.target is out:
                    dep.index_mapping[0] = index_mapping._SplitIndexMapping(
                        offset=offsets[i : i + 2], reverse=False
                    )
            for dep in out.dependencies:
                if dep.target is node:
                    dep.index_mapping[0] = index_mapping._SplitIndexMapping(
                        offset=offsets[i : i + 2], reverse=True
                    )
        return None

    def repeat(mapping: Any, idxs: Any) -> Any:
        return list(idxs) if mapping.head_dim * mapping.repeat == 0 else expand(mapping, idxs)

    index_mapping.update_split_index_mapping = update
    index_mapping._GQAIndexMapping.__call__ = repeat
    index_mapping.update_reshape_index_mapping = reshaped
    try:
        yield
    finally:
        index_mapping.update_split_index_mapping = original
        index_mapping._GQAIndexMapping.__call__ = expand
        index_mapping.update_reshape_index_mapping = reshape


def grouped_convolutions(model: Any) -> set[int]:
    """The ids of ``model``'s grouped convolutions with more than one input channel per group (as
    built, before any pruning), for :func:`one_channel_groups`."""
    from torch import nn

    return {
        id(m)
        for m in model.modules()
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)
        and m.groups > 1
        and m.in_channels != m.groups
    }


def one_channel_groups(group: Any, grouped: AbstractSet[int] = frozenset()) -> bool:
    """Whether a channel group reaches a grouped convolution left with one input channel per group:
    one that has more outputs than inputs, whose input the group prunes, or one of ``grouped``
    (:func:`grouped_convolutions`: built with more channels per group; it now looks depth-wise).
    torch-pruning's magnitude importance indexes such a layer's scores past their end (it repeats
    them per group only while a group has more than one channel); the prune loop leaves these
    groups as they are from then on (ResNeXt-64x4d, DPN and RegNet reach it)."""
    from torch import nn
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


_KNOWN_TENSORS = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def _width(m: Any) -> int | None:
    """The output width of a convolution, linear or norm layer; None for any other module."""
    from torch import nn

    if not isinstance(
        m,
        nn.Conv1d
        | nn.Conv2d
        | nn.Conv3d
        | nn.Linear
        | nn.modules.batchnorm._BatchNorm
        | nn.LayerNorm
        | nn.GroupNorm,
    ):
        return None
    width = (
        getattr(m, "out_channels", None)
        or getattr(m, "out_features", None)
        or getattr(m, "num_features", None)
    )
    return int(width) if width else None


def extra_channel_tensors(m: Any) -> list[str]:
    """The parameters and buffers of a convolution, linear or norm layer ``m``, other than the
    weight and bias torch-pruning prunes, with one entry per output channel (timm's scaled
    weight-standardised convolutions' ``gain``, NFNet's)."""
    width = _width(m)
    if width is None:
        return []
    return [
        name
        for name, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
        if name not in _KNOWN_TENSORS and t is not None and t.dim() >= 1 and t.shape[0] == width
    ]


@contextlib.contextmanager
def cuts_follow() -> Iterator[None]:
    """While the block runs, what torch-pruning leaves behind when it cuts channels is brought in
    line after each cut, and the patch on its dependency call is undone when the block ends:

    - a layer whose outputs it cuts has its other per-channel tensors
      (:func:`extra_channel_tensors`, NFNet's ``gain``) cut to the same channels; left whole, the
      model would no longer run;
    - a split (``chunk``: a gated MLP's value and gate halves) whose input loses channels gets its
      chunk offsets moved: torch-pruning counts the new chunk sizes but keeps mapping indices with
      the traced offsets, so the next step's indices would run past the layers' ends."""
    from torch_pruning import ops
    from torch_pruning.dependency import dependency

    original = dependency.Dependency.__call__

    def call(dep: Any, idxs: Any) -> Any:
        m = dep.target.module
        before, extra = _width(m), extra_channel_tensors(m)
        out = original(dep, idxs)
        if extra and before is not None and (_width(m) or before) < before:
            _cut_to(m, extra, kept(idxs, before))
        if isinstance(m, ops._SplitOp) and m.split_sizes is not None and len(idxs):
            # (torch-pruning maps each next group's indices from these offsets)
            m.offsets = [sum(m.split_sizes[:i]) for i in range(len(m.split_sizes) + 1)]
        return out

    dependency.Dependency.__call__ = call
    try:
        yield
    finally:
        dependency.Dependency.__call__ = original


def kept(idxs: Any, width: int) -> list[int]:
    """The channels of ``width`` that torch-pruning's indices ``idxs`` leave."""
    from torch_pruning import _helpers

    plain = (
        _helpers.to_plain_idxs(idxs)
        if len(idxs) and isinstance(idxs[0], _helpers._HybridIndex)
        else idxs
    )
    cut = {int(i) for i in plain}
    return [i for i in range(width) if i not in cut]


def _cut_to(m: Any, names: list[str], keep: list[int]) -> None:
    """Keep only the rows ``keep`` of each tensor ``names`` of ``m`` (a parameter stays a
    parameter)."""
    import torch
    from torch import nn

    index = torch.tensor(keep, dtype=torch.long)
    for name in names:
        t = getattr(m, name)
        rows = t.detach()[index.to(t.device)].clone()
        if isinstance(t, nn.Parameter):
            setattr(m, name, nn.Parameter(rows, requires_grad=t.requires_grad))
        else:
            m._buffers[name] = rows


def view_shapes(model: Any) -> None:
    """Bring a view shape a module stored for its one per-channel parameter in line with that
    parameter's new length (timm's metaformer ``Scale``: ``x * scale.view(self.shape)`` with
    ``shape = (dim, 1, 1)`` fixed when built; torch-pruning cuts ``scale`` and leaves ``shape``)."""
    import math

    for m in model.modules():
        shape = getattr(m, "shape", None)
        params = list(m.parameters(recurse=False))
        if (
            not (isinstance(shape, tuple) and shape and all(type(d) is int for d in shape))
            or len(params) != 1
        ):
            continue
        n = params[0].numel()
        if params[0].dim() == 1 and math.prod(shape) != n and math.prod(shape[1:]) == 1:
            m.shape = (n, *shape[1:])


def square_maps(model: Any, customized: AbstractSet[type]) -> list[Any]:
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
