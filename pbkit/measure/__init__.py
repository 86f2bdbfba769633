"""Measurement: the backends that run a model (CPU, CUDA, ONNX Runtime, TensorRT), the timing
protocol (warm-up and measurement by time and count, alternating, stability gate), and memory."""
