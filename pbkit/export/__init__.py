"""Export: ONNX files of the dense and pruned models, TensorRT engines built from them, and the
parity gates that compare any backend's outputs with fp32 torch."""
