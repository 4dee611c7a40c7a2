"""resnext-deploy: ResNeXt from PyTorch to ONNX, FP16/INT8 and TensorRT, with measured parity and speed."""

from .environment import stay_offline

__version__ = "0.1.0"

stay_offline()  # before any backend library is imported: no telemetry, nothing written under HOME
