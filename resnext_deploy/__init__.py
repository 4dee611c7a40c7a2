"""resnext-deploy: ResNeXt from PyTorch to ONNX, FP16/INT8 and TensorRT, with measured parity and speed."""

__version__ = "0.1.0"
