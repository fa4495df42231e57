"""ONNX / onnxruntime / TensorRT export (later issue)."""
