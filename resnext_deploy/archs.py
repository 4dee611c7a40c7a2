"""The registry of named ResNeXt configurations and their preprocessing, without torch.

Kept apart from the network (``models.py``) so that listing architectures, and anything else that only
reads the registry, answers without importing torch (seconds on a small machine).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes the model's input: resize the short side, center crop, scale, normalize.

    Weights are trained with their own recipe (torchvision's V1 and V2, timm's), so this travels
    with the exported model and every later step reads it from there.
    """

    image_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    @property
    def crop_pct(self) -> float:
        return self.image_size / self.resize_size

    def with_image_size(self, image_size: int) -> Preprocessing:
        ratio = self.resize_size / self.image_size
        return replace(self, image_size=image_size, resize_size=max(image_size, round(image_size * ratio)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(
            image_size=int(data["image_size"]),
            resize_size=int(data["resize_size"]),
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
            interpolation=str(data.get("interpolation", "bilinear")),
        )


def resize_for_crop_pct(image_size: int, crop_pct: float) -> int:
    """timm's rule: the short side is resized to ``floor(image_size / crop_pct)`` before the center crop."""
    return math.floor(image_size / crop_pct)


@dataclass(frozen=True)
class ArchSpec:
    """A named configuration: the architecture as plain arguments plus its preprocessing defaults."""

    name: str
    layers: tuple[int, ...]
    planes: tuple[int, ...]
    cardinality: int
    base_width: int
    num_classes: int
    preprocessing: Preprocessing
    stem: str = "imagenet"
    stem_width: int = 64
    description: str = ""
    class_names: tuple[str, ...] = field(default=())

    def parameter_count(self, num_classes: int | None = None) -> int:
        """Parameters of ``models.create_model(self, num_classes)``, counted from the configuration alone."""
        expansion = 4  # models.Bottleneck.expansion
        stem = self.stem_width * 3 * (49 if self.stem == "imagenet" else 9) + 2 * self.stem_width
        total, inplanes = stem, self.stem_width
        for index, (blocks, planes) in enumerate(zip(self.layers, self.planes, strict=True)):
            width, out = int(planes * (self.base_width / 64.0)) * self.cardinality, planes * expansion
            if index > 0 or inplanes != out:  # the downsample branch: 1x1 conv and batch norm
                total += inplanes * out + 2 * out
            for block in range(blocks):
                block_in = inplanes if block == 0 else out
                total += block_in * width + width * (width // self.cardinality) * 9 + width * out
                total += 2 * (width + width + out)
            inplanes = out
        return total + inplanes * (num_classes or self.num_classes) + (num_classes or self.num_classes)


_IMAGENET_PRE = Preprocessing(224, 256, IMAGENET_MEAN, IMAGENET_STD)

# Evaluation transforms of published ResNeXt weights. torchvision: ResNeXt50_32X4D_Weights.IMAGENET1K_V1
# (resize 256, crop 224, bilinear) and IMAGENET1K_V2 (resize 232); timm: resnext50_32x4d.a1h_in1k and
# the other a1/a1h/a2/a3 weights (crop_pct 0.95, bicubic at 224; their test size is 288 with
# crop_pct 1.0: `--preset timm --image-size 288 --crop-pct 1.0`).
PRESETS: dict[str, Preprocessing] = {
    "torchvision-v1": _IMAGENET_PRE,
    "torchvision-v2": Preprocessing(224, 232, IMAGENET_MEAN, IMAGENET_STD),
    "timm": Preprocessing(224, resize_for_crop_pct(224, 0.95), IMAGENET_MEAN, IMAGENET_STD, "bicubic"),
}
_CIFAR_PRE = Preprocessing(32, 32, CIFAR_MEAN, CIFAR_STD)
_IMAGENET_PLANES = (64, 128, 256, 512)
_CIFAR_PLANES = (64, 128, 256)

ARCHS: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec(
            "resnext50_32x4d",
            (3, 4, 6, 3),
            _IMAGENET_PLANES,
            32,
            4,
            1000,
            _IMAGENET_PRE,
            description="ImageNet ResNeXt-50 (32x4d), torchvision layout",
        ),
        ArchSpec(
            "resnext101_32x4d",
            (3, 4, 23, 3),
            _IMAGENET_PLANES,
            32,
            4,
            1000,
            _IMAGENET_PRE,
            description="ImageNet ResNeXt-101 (32x4d)",
        ),
        ArchSpec(
            "resnext101_32x8d",
            (3, 4, 23, 3),
            _IMAGENET_PLANES,
            32,
            8,
            1000,
            _IMAGENET_PRE,
            description="ImageNet ResNeXt-101 (32x8d), torchvision layout",
        ),
        ArchSpec(
            "resnext101_64x4d",
            (3, 4, 23, 3),
            _IMAGENET_PLANES,
            64,
            4,
            1000,
            _IMAGENET_PRE,
            description="ImageNet ResNeXt-101 (64x4d), torchvision layout",
        ),
        ArchSpec(
            "resnext29_8x64d",
            (3, 3, 3),
            _CIFAR_PLANES,
            8,
            64,
            10,
            _CIFAR_PRE,
            stem="cifar",
            description="CIFAR ResNeXt-29 (8x64d), paper section 5.2",
        ),
        ArchSpec(
            "resnext29_16x64d",
            (3, 3, 3),
            _CIFAR_PLANES,
            16,
            64,
            10,
            _CIFAR_PRE,
            stem="cifar",
            description="CIFAR ResNeXt-29 (16x64d), paper section 5.2",
        ),
        ArchSpec(
            "resnext11_digits",
            (1, 1, 1),
            (16, 32, 64),
            8,
            16,
            10,
            Preprocessing(16, 16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
            stem="cifar",
            stem_width=16,
            description="Demo: CIFAR-style ResNeXt-11 (8x4d) trained on the bundled 8x8 digits",
            class_names=tuple(str(d) for d in range(10)),
        ),
        ArchSpec(
            "resnext_tiny",
            (1, 1, 1),
            (8, 16, 32),
            4,
            32,
            10,
            Preprocessing(32, 32, CIFAR_MEAN, CIFAR_STD),
            stem="cifar",
            stem_width=16,
            description="Tiny configuration for tests",
        ),
    )
}

DEMO_ARCH = "resnext11_digits"


def get_arch(name: str) -> ArchSpec:
    """Look up a registered configuration; an unknown name raises ``KeyError`` listing the known ones."""
    try:
        return ARCHS[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; choose one of: {', '.join(ARCHS)}") from None
