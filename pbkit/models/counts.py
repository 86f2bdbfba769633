"""Parameter and MAC counts at batch 1 and the task's input size.

MACs are counted at the aten level (``torch.utils.flop_counter``): every convolution and matrix
product, including functional ones that module-hook counters miss (attention matmuls of ViTs).
The CPU fused-attention kernel gets its formula registered here and torch's MHA fast path is
switched off while counting, so ViT-B/16 counts 17.56 G, not the 11.3 G a hook counter shows.
MACs = FLOPs / 2.
"""

from __future__ import annotations

import contextlib
import copy
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
    """MACs of one forward pass at batch 1, computed for real on the model's device."""
    return _count(model, example_input(input_size).to(device.of(model)))


def _count(model: nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with _no_mha_fastpath(), FlopCounterMode(display=False, custom_mapping=_mapping()) as fc:
            model(x)
    finally:
        model.train(was_training)
    return int(fc.get_total_flops() // 2)


@torch.no_grad()
def count_macs_meta(model: nn.Module, input_size: int) -> int:
    """The same count on the ``meta`` device: a structural copy of the model whose parameters and
    buffers are meta tensors (no data, no arithmetic) runs the same aten operators with the same
    shapes, so the figure is the same at a small part of the cost. Raises what the forward pass
    raises where a model needs real data (a ``.item()``, a data-dependent shape)."""
    memo: dict[int, Any] = {}
    cached = [v for m in model.modules() for v in vars(m).values() if isinstance(v, torch.Tensor)]  # yolo's strides
    for t in [*model.parameters(), *model.buffers(), *cached]:
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    shadow = copy.deepcopy(model, memo)  # what a forward pass caches on its modules stays on the copy
    return _count(shadow, example_input(input_size).to("meta"))


def macs_counter(model: nn.Module, input_size: int) -> tuple[Callable[[nn.Module], int], int, str]:
    """The counter a pruning loop calls after every step, the model's MACs now, and which counter
    it is: the meta-device count where it gives this model exactly the real count (checked here,
    once), else the real one."""
    real = count_macs(model, input_size)
    try:
        meta = count_macs_meta(model, input_size)
    except Exception:  # noqa: BLE001 - a forward pass that needs real data: count for real
        meta = None
    if meta == real:
        return (lambda m: count_macs_meta(m, input_size)), real, "meta"
    return (lambda m: count_macs(m, input_size)), real, "real"


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


def channel_alignment(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]],
                      multiple: int = 8) -> dict[str, Any]:
    """Share of pruned layers whose pruned widths are all multiples of ``multiple``: GPU kernels
    (tensor cores) run best on widths that are multiples of 8, so a pruned model whose widths are
    not can be slower than its MACs suggest."""
    pruned = aligned = 0
    for name, widths in after.items():
        changed = [w for w, w0 in zip(widths, before.get(name, widths), strict=True) if w != w0]
        if changed:
            pruned += 1
            aligned += all(w % multiple == 0 for w in changed)
    return {"multiple": multiple, "pruned_layers": pruned, "aligned_layers": aligned,
            "share": aligned / pruned if pruned else 1.0}
