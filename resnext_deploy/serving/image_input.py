"""``serve``'s image model: encoded JPEG or PNG bytes in, logits and the top class's name out.

It stands beside the tensor model, on the same runners, as ``<model>_image`` (the name ``triton-repo
--preprocess`` gives its ensembles), and decodes, resizes, crops and normalises with
:func:`resnext_deploy.imageprep.bytes_to_tensor` and DIR's recorded preprocessing: the code ``verify`` runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from ..archs import Preprocessing
from ..backends.base import Runner
from ..imageprep import bytes_to_tensor, refusal
from .ensemble import IMAGE_INPUT, IMAGE_SUFFIX

CLASS_OUTPUT = "CLASS"  # the top-1 class name of each image (its index where DIR has no class names)


def image_model_name(model_name: str) -> str:
    return f"{model_name}{IMAGE_SUFFIX}"


def class_names_of(logits: np.ndarray, labels: tuple[str, ...]) -> np.ndarray:
    """Each row's top-1 class as UTF-8 bytes, shape (N, 1): its name, or its index where there are no names."""
    top = np.argmax(logits, axis=1)
    return np.array([[(labels[i] if labels else str(int(i))).encode()] for i in top], dtype=np.bytes_)


def images_to_batch(encoded: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """A batch of encoded images (one per row) as the model's float32 NCHW input."""
    return np.stack(
        [
            bytes_to_tensor(bytes(item), pre.resize_size, pre.image_size, pre.mean, pre.std, pre.interpolation)
            for item in encoded.reshape(-1)
        ]
    )


def make_image_infer(
    runner: Runner,
    lock: threading.Lock,
    pre: Preprocessing,
    labels: tuple[str, ...],
    logits_name: str,
    refuse: Callable[[str], Exception],
) -> Callable[..., dict[str, np.ndarray]]:
    """PyTriton's infer function of the image model on ``runner`` (shared with the tensor model under ``lock``).

    An image that does not decode fails its request with ``refuse``'s error (the client sees one line).
    """
    from pytriton.decorators import batch

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        try:
            images = images_to_batch(inputs[IMAGE_INPUT], pre)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is the client's image, not the server
            raise refuse(f"{IMAGE_INPUT}: {refusal(exc)}") from None
        with lock:
            logits = runner(images)
        return {logits_name: logits, CLASS_OUTPUT: class_names_of(logits, labels)}

    return infer
