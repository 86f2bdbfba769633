"""Blocks the dependency graph must not trace into, held as one node each, and which pruner
changes their weights.

torch-pruning learns which channels belong together by walking the autograd graph of one forward
pass. Inside a Swin block's window attention (window partition, cyclic shift, masks) and patch
merging (a strided pad and a concatenation on the channel axis), torchvision's and timm's, that walk
does not end: it recurses until memory runs out. While the graph is built, :func:`hidden` runs each
such block inside one autograd node whose only input is the block's input, so the graph sees a
single layer; the pruners of :mod:`pbkit.pruning.repairs.pruners` (passed as ``customized_pruners``,
:func:`pruners_for`) then prune that layer's input channels (the residual stream entering it) and
output channels (the stream leaving it). The attention's inner width stays as it is (its forward
pass reads each width from the weights, :mod:`pbkit.models.swin`).

The repairs here, by name (:class:`~pbkit.pruning.repairs.common.RepairBroken` uses these):

- **window attention**: torchvision's and timm's Swin window attention, MaxViT's attention;
- **patch merging**: Swin's (C inputs, each four times in the merged 4C; 2C outputs);
- **partitions**: MaxViT's window and grid partitions, nodes that keep each channel;
- **channel gates**: timm's ECA gates, nodes that keep each channel (traced, torch-pruning's groups
  take minutes);
- **blur pools**: timm's blur pools, whose per-channel filter is cut with the stream;
- **global context**: timm's GCNet blocks, whose pooling and MLP weights are cut with the stream;
- **mixed convolutions**: MixNet's depth-wise mixed convolutions, cut channel by channel;
- **channel shuffle**: ShuffleNet's shuffle, a node held fixed with the convolutions feeding it;
- **held blocks**: ultralytics' position-sensitive attention, held from the start
  (:func:`from_start`); where the graph fails on a model pbkit has no rewrite for,
  :func:`untraceable` names its attention-like blocks and the prune loop traces the model again
  with those held fixed: each one node whose output channels stay, and whose input channels stay
  too unless only its own projections read them (:func:`entries`), the rest pruned.
"""

from __future__ import annotations

import contextlib
import copy
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from pbkit.models import maxvit, shufflenet, swin
from pbkit.pruning.repairs.common import fits


class _Opaque(torch.autograd.Function):
    """``fn(x)`` as one autograd node whose only input is ``x`` (for tracing; no backward)."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        return fn(x)

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        raise RuntimeError("an opaque block is for tracing the dependency graph, not for training")


def _timm() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """timm's Swin (v1, v2) classes: blocks, their window attention, patch merging. Only those of
    the modules already imported: a model cannot hold a class whose module was never imported, and
    a run of any other model does not import timm for this (it is called after every step)."""
    blocks_, attention, merging = [], [], []
    for module, block in (
        ("timm.models.swin_transformer", "SwinTransformerBlock"),
        ("timm.models.swin_transformer_v2", "SwinTransformerV2Block"),
    ):
        m = sys.modules.get(module)
        if m is not None:
            blocks_.append(getattr(m, block))
            attention.append(m.WindowAttention)
            merging.append(m.PatchMerging)
    return tuple(blocks_), tuple(attention), tuple(merging)


def _gates() -> tuple[type, ...]:
    """timm's efficient channel attention (ECA, circular ECA): a gate computed by a 1-D convolution
    that runs along the channel axis itself, so it fits any number of channels; traced, its
    reshapes make torch-pruning's groups take minutes. Each is one node that keeps channel i as
    channel i (pruned with the stream through it). Only if timm's module is already imported."""
    m = sys.modules.get("timm.layers.eca")
    return (m.EcaModule, m.CecaModule) if m is not None else ()


def _blur() -> tuple[type, ...]:
    """timm's blur pool: a fixed low-pass filter run on each channel alone (a depth-wise
    convolution whose weight is a non-persistent buffer, one row per channel). One node that keeps
    channel i as channel i; its pruner cuts the filter's rows with the stream through it. Only if
    timm's module is already imported."""
    m = sys.modules.get("timm.layers.blur_pool")
    return (m.BlurPool2d,) if m is not None else ()


def _context() -> tuple[type, ...]:
    """timm's global context block (GCNet): attention pooling to one context vector per image, a
    small MLP on it, then each channel scaled (or shifted) by its result. Traced, its pooling
    reshapes send torch-pruning's graph past its memory and time budgets. One node that keeps
    channel i as channel i; its pruner cuts the pooling's and the MLP's weights of the channels
    cut. Only if timm's module is already imported."""
    m = sys.modules.get("timm.layers.global_context")
    return (m.GlobalContext,) if m is not None else ()


def _mixed() -> tuple[type, ...]:
    """timm's depth-wise mixed convolutions, as :mod:`pbkit.models.mixconv` gives them a class of
    their own: one node that keeps channel i as channel i; its pruner cuts channel i from the group
    holding it. Only if that module is already imported."""
    m = sys.modules.get("pbkit.models.mixconv")
    return (m.MixedDepthwiseConv2d,) if m is not None else ()


def attention_classes() -> tuple[type, ...]:
    """Window attention, torchvision's and timm's Swin, torchvision's MaxViT: pruned as one layer,
    never by heads."""
    return swin.ATTENTION + maxvit.ATTENTION + _timm()[1]


def _kinds() -> dict[type, str]:
    """Each class held as one node (but window attention) and the pruner kind that prunes it."""
    return {
        **dict.fromkeys(swin.MERGING + _timm()[2], "merging"),
        **dict.fromkeys(maxvit.PARTITION + _gates(), "passthrough"),
        **dict.fromkeys(_blur(), "blur"),
        **dict.fromkeys(_context(), "context"),
        **dict.fromkeys(_mixed(), "mixed"),
    }


def blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of ``model`` the dependency graph must see as single layers."""
    kinds = attention_classes() + tuple(_kinds())
    return [m for m in model.modules() if isinstance(m, kinds)]


_UNTRACEABLE = re.compile(
    r"attn|attention|lambdalayer|nonlocal|mhsa|gpsa|modulation|gatingunit|lstm2d|^xca$|^shsa$",
    re.IGNORECASE,
)


def untraceable(model: nn.Module) -> list[nn.Module]:
    """Attention-like blocks (by class name: ...Attn, ...Attention, LambdaLayer, NonLocal..., MHSA,
    GPSA, FocalNet's FocalModulation, gMLP's SpatialGatingUnit, Sequencer's LSTM2d, XCiT's XCA,
    SHViT's SHSA) the dependency graph may fail to follow, innermost first: what :func:`hidden`
    holds fixed when a trace of the whole model fails (talking-heads, class, non-local, halo, lambda
    attention...). Those already handled (:func:`blocks`) are not listed."""
    handled = blocks(model)
    found = [
        m
        for m in model.modules()
        if m is not model
        and _UNTRACEABLE.search(type(m).__name__)
        and not any(m is h for h in handled)
    ]
    return [m for m in found if not _has_candidate_inside(m, found)]


def _has_candidate_inside(m: nn.Module, found: list[nn.Module]) -> bool:
    ids = {id(f) for f in found if f is not m}
    return any(id(c) in ids for c in m.modules() if c is not m)


@contextlib.contextmanager
def hidden(model: nn.Module, also: Sequence[nn.Module] = ()) -> Iterator[None]:
    """Within: every block of :func:`blocks`, and every module of ``also``, is one autograd node on
    its input. timm's Swin blocks partition windows before calling their attention, so there the
    attention module is made to take the unpartitioned input and run the whole windowed path
    inside its node. A YOLO head's training-only branch (YOLO26's semantic segmentation head) is
    traced too (:func:`pbkit.models.yolo.training_branches_traced`), so its input channels are cut
    with the channels it reads."""
    from pbkit.models import yolo

    patched: list[tuple[nn.Module, str]] = []
    for blk in [m for m in model.modules() if isinstance(m, _timm()[0])]:
        _hide_windowed(blk)
        attn: nn.Module = blk.attn  # type: ignore[attr-defined]
        patched += [(attn, "forward"), (blk, "_attn")]
    for m in [*blocks(model), *also]:
        if not any(m is p for p, _ in patched):
            m.forward = _one_node(m.forward)
            patched.append((m, "forward"))
    try:
        with yolo.training_branches_traced(model):
            yield
    finally:
        for m, name in patched:
            delattr(m, name)


def _hide_windowed(blk: nn.Module) -> None:
    """A timm Swin block's attention as one node running the block's whole windowed path."""
    attn, path, original = blk.attn, blk._attn, blk.attn.forward
    inside = [False]

    def forward(x: torch.Tensor, mask: Any = None) -> torch.Tensor:
        if inside[0]:  # the windowed path calling its attention on the windows
            return original(x, mask=mask)

        def run(t: torch.Tensor) -> torch.Tensor:
            inside[0] = True
            try:
                return path(t)
            finally:
                inside[0] = False

        return _Opaque.apply(x, run)

    attn.forward = forward
    blk._attn = (lambda a: lambda x: a(x))(attn)


def _one_node(f: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``f`` run as one autograd node on its first argument. Other tensor arguments that need no
    gradient (rotary position tables, masks) are constants of the node; one that needs a gradient
    would be an input the graph could not see, so it is refused."""

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if any(isinstance(a, torch.Tensor) and a.requires_grad for a in (*args, *kwargs.values())):
            raise TypeError("a block held as one node takes one tensor that needs a gradient")
        out = _Opaque.apply(x, lambda t: f(t, *args, **kwargs))
        if not isinstance(out, torch.Tensor):
            raise TypeError("a block held as one node gives one tensor")
        return out

    return forward


def from_start(model: nn.Module) -> list[nn.Module]:
    """Blocks held fixed from the first attempt, known not to prune: ultralytics' position-sensitive
    attention (YOLO11's and YOLO26's C2PSA, YOLO26's attention C3k2), whose traced graph does not
    finish and whose heads' widths are stored attributes (:func:`pbkit.models.yolo.held_blocks`
    gives the reason the record keeps)."""
    from pbkit.models import yolo

    return list(yolo.held_blocks(model))


def fixed(model: nn.Module) -> list[nn.Module]:
    """Layers whose output channels must keep their number (held as ignored layers): ShuffleNet's
    shuffles and the convolutions feeding them."""
    return shufflenet.fixed(model)


def pruners_for(
    model: nn.Module,
    held: Sequence[nn.Module] = (),
    reads: dict[nn.Module, list[nn.Module]] | None = None,
) -> dict[type, Any]:
    """``customized_pruners`` for the blocks ``model`` has and those ``held`` fixed, by their exact
    classes (torch-pruning looks pruners up by ``type(module)``); none: an empty dict. A held class
    whose every instance has the layers that read its input in ``reads`` (:func:`entries`) has its
    input channels pruned with the stream."""
    present = blocks(model)
    shuffles = [m for m in model.modules() if isinstance(m, shufflenet.ChannelShuffle)] + list(held)
    if not present and not shuffles:
        return {}
    reads = reads or {}
    with fits("held blocks"):
        from pbkit.pruning.repairs import pruners

        made = pruners.made(reads)
    windowed, kind = attention_classes(), _kinds()
    entered = {
        t
        for t in {type(m) for m in held}
        if all(m in reads for m in model.modules() if type(m) is t)
    }
    return {
        **{
            type(m): made["attention" if isinstance(m, windowed) else kind[type(m)]]
            for m in present
        },
        **{type(m): made["held" if type(m) in entered else "fixed"] for m in shuffles},
    }


def entries(
    model: nn.Module, held: Sequence[nn.Module], example: torch.Tensor
) -> dict[nn.Module, list[nn.Module]]:
    """For each block in ``held``, the convolutions and linear layers inside it that read its input
    as it is (a view with every channel in place: timm's HaloAttn's ``q`` and ``kv``), found by one
    forward pass of ``example``; kept only where the block, with one input channel removed from
    those layers and from its input, gives what it gives with that channel zeroed: nothing else in
    it reads that channel (no residual, norm or width taken from the input). A block called more
    than once, or with none such, is left out (held fixed in and out)."""
    seen, reading = _probe(model, held, example)
    found = {}
    for block in held:
        if (
            len(seen[block]) != 1
            or not isinstance(x := seen[block][0], torch.Tensor)
            or x.dim() < 2
        ):
            continue
        layers = list(dict.fromkeys(m for m, t in reading[block] if _reads(m, t, x)))
        if layers and _cut_matches(block, layers, x):
            found[block] = layers
    return found


def _probe(
    model: nn.Module, held: Sequence[nn.Module], example: torch.Tensor
) -> tuple[dict[nn.Module, list[Any]], dict[nn.Module, list[tuple[nn.Module, torch.Tensor]]]]:
    """One forward pass of ``example``: each held block's inputs, and the inputs of the
    convolutions and linear layers inside it during its first call (none if the model fails)."""
    seen: dict[nn.Module, list[Any]] = {m: [] for m in held}
    reading: dict[nn.Module, list[tuple[nn.Module, torch.Tensor]]] = {m: [] for m in held}
    handles = []
    for block in held:
        handles.append(
            block.register_forward_pre_hook(lambda m, a: seen[m].append(a[0] if a else None))
        )
        for layer in block.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)) and not (
                isinstance(layer, nn.Conv2d) and layer.groups != 1
            ):
                handles.append(
                    layer.register_forward_pre_hook(
                        lambda m, a, _b=block: (
                            reading[_b].append((m, a[0])) if a and len(seen[_b]) == 1 else None
                        )
                    )
                )
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    except Exception:  # (the caller's trace says what fails)
        return {m: [] for m in held}, reading
    finally:
        model.train(training)
        for h in handles:
            h.remove()
    return seen, reading


def _reads(layer: nn.Module, t: Any, x: torch.Tensor) -> bool:
    """Whether ``layer``'s input ``t`` is ``x`` itself, or a view of it with its channels in
    place."""
    if (
        not isinstance(t, torch.Tensor)
        or t.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    ):
        return False
    c = (
        x.shape[1] if x.dim() == 4 else x.shape[-1]
    )  # the graph's channel axis: 1 of an image, last of tokens
    if isinstance(layer, nn.Conv2d):
        return x.dim() == 4 and t.dim() == 4 and t.shape[:2] == x.shape[:2]
    return t.shape[-1] == c


def _cut_matches(block: nn.Module, layers: list[nn.Module], x: torch.Tensor) -> bool:
    """Whether ``block`` with input channel 0 cut from ``layers`` and from ``x`` gives what it gives
    with that channel zeroed."""
    axis = 1 if x.dim() == 4 else x.dim() - 1
    c = x.shape[axis]
    if c < 2:
        return False
    names = {id(m): n for n, m in block.named_modules()}
    zeroed = x.clone()
    zeroed.select(axis, 0).zero_()
    with fits("held blocks"):
        from pbkit.pruning.repairs.pruners import cut_inputs
    try:
        with torch.no_grad():
            want = block(zeroed)
            cut = copy.deepcopy(block)
            for m in layers:
                cut_inputs(cut.get_submodule(names[id(m)]), [0])
            got = cut(x.narrow(axis, 1, c - 1))
    except Exception:  # the block takes a width from its input, or adds it: held fixed as it is
        return False
    if (
        not (isinstance(want, torch.Tensor) and isinstance(got, torch.Tensor))
        or got.shape != want.shape
    ):
        return False
    scale = float(want.abs().max()) if want.numel() else 0.0
    return bool(torch.allclose(got, want, rtol=1e-4, atol=1e-5 * max(scale, 1.0)))
