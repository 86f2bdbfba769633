"""Process-wide state is set only inside scopes that restore it."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from pbkit.core import runtime


def test_isolated_restores_threads_precision_rngs_and_environment() -> None:
    before = runtime.snapshot()
    threads = torch.get_num_threads()
    with runtime.isolated():
        torch.set_num_threads(1 if threads > 1 else 2)
        runtime.strict_fp32()
        torch.backends.cudnn.benchmark = True
        torch.manual_seed(123)
        np.random.seed(123)
        random.seed(123)
        os.environ["PBKIT_TEST_LEAK"] = "1"
        os.environ.pop("PBKIT_DATA", None)
        inside = runtime.snapshot()
    assert inside != before and inside["cuda.matmul.fp32_precision"] == "ieee"
    assert runtime.snapshot() == before
    assert torch.get_num_threads() == threads and "PBKIT_TEST_LEAK" not in os.environ


def test_isolated_restores_on_errors_too() -> None:
    before = runtime.snapshot()
    with pytest.raises(RuntimeError), runtime.isolated():
        torch.rand(3)
        os.environ["PBKIT_TEST_LEAK"] = "2"
        raise RuntimeError("boom")
    assert runtime.snapshot() == before


def test_the_random_stream_continues_as_if_nothing_ran() -> None:
    torch.manual_seed(7)
    expected = torch.rand(2)
    torch.manual_seed(7)
    with runtime.isolated():
        torch.rand(1000)
    assert torch.equal(torch.rand(2), expected)


def test_strict_fp32_leaves_a_precision_torch_export_can_read() -> None:
    # torch refuses to read its legacy cuDNN flag where it disagrees with the conv and RNN
    # precisions; torch.export reads it, so the dynamo ONNX exporter failed on every model after
    # strict_fp32
    before = runtime.snapshot()
    with runtime.isolated():
        runtime.strict_fp32()
        assert torch.backends.cudnn.allow_tf32 is False
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
        model = torch.nn.Conv2d(3, 4, 1).eval()
        exported = torch.export.export(
            model, (torch.randn(1, 3, 4, 4),), strict=False
        ).run_decompositions()
        assert exported.graph_module is not None
    assert runtime.snapshot() == before
