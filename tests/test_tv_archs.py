"""torchvision's MaxViT and ShuffleNetV2 prune: their rewrites compute what torchvision computes,
what the dependency graph cannot follow is held as single layers (MaxViT's partitions and
attention) or held fixed (ShuffleNet's channel shuffle), and the pruned models reload and export
with parity."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from pbkit import stages
from pbkit.core import config
from pbkit.models import checkpoint, counts, maxvit, shufflenet, sources
from tests.conftest import output_in_fresh_process


def test_the_prunable_maxvit_computes_what_torchvision_computes() -> None:
    torch.manual_seed(0)
    original = torchvision.models.maxvit_t().eval()
    prunable = maxvit.make_prunable(copy.deepcopy(original))
    assert sum(isinstance(m, maxvit.Attention) for m in prunable.modules()) == 22
    x = torch.randn(2, 3, 224, 224)  # MaxViT-T takes multiples of 224 only (7x7 windows at 1/32)
    with torch.no_grad():
        assert torch.equal(prunable(x), original(x))
    assert prunable.state_dict().keys() == original.state_dict().keys()
    assert sources.resolve("tv:maxvit_t").input_size == 224
    assert any(
        isinstance(m, maxvit.Attention)
        for m in sources.build(sources.resolve("tv:maxvit_t")).modules()
    )


def test_the_prunable_shufflenet_computes_what_torchvision_computes() -> None:
    torch.manual_seed(0)
    original = torchvision.models.shufflenet_v2_x0_5().eval()
    prunable = shufflenet.make_prunable(copy.deepcopy(original))
    units = [m for m in prunable.modules() if isinstance(m, shufflenet.ShuffleUnit)]
    assert len(units) == 16 and all(u.shuffle.channels in (48, 96, 192) for u in units)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(prunable(x), original(x))
    assert prunable.state_dict().keys() == original.state_dict().keys()  # the same checkpoints load
    fixed = shufflenet.fixed(prunable)
    assert (
        len([m for m in fixed if isinstance(m, nn.Conv2d)]) == 16 + 3
    )  # each unit's branch2, the 3 branch1s


def _run(tmp_path: Path, name: str, size: int, scope: str, until: str) -> stages.Outcome:
    cfg = config.load(
        None,
        [
            f"model.name={name}",
            f"model.input_size={size}",
            "prune.method=l2",
            "prune.speedup=1.5",
            f"prune.scope={scope}",
            "prune.iterative_steps=10",
            f"out={tmp_path / 'runs'}",
        ],
    )
    return stages.run(cfg, until=until, quiet=True)


def _reloads(out: stages.Outcome, size: int, tmp_path: Path) -> nn.Module:
    model, _, _ = checkpoint.load_model(out.run_dir / "pruned.pt")
    x = counts.example_input(size, batch=2)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 1000)
    assert torch.allclose(
        output_in_fresh_process(out.run_dir / "pruned.pt", x, tmp_path), y, atol=1e-5
    )
    return model


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["local", "protected"])
def test_maxvit_prunes_reloads_and_exports_with_parity(scope: str, tmp_path: Path) -> None:
    until = "export" if scope == "protected" else "prune"
    out = _run(tmp_path, "tv:maxvit_t", 224, scope, until)
    rec = out.record
    assert rec.method.achieved_speedup >= 1.5 and rec.counts.params_pruned < rec.counts.params_base
    model = _reloads(out, 224, tmp_path)
    widths = [a.to_qkv.in_features for a in model.modules() if isinstance(a, maxvit.Attention)]
    inner = [a.to_qkv.out_features for a in model.modules() if isinstance(a, maxvit.Attention)]
    assert (
        inner == [192] * 4 + [384] * 4 + [768] * 10 + [1536] * 4
    )  # heads and head width as they were
    if scope == "local":  # every stage's residual stream, entering its attention, is narrower
        assert all(
            w < d
            for w, d in zip(widths, [64] * 4 + [128] * 4 + [256] * 10 + [512] * 4, strict=True)
        )
    if until == "export":
        assert rec.parity and all(p.passed for p in rec.parity)


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["local", "global", "protected"])
def test_shufflenet_prunes_its_units_inner_widths_reloads_and_exports_with_parity(
    scope: str, tmp_path: Path
) -> None:
    until = "export" if scope == "protected" else "prune"
    out = _run(tmp_path, "tv:shufflenet_v2_x0_5", 64, scope, until)
    rec = out.record
    assert rec.method.achieved_speedup >= 1.5
    model = _reloads(out, 64, tmp_path)
    units = [m for m in model.modules() if isinstance(m, shufflenet.ShuffleUnit)]
    assert all(
        u.shuffle.channels in (48, 96, 192) for u in units
    )  # the stream between units keeps its width
    inner = [u.branch2[0].out_channels for u in units]
    assert sum(inner) < sum(u.shuffle.channels // 2 for u in units)  # the bottlenecks were pruned
    if until == "export":
        assert rec.parity and all(p.passed for p in rec.parity)


class ShuffleAttn(nn.Module):
    """An attention-like block the dependency graph cannot follow: a stand-in that fails when
    traced with autograd (as CaiT's talking heads fail inside torch-pruning), a channel shuffle
    otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("this block cannot be traced")
        b, c, h, w = x.shape
        return x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)


class Hybrid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.mix = ShuffleAttn()
        self.body = nn.Sequential(
            nn.Conv2d(16, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.mix(self.stem(x))))


def test_a_model_the_graph_cannot_trace_prunes_around_its_attention_blocks_held_fixed() -> None:
    import torch_pruning as tp

    from pbkit.pruning import PruneSettings, methods, prune_to_target

    torch.manual_seed(0)
    model = Hybrid().eval()
    with pytest.raises(
        RuntimeError, match="cannot be traced"
    ):  # as it is, torch-pruning cannot trace it
        tp.DependencyGraph().build_dependency(
            copy.deepcopy(model), example_inputs=torch.randn(1, 3, 16, 16)
        )
    x = torch.randn(2, 3, 16, 16)
    res = prune_to_target(
        model,
        methods.get("l2"),
        PruneSettings(speedup=1.5, iterative_steps=10),
        input_size=16,
        num_classes=10,
        protected=[model.head],
    )
    assert res.achieved_speedup >= 1.5 and res.held_fixed == ["mix"]
    assert not any(m._forward_hooks for m in model.modules())  # the failed trace's hooks are gone
    assert (
        model.stem[0].out_channels == 16 and model.body[0].in_channels == 16
    )  # what enters and leaves it
    assert model.body[0].out_channels < 64  # the rest pruned
    with torch.no_grad():
        assert model(x).shape == (2, 10)


class WidthAttn(nn.Module):
    """An attention-like block that takes its inner width from its input (as CrossViT's and many
    timm attentions do): the graph traces it, but once its ``qk`` loses channels the reshape fails.
    """

    def __init__(self, c: int) -> None:
        super().__init__()
        self.qk = nn.Conv2d(c, 2 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k = self.qk(x).reshape(b, 2, c, h, w).unbind(1)
        return x + self.proj(q * k.sigmoid())


def test_a_step_that_breaks_the_model_starts_again_with_its_attention_blocks_held_fixed() -> None:
    from pbkit.pruning import PruneHooks, PruneSettings, methods, prune_to_target

    torch.manual_seed(0)
    model = Hybrid().eval()
    model.mix = WidthAttn(16)
    head = model.head
    protected = [head]
    seen: list[int] = []
    res = prune_to_target(
        model,
        methods.get("l2"),
        PruneSettings(speedup=1.5, iterative_steps=10),
        input_size=16,
        num_classes=10,
        protected=protected,
        hooks=PruneHooks(on_step=lambda i, _: seen.append(i)),
    )
    assert protected == [head] and protected[0] is head  # the caller's list is never edited
    restart = seen.index(1, 1)  # the first try's steps, then the second's from 1 again
    assert restart >= 1 and seen[restart:] == list(range(1, len(seen) - restart + 1))
    assert res.held_fixed == ["mix"] and res.achieved_speedup >= 1.5
    assert (
        model.mix.qk.out_channels == 32 and model.mix.proj.out_channels == 16
    )  # back as it was, then kept
    assert (
        model.body[0].out_channels < 64 and model.head is not head
    )  # the rest pruned, on the restored copy
    with torch.no_grad():
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_where_every_attempt_fails_the_model_is_left_as_it_was_and_the_error_names_both() -> None:
    # the first attempt breaks the model in a step, the second cannot reach the target: the
    # caller's model is left as it was given (its shapes and weights: the copy kept before the
    # first attempt)
    from pbkit.core.errors import PbkitError
    from pbkit.pruning import PruneSettings, methods, prune_to_target

    torch.manual_seed(0)
    model = Hybrid().eval()
    model.mix = WidthAttn(16)
    before = {n: tuple(p.shape) for n, p in model.named_parameters()}
    weights = {n: p.detach().clone() for n, p in model.state_dict().items()}
    with pytest.raises(PbkitError) as e:
        prune_to_target(
            model,
            methods.get("l2"),
            PruneSettings(speedup=50.0, iterative_steps=10),
            input_size=16,
            num_classes=10,
            protected=[model.head],
        )
    message = str(e.value)
    assert message.startswith(("pruning step", "after pruning step"))  # the first attempt's
    assert "(and with its 1 attention blocks held fixed: speed-up target 50.0x is unreachable" in (
        message
    )
    assert {n: tuple(p.shape) for n, p in model.named_parameters()} == before
    assert all(torch.equal(weights[n], t) for n, t in model.state_dict().items())


def test_a_graph_that_runs_away_is_traced_again_with_its_attention_blocks_held_fixed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    import psutil

    from pbkit.core import budget
    from pbkit.pruning import PruneSettings, loop, methods, prune_to_target

    real = loop._graph

    def graph(p: object, hold: list[object]) -> object:
        if not hold:  # the whole model: memory grows without end, as Swin's did
            hog = []
            while True:
                hog.append(bytearray(8 * 2**20))
                time.sleep(0.002)
        return real(p, hold)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "_graph", graph)
    model = Hybrid().eval()
    limit = psutil.Process().memory_info().rss / budget.GIB + 0.3
    res = prune_to_target(
        model,
        methods.get("l2"),
        PruneSettings(speedup=1.5, iterative_steps=10, max_memory_gib=limit),
        input_size=16,
        num_classes=10,
        protected=[model.head],
    )
    assert (
        res.achieved_speedup >= 1.5
        and res.held_fixed == ["mix"]
        and model.stem[0].out_channels == 16
    )


def test_an_error_inside_a_pruning_step_or_the_pruned_forward_is_one_line_naming_the_step() -> None:
    from pbkit.core.errors import PbkitError
    from pbkit.pruning import loop

    with pytest.raises(PbkitError) as e:
        with loop._failing("after pruning step 3 the model no longer runs", loop.CUT_WRONG):
            raise RuntimeError("shape '[1, 16]' is invalid for input of size 9\nand more")
    assert (
        str(e.value)
        == "after pruning step 3 the model no longer runs: RuntimeError: shape '[1, 16]' is "
        f"invalid for input of size 9; {loop.CUT_WRONG}"
    )
    with pytest.raises(PbkitError, match="^kept$"):  # the kit's own errors pass as they are
        with loop._failing("pruning step 1 failed inside torch-pruning", loop.MAPPED_WRONG):
            raise PbkitError("kept")


class HaloAttn(nn.Module):
    """Attention the graph cannot trace whose input only its own projections read (as timm's
    HaloAttn's ``q`` and ``kv``)."""

    def __init__(self, c: int, residual: bool = False) -> None:
        super().__init__()
        self.q, self.kv, self.residual = (
            nn.Conv2d(c, 8, 1),
            nn.Conv2d(c, 16, 1, bias=False),
            residual,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("this block cannot be traced")
        k, v = self.kv(x).chunk(2, 1)
        out = v * (self.q(x) * k).softmax(1)
        return out + x[:, :8] if self.residual else out


def test_a_held_block_whose_input_only_its_projections_read_has_its_input_channels_pruned() -> None:
    from pbkit.pruning import PruneSettings, methods, prune_to_target
    from pbkit.pruning.repairs import held

    torch.manual_seed(0)
    model = Hybrid().eval()
    model.mix = HaloAttn(16)
    model.body[0] = nn.Conv2d(8, 64, 3, padding=1)
    assert held.entries(model, [model.mix], torch.randn(1, 3, 16, 16)) == {
        model.mix: [model.mix.kv, model.mix.q]
    }
    x = torch.randn(2, 3, 16, 16)
    res = prune_to_target(
        model,
        methods.get("l2"),
        PruneSettings(speedup=1.5, iterative_steps=10),
        input_size=16,
        num_classes=10,
        protected=[model.head],
    )
    assert res.achieved_speedup >= 1.5 and res.held_fixed == ["mix"]
    assert model.stem[0].out_channels < 16  # the stream entering it is pruned...
    assert model.mix.q.in_channels == model.mix.kv.in_channels == model.stem[0].out_channels
    assert (
        model.mix.q.out_channels == 8
        and model.mix.kv.out_channels == 16
        and model.body[0].in_channels == 8
    )
    with torch.no_grad():  # ...and what leaves it stays
        assert model(x).shape == (2, 10)
    residual = Hybrid().train()
    residual.mix = HaloAttn(
        16, residual=True
    )  # its input also added to its output: held in and out
    assert held.entries(residual, [residual.mix], torch.randn(1, 3, 16, 16)) == {}
    assert residual.training  # (its probe leaves the model's mode as it was)
