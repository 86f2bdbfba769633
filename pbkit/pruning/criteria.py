"""Data-driven importance criteria: each is a torch-pruning ``Importance`` (``__call__(group)``
returns one score per channel of the group) plus a ``collect`` that runs the calibration batches
before every pruning step (statistics follow the shrinking model). Gradient criteria use the
task's loss from the :class:`~pbkit.pruning.calibration.Calibration`.

Implemented here, not in torch-pruning:
- ``ThiNetImportance``: greedy removal of the input channels of the NEXT layer whose loss that
  layer's output can best absorb after a least-squares refit (ThiNet's greedy selection with its
  least-squares scaling step folded into the selection);
- ``CPImportance``: LASSO regression channel selection (He et al. 2017): the order in which the
  channels enter the LASSO path of the next layer's output; late or never = least important;
- ``HRankImportance``: average matrix rank of each output channel's feature maps (Lin et al. 2020);
- ``HessianImportance``: OBD saliency w^2 * E[g^2] from true per-sample gradients (torch.func);
  torch-pruning 1.6's accumulator keeps only the last sample, so it is not used as is.
Taylor and OBD-C use torch-pruning's importances with the calibration passes done here.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function

from pbkit.pruning.calibration import Batch, Calibration

CONV_OUT = (function.prune_conv_out_channels,)
OUT_FNS = (function.prune_conv_out_channels, function.prune_linear_out_channels)
IN_FNS = (function.prune_conv_in_channels, function.prune_linear_in_channels)


def _groups(pruner: Any) -> list[Any]:
    return list(
        pruner.DG.get_all_groups(
            ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
        )
    )


def _consumers(pruner: Any) -> list[nn.Module]:
    """Layers whose input channels some group prunes: the 'next layers' of ThiNet and CP."""
    seen: dict[nn.Module, None] = {}
    for g in _groups(pruner):
        for dep, _ in g:
            m = dep.target.module
            if dep.handler in IN_FNS and isinstance(m, nn.Conv2d | nn.Linear):
                if isinstance(m, nn.Conv2d) and m.groups != 1:
                    # depthwise: every output sees one input channel; nothing to reconstruct
                    continue
                seen[m] = None
    return list(seen)


class _GroupScores(tp.importance.GroupMagnitudeImportance):
    """Shared plumbing: per-layer score vectors keyed by (module, handler) -> group scores."""

    handlers: tuple[Any, ...] = IN_FNS

    def __init__(self, normalizer: str = "mean") -> None:
        super().__init__(p=2, group_reduction="mean", normalizer=normalizer)
        self.scores: dict[nn.Module, torch.Tensor] = {}

    def collect(self, model: nn.Module, pruner: Any, batches: list[Batch]) -> None:
        raise NotImplementedError

    def layer_scores(self, module: nn.Module, idxs: list[int]) -> torch.Tensor | None:
        s = self.scores.get(module)
        return None if s is None else s[idxs]

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor | None:
        group_imp, group_idxs = [], []
        for i, (dep, idxs) in enumerate(group):
            if dep.handler not in self.handlers:
                continue
            local = self.layer_scores(dep.target.module, list(idxs))
            if local is not None:
                group_imp.append(local.float())
                group_idxs.append(group[i].root_idxs)
        if not group_imp:
            return super().__call__(
                group
            )  # no statistics for this group: fall back to L2 magnitude
        return self._normalize(self._reduce(group_imp, group_idxs), self.normalizer)


# ------------------------------------------------------------------------------------------------
# ThiNet and CP: contributions of every input channel to sampled outputs of the next layer


def _run(model: nn.Module, batches: list[Batch], handles: list[Any]) -> None:
    """Forward the calibration batches in eval mode with ``handles`` (hooks) attached."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x, _ in batches:
                model(x)
    finally:
        model.train(was)
        for h in handles:
            h.remove()


class _Contributions(_GroupScores):
    """Collects Z (m x C) for every consumer layer: column c holds input channel c's contribution
    to m sampled outputs (image, output channel, position), so that those outputs equal Z @ 1.
    A group is scored on its own columns: the reconstruction target is its own contribution."""

    def __init__(self, rows_per_layer: int = 2048, seed: int = 0) -> None:
        super().__init__()
        self.rows = rows_per_layer
        self.seed = seed
        self.z: dict[nn.Module, torch.Tensor] = {}
        self._cache: dict[tuple[nn.Module, tuple[int, ...]], torch.Tensor] = {}

    def collect(self, model: nn.Module, pruner: Any, batches: list[Batch]) -> None:
        parts: dict[nn.Module, list[torch.Tensor]] = {}
        consumers = _consumers(pruner)
        per_batch = max(math.ceil(self.rows / max(len(batches), 1)), 1)
        handles = [
            m.register_forward_pre_hook(
                self._hook(torch.Generator().manual_seed(self.seed + i), per_batch, parts)
            )
            for i, m in enumerate(consumers)
        ]
        _run(model, batches, handles)
        self.z = {m: torch.cat(p).double() for m, p in parts.items()}
        self._cache = {}

    @staticmethod
    def _hook(gen: torch.Generator, n: int, parts: dict[nn.Module, list[torch.Tensor]]) -> Any:
        def hook(m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x, w = inputs[0].detach(), m.weight.detach()
            oi = torch.randint(0, w.shape[0], (n,), generator=gen)
            if isinstance(m, nn.Conv2d):
                cols = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)  # (N, C*k*k, L)
                ni = torch.randint(0, cols.shape[0], (n,), generator=gen)
                li = torch.randint(0, cols.shape[2], (n,), generator=gen)
                c, k = w.shape[1], w[0, 0].numel()
                z = (cols[ni, :, li].view(n, c, k) * w[oi].reshape(n, c, k)).sum(-1)
            else:
                flat = x.reshape(-1, x.shape[-1])
                z = flat[torch.randint(0, flat.shape[0], (n,), generator=gen)] * w[oi]
            parts.setdefault(m, []).append(z)

        return hook

    def score(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def layer_scores(self, module: nn.Module, idxs: list[int]) -> torch.Tensor | None:
        z = self.z.get(module)
        if z is None:
            return None
        key = (module, tuple(idxs))
        if key not in self._cache:
            self._cache[key] = self.score(z[:, idxs])
        return self._cache[key]


def thinet_removal_order(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Greedy removal of columns of ``z`` (m x C), each time the one whose removal raises the
    least-squares reconstruction error of ``y = z @ 1`` by the least; returns importance in
    [0, 1] per column (0 = removed first). The error increase of dropping column c from the set
    S is beta_c^2 / (G_S^-1)_cc (G = z^T z, beta the current refit coefficients)."""
    C = z.shape[1]
    if C == 1:
        return torch.ones(1, dtype=torch.float64)
    G = z.T @ z
    G = G + eps * (G.diagonal().mean() + eps) * torch.eye(C, dtype=G.dtype)
    Ginv = torch.linalg.inv(G)
    beta = torch.ones(C, dtype=G.dtype)
    alive = torch.arange(C)
    order: list[int] = []
    chunk = max(1, C // 128)  # remove several per round on wide layers: C^3 / chunk work
    while len(alive) > 1:
        cost = beta**2 / Ginv.diagonal().clamp_min(1e-30)
        k = min(chunk, len(alive) - 1)
        drop = torch.topk(cost, k, largest=False).indices
        keep_mask = torch.ones(len(alive), dtype=torch.bool)
        keep_mask[drop] = False
        keep = keep_mask.nonzero().view(-1)
        # block downdate of the inverse and the refit coefficients
        A = Ginv[keep][:, keep]
        B = Ginv[keep][:, drop]
        D = Ginv[drop][:, drop]
        Dinv = torch.linalg.pinv(D)
        Ginv = A - B @ Dinv @ B.T
        beta = beta[keep] - B @ (Dinv @ beta[drop])
        order.extend(alive[drop].tolist())
        alive = alive[keep]
    order.extend(alive.tolist())
    imp = torch.empty(C, dtype=torch.float64)
    imp[torch.tensor(order)] = torch.linspace(0.0, 1.0, C, dtype=torch.float64)
    return imp


def _deletion_costs(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Rise of the least-squares error of y = z @ 1 when one column alone is dropped: 1 /
    (G^-1)_cc."""
    G = z.T @ z
    G = G + eps * (G.diagonal().mean() + eps) * torch.eye(G.shape[0], dtype=G.dtype)
    return 1.0 / torch.linalg.inv(G).diagonal().clamp_min(1e-30)


def lasso_entry_order(z: torch.Tensor, max_iter: int = 1000) -> torch.Tensor:
    """CP's LASSO channel selection: the order in which columns enter the LASSO path of
    ``y = z @ 1`` (the order in which they would leave as the penalty grows, reversed); first in
    scores highest. Columns the path never reaches score lowest, ordered among themselves by what
    dropping each alone costs the least-squares refit."""
    import numpy as np
    from sklearn.linear_model import lars_path_gram

    C = z.shape[1]
    zn = z / (z.norm() + 1e-12)
    y = zn.sum(1)
    _, _, coefs = lars_path_gram(
        Xy=(zn.T @ y).numpy(),
        Gram=(zn.T @ zn).numpy(),
        n_samples=zn.shape[0],
        method="lasso",
        max_iter=min(max_iter, C),
        return_path=True,
    )
    nz = np.abs(coefs) > 0
    entered = np.array([np.flatnonzero(nz[c])[0] if nz[c].any() else np.inf for c in range(C)])
    finite = np.isfinite(entered)
    imp = np.zeros(C)
    if finite.any():
        last = entered[finite].max() + 1
        imp[finite] = 1.0 + (last - entered[finite]) / last  # in (1, 2]
    if (~finite).any():
        cost = _deletion_costs(zn).numpy()
        imp[~finite] = 0.5 * cost[~finite] / (cost.max() + 1e-30)  # in [0, 0.5]
    return torch.from_numpy(imp)


class ThiNetImportance(_Contributions):
    def score(self, z: torch.Tensor) -> torch.Tensor:
        return thinet_removal_order(z)


class CPImportance(_Contributions):
    def score(self, z: torch.Tensor) -> torch.Tensor:
        return lasso_entry_order(z)


# ------------------------------------------------------------------------------------------------
# HRank


class HRankImportance(_GroupScores):
    """Average rank of each output channel's feature maps over the calibration images; ties (small
    late-stage maps) are broken by the maps' mean magnitude."""

    handlers = CONV_OUT

    def collect(self, model: nn.Module, pruner: Any, batches: list[Batch]) -> None:
        self.scores = {}
        convs: dict[nn.Module, None] = {}
        for g in _groups(pruner):
            for dep, _ in g:
                if dep.handler in CONV_OUT and isinstance(dep.target.module, nn.Conv2d):
                    convs[dep.target.module] = None
        sums: dict[nn.Module, list[torch.Tensor]] = {}

        def hook(m: nn.Module, _: Any, out: torch.Tensor) -> None:
            o = out.detach().float()
            ranks = torch.linalg.matrix_rank(o).float().sum(0)  # (C,)
            mags = o.abs().mean(dim=(2, 3)).sum(0)
            prev = sums.get(m)
            sums[m] = (
                [ranks, mags, torch.tensor(float(o.shape[0]))]
                if prev is None
                else [prev[0] + ranks, prev[1] + mags, prev[2] + o.shape[0]]
            )

        _run(model, batches, [m.register_forward_hook(hook) for m in convs])
        for m, (ranks, mags, n) in sums.items():
            mean_rank, mean_mag = ranks / n, mags / n
            self.scores[m] = mean_rank + 1e-3 * mean_mag / (mean_mag.max() + 1e-12)


# ------------------------------------------------------------------------------------------------
# gradient-based: Taylor, OBD-Hessian, OBD-C


def _task_loss(calib: Calibration) -> Any:
    if calib.loss is None:  # the prune loop refuses such a calibration set first
        raise ValueError(f"no {calib.task} loss on these calibration batches")
    return calib.loss


def collect_taylor(imp: Any, model: nn.Module, pruner: Any, calib: Calibration) -> None:
    """First-order Taylor: accumulate dL/dw of the task's loss over the calibration batches (model
    in eval mode, so BatchNorm statistics are not disturbed)."""
    loss = _task_loss(calib)
    model.eval()
    model.zero_grad(set_to_none=False)
    for batch in calib.batches:
        loss(model, batch).backward()


class HessianImportance(tp.importance.GroupHessianImportance):
    """OBD-Hessian: diagonal Hessian approximated by the mean of squared per-sample gradients."""

    def __init__(self, chunk: int = 16) -> None:
        super().__init__()
        self.chunk = chunk

    def collect(self, model: nn.Module, pruner: Any, calib: Calibration) -> None:
        """Per-sample gradients of the task's loss: vectorised (torch.func) where the task gives
        its loss as a function of the outputs, else one backward pass per image."""
        model.eval()
        if calib.output_loss is not None:
            self._store(model, *self._per_sample_vmap(model, calib.batches, calib.output_loss))
        else:
            self._store(model, *self._per_sample_loop(model, calib))

    def _store(self, model: nn.Module, acc: dict[str, torch.Tensor], n: int) -> None:
        self.zero_grad()
        for name, p in model.named_parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            self._accu_grad[p] = acc[name]
            self._counter[p] = n

    @staticmethod
    def _per_sample_loop(
        model: nn.Module, calib: Calibration
    ) -> tuple[dict[str, torch.Tensor], int]:
        loss = _task_loss(calib)
        if calib.sample is None:
            raise ValueError(f"the {calib.task} task cannot cut a batch into samples")
        acc = {k: torch.zeros_like(v) for k, v in model.named_parameters()}
        n = 0
        for batch in calib.batches:
            for i in range(len(batch[0])):
                model.zero_grad(set_to_none=True)
                loss(model, calib.sample(batch, i)).backward()
                for k, p in model.named_parameters():
                    if p.grad is not None:
                        acc[k] += p.grad.pow(2)
                n += 1
        return acc, n

    def _per_sample_vmap(
        self, model: nn.Module, batches: list[Batch], output_loss: Any
    ) -> tuple[dict[str, torch.Tensor], int]:
        from torch.func import functional_call, grad, vmap

        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = {k: v.detach() for k, v in model.named_buffers()}

        def sample_loss(
            p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
        ) -> torch.Tensor:
            out = functional_call(model, (p, b), (x.unsqueeze(0),))
            return output_loss(out, y.unsqueeze(0))

        per_sample = vmap(grad(sample_loss), in_dims=(None, None, 0, 0))
        acc = {k: torch.zeros_like(v) for k, v in params.items()}
        n = 0
        # vmap has no batching rule for the CPU fused-attention kernel: use timm's explicit path
        fused = [m for m in model.modules() if getattr(m, "fused_attn", False) is True]
        for m in fused:
            m.fused_attn = False
        try:
            for x, y in batches:
                for s in range(0, len(x), self.chunk):
                    g = per_sample(params, buffers, x[s : s + self.chunk], y[s : s + self.chunk])
                    for k in acc:
                        acc[k] += g[k].pow(2).sum(0)
                    n += len(x[s : s + self.chunk])
        finally:
            for m in fused:
                m.fused_attn = True
        return acc, n


def obdc_precheck(model: nn.Module) -> str | None:
    """Why OBD-C cannot prune ``model``: torch-pruning's Kronecker factors unfold plain
    convolutions only (no groups, no dilation)."""
    odd = next(
        (
            (n, m)
            for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.dilation != (1, 1))
        ),
        None,
    )
    if odd is None:
        return None
    return (
        "obdc (torch-pruning's EigenDamage) handles ungrouped, undilated convolutions only;"
        f" {odd[0]} has groups={odd[1].groups}, dilation={odd[1].dilation} (depthwise or atrous"
        " models: use another criterion, e.g. hessian or taylor)"
    )


def collect_obdc(imp: Any, model: nn.Module, pruner: Any, batches: list[Batch]) -> None:
    """OBD-C (EigenDamage): Kronecker-factored Fisher re-estimated before every step, labels
    sampled from the model's own softmax (the true Fisher, not the empirical one).

    The layer inputs and output gradients are captured with our own hooks: torch-pruning 1.6.1's
    ``_prepare_model`` iterates a ``None`` group for non-attention layers, and its ``_rm_hooks``
    would wipe every hook of the model."""
    imp._clear_buffer()
    layers: dict[nn.Module, None] = {}
    for g in _groups(pruner):
        for dep, _ in g:
            m = dep.target.module
            # every layer of a group, also one pruned only on its inputs (a protected head whose
            # outputs are classes per pixel): torch-pruning reads its Fisher too
            if isinstance(m, tuple(imp.target_types)):
                layers[m] = None
    imp.modules = list(layers)

    def fwd(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        imp.A[m] = inputs[0].detach()
        if out.requires_grad:
            out.register_hook(lambda grad, m=m: imp.DS.__setitem__(m, grad.detach()))

    handles = [m.register_forward_hook(fwd) for m in imp.modules]
    try:
        model.eval()
        g = torch.Generator().manual_seed(0)
        for x, _ in batches:
            model.zero_grad()
            out = model(x)
            # labels sampled from the model's own distribution (the true Fisher), per image or, for
            # per-pixel logits (N, classes, H, W), per pixel
            probs = F.softmax(out.detach(), dim=1).movedim(1, -1).reshape(-1, out.shape[1])
            sampled = torch.multinomial(probs, 1, generator=g).view(out.shape[0], *out.shape[2:])
            F.cross_entropy(out, sampled).backward()
            imp.step()
    finally:
        for h in handles:
            h.remove()
