"""Triton Python-backend model: encoded JPEG/PNG bytes in, the classifier's normalised float32 input out.

``triton-repo --preprocess`` copies this file as ``model.py`` into the preprocessing model's version folder,
beside a verbatim copy of :mod:`resnext_deploy.imageprep`, and records the model's resize, crop,
interpolation and normalisation (the values ``verify`` uses) as the model's parameters. It imports nothing of
resnext_deploy: the server needs only numpy and Pillow in its Python backend's environment.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # imageprep.py, copied beside this file

from imageprep import bytes_to_tensor, refusal  # noqa: E402  # the copy beside this file, on the path set above

PARAMETERS = ("resize_size", "image_size", "mean", "std", "interpolation")


class TritonPythonModel:
    """Decodes each request's images and returns them resized, cropped and normalised, one batch per request."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        given = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        missing = [key for key in PARAMETERS if key not in given]
        if missing:
            raise ValueError(f"config.pbtxt lacks the parameter(s) {', '.join(missing)}; rerun triton-repo")
        self.resize_size = int(given["resize_size"])
        self.image_size = int(given["image_size"])
        self.mean = [float(v) for v in given["mean"].split(",")]
        self.std = [float(v) for v in given["std"].split(",")]
        self.interpolation = given["interpolation"]
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            encoded = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().reshape(-1)
            try:
                batch = np.stack([self.tensor(bytes(item)) for item in encoded])
            except Exception as exc:  # noqa: BLE001 - an undecodable image fails its request, not the model
                error = pb_utils.TritonError(f"{self.input_name}: {refusal(exc)}")
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, batch)]))
        return responses

    def tensor(self, data: bytes) -> np.ndarray:
        return bytes_to_tensor(data, self.resize_size, self.image_size, self.mean, self.std, self.interpolation)
