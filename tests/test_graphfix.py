"""Channel splits and concatenations torch-pruning gets wrong on its own (timm's CSP nets, Res2Net)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn


def cbr(i: int, o: int, k: int = 1) -> nn.Sequential:
    """Conv, then timm's fused norm and activation (a BatchNorm2d whose forward torch-pruning sees
    as an element-wise op)."""
    from timm.layers import BatchNormAct2d

    return nn.Sequential(nn.Conv2d(i, o, k, padding=k // 2, bias=False), BatchNormAct2d(o))


class CrossStage(nn.Module):
    """A cross-stage-partial stage, as timm's CS3 nets build it: the expanded map is split in two
    halves with a width fixed at build time; one half runs through a residual block, the other goes
    straight to the concatenation."""

    def __init__(self, c: int = 32) -> None:
        super().__init__()
        self.half = c // 2
        self.conv_exp = cbr(16, c)
        self.block = nn.Sequential(cbr(self.half, 48), cbr(48, self.half, 3))
        self.conv_transition = cbr(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.conv_exp(x).split(self.half, dim=1)
        x1 = x1 + self.block(x1)
        return self.conv_transition(torch.cat([x1, x2], dim=1))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16, 3)
        self.stage = CrossStage()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(self.stem(x)))


def test_torch_pruning_alone_maps_a_cross_stage_split_wrong() -> None:
    import torch_pruning as tp

    model = Net().eval()
    pruner = tp.pruner.MagnitudePruner(model, torch.randn(1, 3, 16, 16), importance=tp.importance.MagnitudeImportance(),
                                       ignored_layers=[model.head[2]])
    with pytest.raises(IndexError):  # some group's channel indices fall outside its layers
        for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers):
            tp.importance.MagnitudeImportance()(group)


def test_a_concatenation_whose_widths_torch_pruning_cannot_infer_gets_them_from_the_trace() -> None:
    import timm
    import torch_pruning as tp

    from pbkit.prune import graphfix

    model = timm.create_model("cs3darknet_s", pretrained=False).eval()
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(TypeError, match="NoneType"):  # its last stage's concatenation: int + None
        tp.DependencyGraph().build_dependency(model, example_inputs=x)
    with graphfix.exact_concat_sizes():
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    cats = [n.module.concat_sizes for n in graph.module2node.values() if n.type == tp.ops.OPTYPE.CONCAT]
    assert [256, 256] in cats and all(None not in c for c in cats if c)


def test_a_cross_stage_split_prunes_around_it_and_the_model_still_computes_the_same_way() -> None:
    from pbkit.prune import PruneSettings, methods, prune_to_target

    torch.manual_seed(0)
    model = Net().eval()
    before = copy.deepcopy(model)
    res = prune_to_target(model, methods.get("l2"), PruneSettings(speedup=1.3, iterative_steps=10), input_size=16,
                          num_classes=10, protected=[model.head[2]])
    assert res.achieved_speedup >= 1.3
    stage = model.stage
    assert stage.conv_exp[0].out_channels == 32 and stage.conv_transition[0].in_channels == 32  # the split's map
    assert stage.block[1][0].out_channels == 16  # the residual branch added to a chunk
    assert stage.block[0][0].out_channels < 48  # the block's inner width pruned
    with torch.no_grad():
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    # the kept inner channels are the same ones in the conv that makes them and the conv that reads them
    kept = stage.block[0][0].out_channels
    assert stage.block[1][0].in_channels == kept and before.stage.block[0][0].out_channels == 48


def test_the_patch_is_undone_when_the_graph_is_built() -> None:
    from torch_pruning.dependency import index_mapping

    from pbkit.prune import graphfix

    original = index_mapping.update_concat_index_mapping
    with graphfix.exact_concat_sizes():
        assert index_mapping.update_concat_index_mapping is not original
    assert index_mapping.update_concat_index_mapping is original


def test_only_splits_of_a_feature_maps_channels_are_held() -> None:
    import torch_pruning as tp

    from pbkit.prune import graphfix

    class Splits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            a, b = y.chunk(2, dim=-3)  # channels, counted from the end
            tokens = self.fc(y.flatten(2).transpose(1, 2))
            t1, t2 = tokens.split(4, dim=-1)  # a token tensor's features: not a feature map
            h1, h2 = y.split(2, dim=2)  # rows, not channels
            return (a * b).mean() + (t1 * t2).mean() + (h1 * h2).mean()

    with graphfix.exact_concat_sizes():
        dg = tp.DependencyGraph().build_dependency(Splits().eval(), example_inputs=torch.randn(1, 3, 4, 4))
    assert len(graphfix.channel_splits(dg)) == 1


def _thin_groups() -> nn.Sequential:
    """A grouped convolution with one input channel per group and four outputs per group (as DPN's
    and, once pruned, ResNeXt-64x4d's are)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                         nn.Conv2d(8, 32, 3, padding=1, groups=8), nn.ReLU(), nn.Conv2d(32, 16, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


def test_torch_pruning_alone_fails_on_a_grouped_conv_with_one_input_channel_per_group() -> None:
    import torch_pruning as tp

    model = _thin_groups()
    pruner = tp.pruner.MagnitudePruner(model, torch.randn(1, 3, 8, 8), importance=tp.importance.MagnitudeImportance(),
                                       pruning_ratio=0.5, ignored_layers=[model[-1]])
    with pytest.raises(IndexError):
        pruner.step()


def test_a_grouped_conv_with_one_input_channel_per_group_keeps_its_inputs_and_the_rest_prunes() -> None:
    from pbkit.prune import PruneSettings, methods, prune_to_target

    torch.manual_seed(0)
    model = _thin_groups()
    res = prune_to_target(model, methods.get("l2"), PruneSettings(speedup=1.3, iterative_steps=10), input_size=8,
                          num_classes=10, protected=[model[-1]])
    assert res.achieved_speedup >= 1.3
    assert model[3].in_channels == model[3].groups == 8 and model[0].out_channels == 8  # its input group stays
    assert model[3].out_channels < 32 and model[5].out_channels < 16  # its outputs and the rest pruned
    with torch.no_grad():
        assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_channel_slices_are_held_like_splits() -> None:
    import torch_pruning as tp

    from pbkit.prune import graphfix

    class Slices(nn.Module):  # as DPN slices its dense path
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return y[:, :4] * y[:, 4:]

    with graphfix.exact_concat_sizes():
        dg = tp.DependencyGraph().build_dependency(Slices().eval(), example_inputs=torch.randn(1, 3, 4, 4))
    assert len(graphfix.channel_splits(dg)) == 2


def test_an_efficient_channel_attention_gate_prunes_with_the_channels_through_it() -> None:
    from timm.layers import EcaModule

    from pbkit.prune import PruneSettings, methods, opaque, prune_to_target

    torch.manual_seed(0)
    model = nn.Sequential(cbr(3, 32, 3), nn.Conv2d(32, 32, 3, padding=1), EcaModule(32), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()
    assert model[2] in opaque.blocks(model)  # one node while traced (its reshapes make groups take minutes)
    res = prune_to_target(model, methods.get("l2"), PruneSettings(speedup=1.5, iterative_steps=10), input_size=16,
                          num_classes=10, protected=[model[6]])
    assert res.achieved_speedup >= 1.5 and not res.held_fixed
    assert model[1].out_channels < 32 and model[6].in_features == model[1].out_channels  # pruned through the gate
    with torch.no_grad():
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_a_layer_with_a_per_channel_tensor_torch_pruning_leaves_whole_keeps_its_outputs() -> None:
    from timm.layers import ScaledStdConv2d

    from pbkit.prune import PruneSettings, graphfix, methods, prune_to_target

    torch.manual_seed(0)
    model = nn.Sequential(ScaledStdConv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(32, 16, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 10)).eval()
    assert graphfix.extra_channel_parameters(model) == [(model[0], "gain")]  # its gain: one entry per output
    res = prune_to_target(model, methods.get("l2"), PruneSettings(speedup=1.3, iterative_steps=20), input_size=16,
                          num_classes=10, protected=[model[7]])
    assert res.achieved_speedup >= 1.3
    assert model[0].out_channels == model[0].gain.shape[0] == 16 and model[2].out_channels < 32
    with torch.no_grad():
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_a_pruned_cnn_that_no_longer_runs_is_caught_before_it_is_saved(monkeypatch: pytest.MonkeyPatch) -> None:
    # a CNN's MACs are read from its weights' shapes, so nothing ran it after the last step
    from timm.layers import ScaledStdConv2d

    from pbkit.core.errors import PbkitError
    from pbkit.prune import PruneSettings, graphfix, methods, prune_to_target

    monkeypatch.setattr(graphfix, "extra_channel_parameters", lambda model: [])  # as before the hold
    model = nn.Sequential(ScaledStdConv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    with pytest.raises(PbkitError, match="the model no longer runs: RuntimeError"):
        prune_to_target(model, methods.get("l2"), PruneSettings(speedup=1.3, iterative_steps=20), input_size=16,
                        num_classes=10, protected=[model[5]])
