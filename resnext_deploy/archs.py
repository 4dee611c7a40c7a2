"""The registry of named ResNeXt configurations and their preprocessing, without torch.

Kept apart from the network (``models.py``) so that listing architectures, and anything else that only
reads the registry, answers without importing torch (seconds on a small machine).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Union

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


# ----------------------------------------------------------------------------------------------
# The ResNeXt family of timm: built through timm's own constructor, described by a table made from it


@dataclass(frozen=True)
class KeyProfile:
    """What a state dict's keys say about its architecture, the classifier left out (any class count fits).

    ``fingerprint``: the sha256 (16 hex digits) of every key and shape; ``features``: the traits the keys
    show (SE blocks, a deep stem...); ``blocks``: the blocks per stage.
    """

    fingerprint: str
    features: tuple[str, ...]
    blocks: tuple[int, ...]


# The classifier's key prefixes in torchvision's and timm's ResNeXt family (ResNet, ByobNet, legacy SENet).
CLASSIFIER_PREFIXES = ("fc.", "head.fc.", "last_linear.")
# trait: (key fragments that show it, a short label, what it means)
FEATURES: dict[str, tuple[tuple[str, ...], str, str]] = {
    "se": ((".se.fc1.", ".attn.fc1.", ".se_module.fc1."), "SE", "SE blocks: an SE-ResNeXt"),
    "eca": ((".se.conv.", ".attn.conv."), "ECA", "ECA blocks: an ECA-ResNeXt"),
    "gc": ((".attn.conv_attn.",), "GC", "global-context blocks: a GC-ResNeXt"),
    "bat": ((".attn.ba.",), "BAT", "bilinear attention blocks: a BAT-ResNeXt"),
    "sk": ((".conv2.paths.",), "SK", "selective-kernel convolutions: an SK-ResNeXt"),
    "csp": (("conv_transition.",), "CSP", "cross-stage-partial stages: a CSP-ResNeXt"),
    "deep-stem": (("conv1.0.",), "deep stem", "a deep stem of three convolutions: a `d` or `t` variant"),
    "avg-down": (("downsample.1.weight",), "avg-pool downsample", "average-pool downsampling: a `d` variant"),
    "byob": (("stem.conv1.",), "BYOB", "timm's BYOB layout (stem., stages.): a `ts` model"),
    "legacy": (("layer0.conv1.",), "legacy SENet", "timm's legacy SENet layout (layer0., last_linear.)"),
}
_BLOCK = re.compile(r"^(layer\d+|stages\.\d+)\.(?:blocks\.)?(\d+)\.")


def key_profile(shapes: Mapping[str, Sequence[int]]) -> KeyProfile:
    """The :class:`KeyProfile` of a state dict given as ``{key: shape}`` (no tensor needed, so no torch)."""
    kept = {
        key: tuple(shape)
        for key, shape in shapes.items()
        if not key.startswith(CLASSIFIER_PREFIXES) and not key.endswith("num_batches_tracked")
    }
    text = "\n".join(f"{key}:{','.join(map(str, shape))}" for key, shape in sorted(kept.items()))
    found = []
    for trait, (fragments, _, _) in FEATURES.items():
        hits = [key for key in kept if any(f in f".{key}" for f in fragments)]
        if trait == "avg-down":  # a Conv (4-D weight) second in the downsample branch: an AvgPool comes first
            hits = [key for key in hits if len(kept[key]) == 4]
        if hits:
            found.append(trait)
    depth: dict[str, int] = {}
    for key in kept:
        if match := _BLOCK.match(key):
            depth[match.group(1)] = max(depth.get(match.group(1), 0), int(match.group(2)) + 1)
    blocks = tuple(depth[stage] for stage in sorted(depth, key=lambda s: int(re.sub(r"\D", "", s))))
    return KeyProfile(hashlib.sha256(text.encode()).hexdigest()[:16], tuple(found), blocks)


def describe_features(features: Sequence[str]) -> str:
    """``se.fc1`` keys: SE blocks... in words, each trait with the key fragment that shows it."""
    parts = []
    for trait in features:
        fragments, _, meaning = FEATURES[trait]
        parts.append(f"`{fragments[0].strip('.')}` keys: {meaning}")
    return "; ".join(parts) if parts else "plain ResNeXt keys (conv1, layer1.0.conv2, fc)"


@dataclass(frozen=True)
class LibraryArch:
    """A ResNeXt-family architecture that timm builds (``timm.create_model(name, pretrained=False)``).

    Its parameter count, default preprocessing (its default weights tag's) and key profile come from the
    generated table in :mod:`resnext_deploy.weights_table`, so listing and matching need no timm.
    """

    name: str
    library: str
    parameters: int
    num_classes: int
    classifier_inputs: int
    default_tag: str
    profile: KeyProfile
    preprocessing: Preprocessing
    description: str = ""
    class_names: tuple[str, ...] = field(default=())

    def parameter_count(self, num_classes: int | None = None) -> int:
        extra = (num_classes or self.num_classes) - self.num_classes
        return self.parameters + extra * (self.classifier_inputs + 1)


Arch = Union[ArchSpec, LibraryArch]


@dataclass(frozen=True)
class WeightsTag:
    """A published weights tag (timm's ``arch.tag``, torchvision's ``Enum.MEMBER``) and its eval transform."""

    name: str
    arch: str
    library: str
    preprocessing: Preprocessing


def _library_tables() -> tuple[dict[str, LibraryArch], dict[str, WeightsTag]]:
    from . import weights_table as table

    tags = {}
    for name, (arch, library, size, resize, interpolation, mean, std) in table.WEIGHT_TAGS.items():
        tags[name] = WeightsTag(name, arch, library, Preprocessing(size, resize, mean, std, interpolation))
    archs = {}
    for name, (params, classes, inputs, tag, fingerprint, features, blocks) in table.TIMM_ARCHS.items():
        profile = KeyProfile(fingerprint, tuple(features), tuple(blocks))
        pre = tags[tag].preprocessing
        traits = ", ".join(FEATURES[t][1] for t in features) or "plain ResNeXt"
        archs[name] = LibraryArch(name, "timm", params, classes, inputs, tag, profile, pre, f"timm: {traits}")
    return archs, tags


LIBRARY_ARCHS, WEIGHT_TAGS = _library_tables()


def get_arch(name: str) -> Arch:
    """Look up a built-in configuration or one of timm's ResNeXt family; unknown: ``KeyError`` naming the known."""
    if name in ARCHS:
        return ARCHS[name]
    if name in LIBRARY_ARCHS:
        return LIBRARY_ARCHS[name]
    raise KeyError(
        f"unknown architecture {name!r}; choose one of: {', '.join(ARCHS)}, or one of timm's ResNeXt family "
        f"({', '.join(list(LIBRARY_ARCHS)[:4])}, ...: `resnext-deploy archs` lists them all)"
    )


def candidates(profile: KeyProfile, profiles: Mapping[str, KeyProfile], shown: int = 3) -> str:
    """What to try for a checkpoint of ``profile``: the architectures whose keys fit it, best first, in words."""
    exact = [name for name, known in profiles.items() if known.fingerprint == profile.fingerprint]
    if exact:
        return f"its keys and shapes are those of {_names(exact, shown)}; try `--arch {exact[0]}`"
    alike = [name for name, known in profiles.items() if known.features == profile.features]
    alike.sort(key=lambda name: profiles[name].blocks != profile.blocks)
    said = describe_features(profile.features)
    if not alike:
        return f"{said}; no registered architecture has these keys (`resnext-deploy archs` lists them)"
    return f"{said}; try `--arch {alike[0]}`" + (f" (or {_names(alike[1:], shown - 1)})" if alike[1:] else "")


def _names(names: Sequence[str], shown: int) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
