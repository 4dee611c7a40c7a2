"""Published weights tags as presets: timm's ``arch.tag`` and torchvision's ``Enum.MEMBER``, and their transforms.

Each tag's evaluation transform is read from the installed library when it imports (timm's pretrained_cfg
through ``resolve_data_config``, torchvision's ``weights.transforms()``), else from the table generated from
those libraries (:mod:`resnext_deploy.weights_table`); both go through the same conversion below.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from .archs import WEIGHT_TAGS, Arch, Preprocessing, WeightsTag


def from_timm_config(config: Mapping[str, Any]) -> Preprocessing:
    """A timm data config (``resolve_data_config``) as a :class:`Preprocessing`: resize floor(size / crop_pct)."""
    if config.get("crop_mode", "center") != "center":
        raise ValueError(f"crop_mode {config['crop_mode']!r} is not a center crop")
    size = int(config["input_size"][-1])
    mean, std = (tuple(round(float(v), 6) for v in config[key]) for key in ("mean", "std"))
    return Preprocessing(size, math.floor(size / config["crop_pct"]), mean, std, str(config["interpolation"]))  # type: ignore[arg-type]


def from_torchvision_transform(transform: Any) -> Preprocessing:
    """torchvision's ``ImageClassification`` transform (``weights.transforms()``) as a :class:`Preprocessing`."""
    mean, std = (tuple(round(float(v), 6) for v in values) for values in (transform.mean, transform.std))
    interpolation = getattr(transform.interpolation, "value", transform.interpolation)
    return Preprocessing(int(transform.crop_size[0]), int(transform.resize_size[0]), mean, std, str(interpolation))  # type: ignore[arg-type]


def _from_timm(name: str) -> Preprocessing:
    import timm
    from timm.data import resolve_data_config

    return from_timm_config(resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(name).to_dict()))


def _from_torchvision(name: str) -> Preprocessing:
    import torchvision.models

    enum, member = name.split(".", 1)
    return from_torchvision_transform(getattr(getattr(torchvision.models, enum), member).transforms())


_READERS: dict[str, Callable[[str], Preprocessing]] = {"timm": _from_timm, "torchvision": _from_torchvision}


def library_usable(library: str) -> bool:
    """Whether ``library`` is installed and can import beside this torch (without importing it to find out)."""
    from .environment import package_version, torchvision_mismatch

    return (
        package_version(library) is not None
        and package_version("torchvision") is not None
        and not (torchvision_mismatch())
    )


def tag_preprocessing(tag: WeightsTag, log: Callable[[str], None]) -> tuple[Preprocessing, str]:
    """The tag's transform and where it was read: the installed library's own, else the package's table."""
    if library_usable(tag.library):
        try:
            return _READERS[tag.library](tag.name), f"{tag.library}'s own configuration"
        except Exception as exc:  # noqa: BLE001 - a library's lookup failing in its own way: the table answers
            log(f"warning: {tag.library} could not describe {tag.name} ({exc}); using the table in resnext-deploy")
    return tag.preprocessing, f"resnext-deploy's table; {tag.library} does not import here"


def known_tags(arch: Arch) -> list[WeightsTag]:
    """The published weights of ``arch``, timm's and torchvision's."""
    return [tag for tag in WEIGHT_TAGS.values() if tag.arch == arch.name and not tag.name.endswith(".untrained")]


def mismatch_warning(arch: Arch, pre: Preprocessing, preset: str | None) -> str | None:
    """A warning when the chosen resize or crop is none of ``arch``'s published weights' (None: one fits, or none
    is known)."""
    tags = known_tags(arch)
    if preset in WEIGHT_TAGS and WEIGHT_TAGS[preset].arch != arch.name:
        return f"--preset {preset} is a weights tag of {WEIGHT_TAGS[preset].arch}, not of {arch.name}"
    if not tags or any(
        (t.preprocessing.resize_size, t.preprocessing.image_size) == (pre.resize_size, pre.image_size) for t in tags
    ):
        return None
    groups: dict[str, list[str]] = {}
    for t in tags:
        groups.setdefault(_sizes(t.preprocessing), []).append(t.name)
    shown = "; ".join(
        f"{sizes}: {', '.join(names[:3])}" + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        for sizes, names in groups.items()
    )
    return (
        f"resize {pre.resize_size}, crop {pre.image_size} is none of {arch.name}'s published weights' ({shown}); "
        "calibration and accuracy are right only with the transform the weights were trained for: "
        "pass --preset with their tag"
    )


def _sizes(pre: Preprocessing) -> str:
    return f"resize {pre.resize_size}, crop {pre.image_size}, {pre.interpolation}"
