"""ResNeXt as in Xie et al. (CVPR 2017), in the grouped-convolution form of Fig. 3(c).

One readable file: the bottleneck block, the network, and the registry of named
configurations. State-dict key names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv2``,
``downsample.0``, ``fc``), so torchvision and timm checkpoints load as they are.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class Bottleneck(nn.Module):
    """Aggregated residual transformation: 1x1 reduce, 3x3 grouped (groups = cardinality), 1x1 expand."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNeXt(nn.Module):
    """A ResNet whose bottlenecks use grouped 3x3 convolutions.

    ``stem="imagenet"``: 7x7/2 conv and 3x3/2 max pool (torchvision). ``stem="cifar"``: one 3x3
    conv, no pool (the paper's section 5.2). Stage ``i`` has ``layers[i]`` blocks of ``planes[i]``
    and stride 1 for the first stage, 2 after.
    """

    def __init__(
        self,
        layers: tuple[int, ...],
        planes: tuple[int, ...],
        cardinality: int,
        base_width: int,
        num_classes: int,
        stem: str = "imagenet",
        stem_width: int = 64,
    ) -> None:
        super().__init__()
        self.inplanes = stem_width
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, stem_width, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        elif stem == "cifar":
            self.conv1 = nn.Conv2d(3, stem_width, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            raise ValueError(f"unknown stem {stem!r}; expected 'imagenet' or 'cifar'")
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        for index, (blocks, stage_planes) in enumerate(zip(layers, planes, strict=True)):
            stage = self._make_stage(stage_planes, blocks, 1 if index == 0 else 2, cardinality, base_width)
            setattr(self, f"layer{index + 1}", stage)
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes[-1] * Bottleneck.expansion, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_stage(self, planes: int, blocks: int, stride: int, groups: int, base_width: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        stage = [Bottleneck(self.inplanes, planes, stride, downsample, groups, base_width)]
        self.inplanes = planes * Bottleneck.expansion
        stage += [Bottleneck(self.inplanes, planes, groups=groups, base_width=base_width) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{index}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


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


def create_model(arch: str | ArchSpec, num_classes: int | None = None) -> ResNeXt:
    """Build a randomly initialised model of a registered configuration (eval mode)."""
    spec = get_arch(arch) if isinstance(arch, str) else arch
    model = ResNeXt(
        spec.layers,
        spec.planes,
        spec.cardinality,
        spec.base_width,
        num_classes or spec.num_classes,
        stem=spec.stem,
        stem_width=spec.stem_width,
    )
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
