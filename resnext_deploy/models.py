"""ResNeXt as in Xie et al. (CVPR 2017), in the grouped-convolution form of Fig. 3(c).

One readable file: the bottleneck block, the network, and the registry of named
configurations. State-dict key names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv2``,
``downsample.0``, ``fc``), so torchvision's and timm's plain ResNeXt checkpoints load as they are. The rest
of timm's ResNeXt family (SE, ``d``, ``ts``...) is built through timm's own constructor: :func:`create_model`.
"""

from __future__ import annotations

import torch
from torch import nn

from .archs import (  # the registry lives apart from torch; re-exported here, where the network is
    ARCHS,
    CIFAR_MEAN,
    CIFAR_STD,
    DEMO_ARCH,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATIONS,
    LIBRARY_ARCHS,
    PRESETS,
    Arch,
    ArchSpec,
    LibraryArch,
    Preprocessing,
    get_arch,
    resize_for_crop_pct,
)
from .errors import BackendUnavailableError

__all__ = [
    "ARCHS",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DEMO_ARCH",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "LIBRARY_ARCHS",
    "PRESETS",
    "Arch",
    "ArchSpec",
    "Bottleneck",
    "LibraryArch",
    "Preprocessing",
    "ResNeXt",
    "count_parameters",
    "create_model",
    "get_arch",
    "resize_for_crop_pct",
]


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


def create_model(arch: str | Arch, num_classes: int | None = None) -> nn.Module:
    """Build a randomly initialised model of a registered configuration (eval mode).

    A timm architecture is built by ``timm.create_model(name, pretrained=False, num_classes=...)``: its own
    code, so a timm checkpoint then loads strictly; nothing is downloaded.
    """
    spec = get_arch(arch) if isinstance(arch, str) else arch
    if isinstance(spec, LibraryArch):
        return (
            timm_module(spec.name)
            .create_model(spec.name, pretrained=False, num_classes=num_classes or spec.num_classes)
            .eval()
        )
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


TIMM_INSTALL = "install torchvision for your torch, then `pip install timm` (README, Install: torchvision and timm)"


def timm_module(arch: str = "this architecture"):
    """timm, or one line saying why it cannot be had and how to install it (exit 4, as for a missing extra)."""
    from .environment import TORCHVISION_FIX, package_version, torchvision_mismatch

    if package_version("timm") is None:
        raise BackendUnavailableError(f"{arch} is built through timm, which is not installed: {TIMM_INSTALL}")
    if problem := torchvision_mismatch():
        raise BackendUnavailableError(
            f"{arch} is built through timm, which cannot import: {problem}; {TORCHVISION_FIX}"
        )
    try:
        import timm
    except Exception as exc:  # noqa: BLE001 - a broken install of an optional library, whatever it raises
        raise BackendUnavailableError(f"timm is installed but does not import ({exc}); {TIMM_INSTALL}") from None
    return timm


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
