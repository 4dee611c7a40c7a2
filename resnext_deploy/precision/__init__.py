"""Precision lives in the ONNX graph: calibration, the FP16 and INT8 conversions, and their held-out check."""
