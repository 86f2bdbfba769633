"""Measurement: the backends that run a model (CPU, CUDA, ONNX Runtime, TensorRT), the timing
protocol (warm-up and measurement by time and count, alternating, stability gate), and memory.

:mod:`.settings` holds the protocol's typed test settings (made from ``cfg.bench`` per device),
:mod:`.protocol` measures with them and returns :mod:`.results`' dataclasses,
:mod:`.uncertainty` makes the intervals, :mod:`.memory` watches a runner being built, and
:mod:`.layers` times layers and models for latency-targeted pruning."""
