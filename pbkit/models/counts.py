"""Parameter and MAC counts at batch 1 and the task's input size.

MACs are counted at the aten level (``torch.utils.flop_counter``): every convolution and matrix
product, including functional ones that module-hook counters miss (attention matmuls of ViTs).
The CPU fused-attention kernel gets its formula registered here and torch's MHA fast path is
switched off while counting, so ViT-B/16 counts 17.56 G, not the 11.3 G a hook counter shows.
MACs = FLOPs / 2.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from pbkit.core import device

COUNTER = "torch.utils.flop_counter (aten conv/mm/sdpa, MACs=FLOPs/2)"


def _mapping() -> dict[Any, Any]:
    from torch.utils.flop_counter import sdpa_flop_count

    aten = torch.ops.aten
    mapping: dict[Any, Any] = {}
    cpu_sdpa = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        mapping[cpu_sdpa] = lambda q, k, v, *args, **kwargs: sdpa_flop_count(q, k, v)
    return mapping


@contextlib.contextmanager
def _no_mha_fastpath() -> Iterator[None]:
    mha = torch.backends.mha
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


def example_input(input_size: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, input_size, input_size, generator=g)


@torch.no_grad()
def count_macs(model: nn.Module, input_size: int) -> int:
    """MACs of one forward pass at batch 1, counted on the model's device."""
    return _count(model, input_size)[0]


def _count(model: nn.Module, input_size: int) -> tuple[int, dict[str, dict[Any, int]]]:
    """MACs, and the FLOPs per module (``<RootClass>.<name>``) and operator."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    # parameters that need no gradient: the counter's module tracker hooks each module's tensor
    # inputs for the backward pass, which fails on a parameter passed in as an input under no_grad
    # (CaiT's class token)
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in grads:
            p.requires_grad_(False)
        with _no_mha_fastpath(), FlopCounterMode(display=False, custom_mapping=_mapping()) as fc:
            model(example_input(input_size).to(device.of(model)))
    finally:
        model.train(was_training)
        for p, needed in grads:
            p.requires_grad_(needed)
    return int(fc.get_total_flops() // 2), fc.get_flop_counts()


class StepCounter:
    """MACs after each pruning step, as exact as the loop needs them at a part of the cost.

    One real count attributes the MACs to the convolution and linear layers that perform them; a
    layer's MACs are its weight's size times a factor pruning does not change (output positions,
    tokens), so after a step they are known from the weights' shapes alone. What no such layer
    performs (attention matmuls on activations) is the ``free`` part, which pruning only shrinks.
    :meth:`after_step` returns the exact count where every MAC is in a layer (CNNs), and otherwise
    counts for real only when the layers' part alone no longer shows the target missed; in
    between it returns an upper bound (``exact`` False) with the last real count's free part. The
    loop stops at the same step, with the same figure, as counting for real after every step.
    """

    def __init__(self, model: nn.Module, input_size: int) -> None:
        self.model, self.input_size = model, input_size
        self.base, flops = _count(model, input_size)
        root = type(model).__name__
        self.rate: dict[nn.Module, int] = {}
        for name, m in model.named_modules():
            w = getattr(m, "weight", None)
            if not isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear) or not isinstance(
                w, torch.Tensor
            ):
                continue
            macs = sum(flops.get(f"{root}.{name}", {}).values()) // 2
            if macs and macs % w.numel() == 0:
                self.rate[m] = macs // w.numel()
        self.free = self.base - self.layers()
        self.real_counts = 1

    def layers(self) -> int:
        """The MACs the convolution and linear layers perform now."""
        return sum(r * m.weight.numel() for m, r in self.rate.items())

    def exact(self) -> int:
        total = count_macs(self.model, self.input_size)
        self.real_counts += 1
        self.free = total - self.layers()
        return total

    def after_step(self, reached: Callable[[int], bool]) -> tuple[int, bool]:
        """The MACs now and whether exact: exact when every MAC is in a layer, or when the layers'
        MACs alone would reach the target (``reached(macs)``), which a real count then settles;
        else the layers' MACs plus the last free part, an upper bound that misses the target."""
        layers = self.layers()
        if self.free == 0:
            return layers, True
        if not reached(layers):  # the whole model has at least these MACs: the target is missed
            return layers + self.free, False
        return self.exact(), True


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_widths(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(in, out) width of every convolution and linear layer, by module name."""
    out: dict[str, tuple[int, int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = (m.in_channels, m.out_channels)
        elif isinstance(m, nn.Linear):
            out[name] = (m.in_features, m.out_features)
    return out


def channel_alignment(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], multiple: int = 8
) -> dict[str, Any]:
    """Share of pruned layers whose pruned widths are all multiples of ``multiple``: GPU kernels
    (tensor cores) run best on widths that are multiples of 8, so a pruned model whose widths are
    not can be slower than its MACs suggest."""
    pruned = aligned = 0
    for name, widths in after.items():
        changed = [w for w, w0 in zip(widths, before.get(name, widths), strict=True) if w != w0]
        if changed:
            pruned += 1
            aligned += all(w % multiple == 0 for w in changed)
    return {
        "multiple": multiple,
        "pruned_layers": pruned,
        "aligned_layers": aligned,
        "share": aligned / pruned if pruned else 1.0,
    }
