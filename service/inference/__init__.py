"""Inference: runtimes (ONNX Runtime, PyTorch), the micro-batcher, the second-opinion policy."""
