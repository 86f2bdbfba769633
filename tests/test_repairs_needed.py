"""torch-pruning alone still gets wrong what each of pbkit's repairs fixes
(:mod:`pbkit.pruning.repairs`).

One case per repair, on a small model that needs it: the same model and group operation with
torch-pruning alone, and the failure it gives (an exception, a model that no longer runs, or a
graph that runs past a short budget where it used to take minutes and gigabytes). A torch-pruning
release that fixes one upstream fails its case here: the repair may then go. A repair without a
case fails :func:`test_every_repair_has_a_case`. And each repair that no longer fits
torch-pruning's internals says so, apart from a model the graph cannot trace.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn

from pbkit.core import budget
from pbkit.core.errors import PbkitError
from pbkit.pruning import PruneSettings, methods, prune_to_target
from pbkit.pruning.repairs import REPAIRS, common, cuts, graph
from tests.test_repairs import Net, _MapEmbedded, _thin_groups, cbr

RUNS_AWAY_S = 2.0  # torch-pruning alone took minutes (and gigabytes) on these; pbkit, under 1 s


def _alone(
    model: nn.Module, x: torch.Tensor, ignored: list[nn.Module], steps: int = 1, **kw: object
) -> None:
    """Prune ``model`` with torch-pruning alone (magnitude, half of every group over ``steps``)
    and run it; whatever fails, raises."""
    pruner = tp.pruner.MagnitudePruner(
        model.eval(),
        x,
        importance=tp.importance.MagnitudeImportance(),
        pruning_ratio=0.5 if steps == 1 else 0.6,
        iterative_steps=steps,
        ignored_layers=ignored,
        **kw,
    )
    for _ in range(steps):
        pruner.step()
    with torch.no_grad():
        model(x)


def _runs_away(model: nn.Module, x: torch.Tensor, ignored: list[nn.Module]) -> None:
    """torch-pruning alone, on ``model``, runs past a short time budget (and 1 GiB more memory)."""
    with pytest.raises(budget.OverBudget, match="stopped"):
        with budget.guarded("torch-pruning alone", budget.resident_gib() + 1.0, RUNS_AWAY_S):
            _alone(model, x, ignored)


def _fails(error: type[BaseException], match: str, f: Callable[[], object]) -> None:
    with pytest.raises(error, match=match):
        f()


def _x(size: int = 16) -> torch.Tensor:
    return torch.randn(1, 3, size, size)


# --- graph ----------------------------------------------------------------------------------------


def shapes_only() -> None:
    # the graph keeps the traced activations (a ViT at 768 px: 12 GiB); under the repair, none
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()

    def saved() -> set[str]:  # the devices of the tensors the graph's nodes saved
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=_x())
        fns = [n.grad_fn for n in dg.module2node.values() if n.grad_fn is not None]
        kept = [getattr(f, a) for f in fns for a in dir(f) if a.startswith("_saved_")]
        return {t.device.type for t in kept if isinstance(t, torch.Tensor) and t.numel() > 1}

    assert "cpu" in saved()
    with graph.shapes_only():
        assert saved() == {"meta"}


def concat_sizes() -> None:
    import timm

    model = timm.create_model("cs3darknet_s", pretrained=False).eval()
    _fails(  # its last stage's concatenation: int + None
        TypeError,
        "NoneType",
        lambda: tp.DependencyGraph().build_dependency(model, example_inputs=_x(64)),
    )


def channel_splits() -> None:
    # (and astray groups: a group whose indices fall outside its layers, what this leaves)
    model = Net().eval()
    pruner = tp.pruner.MagnitudePruner(
        model, _x(), importance=tp.importance.MagnitudeImportance(), ignored_layers=[model.head[2]]
    )

    def score() -> None:
        for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers):
            tp.importance.MagnitudeImportance()(group)

    _fails(IndexError, "out of bounds", score)


class _Tokens(nn.Module):
    """A gated MLP on tokens after a position embedding (timm's GluMlp)."""

    def __init__(self) -> None:
        from timm.layers import GluMlp

        super().__init__()
        self.embed = nn.Conv2d(3, 32, 4, 4)
        self.pos = nn.Parameter(torch.zeros(1, 16, 32))
        self.mlp = GluMlp(32, 128, act_layer=nn.SiLU)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head((x + self.mlp(x)).mean(1))  # type: ignore[no-any-return]


def gated_token_splits() -> None:
    model = _Tokens()
    _fails(IndexError, "out of bounds", lambda: _alone(model, _x(), [model.head]))


def empty_expand() -> None:
    from torch_pruning import _helpers
    from torch_pruning.dependency import index_mapping

    mapping = index_mapping._GQAIndexMapping(repeat=0, head_dim=8, reverse=True)
    idxs = [_helpers._HybridIndex(idx=i, root_idx=i) for i in (1, 5)]
    _fails(ZeroDivisionError, "by zero", lambda: mapping(idxs))


def zero_channel_reshape() -> None:
    import timm

    model = timm.create_model("shvit_s1", num_classes=10).eval()
    _fails(
        ZeroDivisionError,
        "by zero",
        lambda: tp.DependencyGraph().build_dependency(model, example_inputs=_x(64)),
    )


def one_channel_groups() -> None:
    model = _thin_groups()
    _fails(IndexError, "out of", lambda: _alone(model, _x(8), [model[-1]]))


def square_maps() -> None:
    model = _MapEmbedded()  # (the map's columns cut, not its channels)
    _fails(RuntimeError, "must match", lambda: _alone(model, _x(), [model.head], steps=2))


# --- cuts -----------------------------------------------------------------------------------------


def extra_channel_tensors() -> None:
    from timm.layers import ScaledStdConv2d

    model = nn.Sequential(
        ScaledStdConv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    _fails(RuntimeError, "weight should contain", lambda: _alone(model, _x(), [model[5]]))


class _Chunked(nn.Module):
    """A feature map chunked in two, value times gate."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.head = nn.Conv2d(3, 32, 1), nn.Conv2d(16, 8, 1), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.c1(x).chunk(2, dim=1)
        return self.head(self.c2(a * b.sigmoid()).mean((2, 3)))  # type: ignore[no-any-return]


def split_offsets() -> None:
    # the second step maps its indices with the traced chunk offsets; with them moved, it runs
    model = _Chunked()
    _fails(IndexError, "out of bounds", lambda: _alone(model, _x(8), [model.head], steps=3))
    fixed = _Chunked()
    with cuts.cuts_follow():
        _alone(fixed, _x(8), [fixed.head], steps=3)


def view_shapes() -> None:
    from timm.models.metaformer import Scale

    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        Scale(16),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    _fails(RuntimeError, "is invalid for input", lambda: _alone(model, _x(), [model[5]]))


def attention_widths() -> None:
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(
        img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, num_classes=10
    )
    heads = {model.blocks[0].attn.qkv: 2}
    _fails(
        RuntimeError,
        "is invalid for input",
        lambda: _alone(model, _x(), [model.head], num_heads=heads, prune_head_dims=True),
    )


# --- held -----------------------------------------------------------------------------------------


def window_attention() -> None:
    from pbkit.models import swin

    block = torchvision.models.swin_transformer.SwinTransformerBlock(16, 2, [4, 4], [2, 2])
    model = nn.Sequential(
        nn.Conv2d(3, 16, 4, 4),
        torchvision.ops.Permute([0, 2, 3, 1]),
        swin.make_prunable(nn.Sequential(block))[0],
        torchvision.ops.Permute([0, 3, 1, 2]),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    _runs_away(model, _x(32), [model[-1]])


def patch_merging() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 16, 4, 4),
        torchvision.ops.Permute([0, 2, 3, 1]),
        torchvision.models.swin_transformer.PatchMerging(16),
        torchvision.ops.Permute([0, 3, 1, 2]),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    _fails(RuntimeError, "normalized_shape", lambda: _alone(model, _x(32), [model[-1]]))


def partitions() -> None:
    from pbkit.models import maxvit

    tiny = torchvision.models.MaxVit(
        input_size=(32, 32),
        stem_channels=8,
        partition_size=2,
        block_channels=[16],
        block_layers=[1],
        head_dim=8,
        stochastic_depth_prob=0.0,
        num_classes=10,
    )
    model = maxvit.make_prunable(tiny)
    _runs_away(model, _x(32), [model.classifier[-1]])


def channel_gates() -> None:
    from timm.layers import EcaModule

    model = nn.Sequential(
        nn.Conv2d(3, 128, 3, padding=1),
        nn.Conv2d(128, 128, 3, padding=1),
        EcaModule(128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 10),
    )
    _runs_away(model, _x(8), [model[-1]])


def blur_pools() -> None:
    from timm.layers import BlurPool2d

    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        BlurPool2d(16),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    _fails(RuntimeError, "expected input", lambda: _alone(model, _x(), [model[-1]]))


def global_context() -> None:
    from timm.layers import GlobalContext

    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        GlobalContext(16, fuse_add=True, fuse_scale=True),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    _runs_away(model, _x(), [model[-1]])


def mixed_convolutions() -> None:
    from timm.layers import MixedConv2d

    model = nn.Sequential(
        nn.Conv2d(3, 24, 1),
        MixedConv2d(24, 24, [3, 5, 7], padding="", depthwise=True),
        nn.Conv2d(24, 32, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    _fails(RuntimeError, "split_with_sizes", lambda: _alone(model, _x(), [model[-1]]))


def channel_shuffle() -> None:
    unit = torchvision.models.shufflenetv2.InvertedResidual(16, 16, 1)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        unit,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    _fails(RuntimeError, "expected input", lambda: _alone(model, _x(8), [model[-1]]))


def held_blocks() -> None:
    # CaiT's talking-heads attention, which torch-pruning maps past its heads' end
    from timm.models.cait import Cait

    model = Cait(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, depth_token_only=1)
    _fails(IndexError, "out of bounds", lambda: _alone(model, _x(32), [model.head]))


CASES: dict[str, Callable[[], None]] = {
    "shapes only": shapes_only,
    "concat sizes": concat_sizes,
    "channel splits": channel_splits,
    "astray groups": channel_splits,
    "gated token splits": gated_token_splits,
    "empty expand": empty_expand,
    "zero-channel reshape": zero_channel_reshape,
    "one-channel groups": one_channel_groups,
    "square maps": square_maps,
    "extra channel tensors": extra_channel_tensors,
    "split offsets": split_offsets,
    "view shapes": view_shapes,
    "attention widths": attention_widths,
    "window attention": window_attention,
    "patch merging": patch_merging,
    "partitions": partitions,
    "channel gates": channel_gates,
    "blur pools": blur_pools,
    "global context": global_context,
    "mixed convolutions": mixed_convolutions,
    "channel shuffle": channel_shuffle,
    "held blocks": held_blocks,
}


@pytest.mark.parametrize("repair", sorted(CASES))
def test_torch_pruning_alone_still_needs_the_repair(repair: str) -> None:
    torch.manual_seed(0)
    CASES[repair]()


def test_every_repair_has_a_case_and_every_name_a_repair_gives_is_listed() -> None:
    assert set(CASES) == set(REPAIRS)
    root = Path(common.__file__).parent
    named = {
        m for f in root.glob("*.py") for m in re.findall(r"fits\(\s*\"([^\"]+)\"", f.read_text())
    }
    assert named and named <= set(REPAIRS)


# --- a repair that no longer fits torch-pruning ---------------------------------------------------


def _prune_small(model: nn.Module, head: nn.Module) -> object:
    return prune_to_target(
        model,
        methods.get("l2"),
        PruneSettings(speedup=1.3, iterative_steps=10),
        input_size=16,
        num_classes=10,
        protected=[head],
    )


@pytest.mark.parametrize(
    ("module", "attribute", "repair"),
    [
        ("torch_pruning.dependency.index_mapping", "update_concat_index_mapping", "concat sizes"),
        ("torch_pruning.dependency.index_mapping", "_GQAIndexMapping", "empty expand"),
        ("torch_pruning._helpers", "UnwrappedParameters", "square maps"),
    ],
)
def test_a_repair_that_no_longer_fits_torch_pruning_says_so_not_that_the_model_cannot_be_traced(
    monkeypatch: pytest.MonkeyPatch, module: str, attribute: str, repair: str
) -> None:
    import importlib

    monkeypatch.setattr(common, "FOUND", "1.6.9")  # as if another patch release were installed
    monkeypatch.delattr(importlib.import_module(module), attribute)  # (a renamed internal)
    model = _MapEmbedded() if repair == "square maps" else nn.Sequential(cbr(3, 16), cbr(16, 8))
    head = model.head if isinstance(model, _MapEmbedded) else model[1][0]
    with pytest.raises(common.RepairBroken) as e:
        _prune_small(model, head)
    message = str(e.value)
    assert message.startswith(
        f"pbkit's repair {repair!r} no longer fits torch-pruning 1.6.9 (written for 1.6.1):"
        " AttributeError: "
    )
    assert attribute in message and "could not trace" not in message and "\n" not in message
    assert e.value.repair == repair


def test_torch_pruning_of_another_release_is_told_at_import_and_another_minor_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert common.WRITTEN_FOR == "1.6.1" and common.mismatch(common.WRITTEN_FOR) is None
    with pytest.warns(RuntimeWarning, match="written for 1.6.1 and torch-pruning 1.6.4 is"):
        common.warn_at_import("1.6.4")
    assert "a repair that fails says which" in str(common.mismatch("1.6.4"))
    monkeypatch.setattr(common, "FOUND", "1.6.4")
    common.require_fit()  # another patch release: pruning goes on
    monkeypatch.setattr(common, "FOUND", "1.7.0")
    model = nn.Sequential(cbr(3, 16), cbr(16, 8))
    with pytest.raises(PbkitError, match="1.7.0 is installed: pbkit refuses to prune with it"):
        _prune_small(model, model[1][0])
