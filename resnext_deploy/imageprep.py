"""Encoded image in, normalised float32 CHW tensor out: the one preprocessing of verify, serve and Triton.

This module imports only numpy and Pillow, so ``triton-repo --preprocess`` copies it verbatim into the
preprocessing model's version folder, where Triton's Python backend runs it: the server resizes, crops and
normalises with the very code ``verify`` and calibration use, not a second implementation of it.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np

MAX_IMAGE_PIXELS = 89_478_485  # Pillow's own default bomb limit, made an error rather than a warning
MAX_ASPECT = 100  # long side / short side; the short side is resized first, so this bounds the resized image
INTERPOLATIONS = ("bilinear", "bicubic")


def decode_rgb(handle: BinaryIO):
    """Decode an image as 8-bit RGB: EXIF orientation applied, first frame of an animation, any mode."""
    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(handle) as image:
            image.seek(0)
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))


def _peak(array: np.ndarray, mode: str) -> float:
    """The full-scale value of a high-bit-depth image, from its real range: 1 (float), 255 or 65535.

    Values outside every such range (negative, non-finite, above 65535) have no known scale, so the
    image is refused rather than guessed.
    """
    if not np.isfinite(array).all():
        raise ValueError(f"mode {mode} image holds NaN or Inf values")
    low, high = float(array.min(initial=0)), float(array.max(initial=0))
    if low < 0 or high > 65535:
        raise ValueError(f"mode {mode} image values span {low:g}..{high:g}; no known scale, convert it to 8-bit")
    if mode == "F" and high <= 1.0:
        return 1.0
    return 255.0 if high <= 255 else 65535.0


def to_rgb(image):
    """Convert any Pillow mode (L, P, RGBA, CMYK, I;16, I, F, 1, LA) to 8-bit RGB."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        array = np.clip(array / _peak(array, image.mode) * 255.0, 0, 255).round().astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    if image.mode in ("P", "LA", "PA"):
        image = image.convert("RGBA")
    return image.convert("RGB")


def image_to_tensor(
    image,
    resize_size: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str,
) -> np.ndarray:
    """Resize the short side to ``resize_size``, center crop ``image_size``, scale to [0, 1], normalize.

    Sizes and offsets follow torchvision's ``Resize(int)`` and ``CenterCrop`` (the long side is
    truncated, the crop offset rounded), which timm's eval transform also uses, so that the
    published weights see the images they were evaluated on.
    """
    from PIL import Image

    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[interpolation]
    width, height = image.size
    if max(width, height) > MAX_ASPECT * min(width, height):  # a 1,000,000x1 PNG would resize to 32 x 32,000,000
        raise ValueError(f"{width}x{height} is more than {MAX_ASPECT}:1; crop it to a usable aspect ratio")
    if width <= height:
        new_size = (resize_size, int(resize_size * height / width))
    else:
        new_size = (int(resize_size * width / height), resize_size)
    if new_size != image.size:
        image = image.resize(new_size, resample)
    left = int(round((new_size[0] - image_size) / 2.0))
    top = int(round((new_size[1] - image_size) / 2.0))
    image = image.crop((left, top, left + image_size, top + image_size))
    array: np.ndarray = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def refusal(exc: Exception) -> str:
    """One line saying why an encoded image was refused, for the client that sent it."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        reason = "not an image format Pillow reads"
    else:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    return f"not a usable image ({reason}); send JPEG or PNG bytes"


def bytes_to_tensor(
    data: bytes,
    resize_size: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str,
) -> np.ndarray:
    """An encoded image (JPEG, PNG, any format Pillow reads) as the model's normalised CHW input."""
    return image_to_tensor(decode_rgb(io.BytesIO(data)), resize_size, image_size, mean, std, interpolation)
