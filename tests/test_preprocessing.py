"""Preprocessing per weights: the presets give what torchvision's and timm's evaluation transforms give.

torchvision's transforms and weight enums are pure Python; its compiled ops are not, and PyPI's wheel
beside a CPU torch cannot load them (``import torchvision`` fails while registering them), so ``.venv``
holds no torchvision. The fixture below imports torchvision's own ``transforms`` and ``models.resnet``
modules without the package's ``__init__`` (the op registration): from an installed torchvision, or else
from torchvision's wheel for this torch, fetched once with pip (skipped when no index answers), so the
comparison runs torchvision's real code.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from PIL import Image

from resnext_deploy.artifacts import Manifest
from resnext_deploy.cli import main
from resnext_deploy.data import preprocess
from resnext_deploy.environment import package_version
from resnext_deploy.errors import BadInputError
from resnext_deploy.models import IMAGENET_MEAN, IMAGENET_STD, PRESETS
from resnext_deploy.source import ModelSource, SourceOptions, recorded_source, resolve_source

# Odd and even sizes, both orientations, one already at the resize size: every rounding path.
SIZES = [(500, 375), (375, 500), (301, 233), (232, 640), (257, 257)]


def _torchvision_wheel_folder(cache: Path) -> Path:
    """torchvision's wheel for the installed torch, unpacked (pip download, once per cache); skips without an index."""
    import torch

    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    release = f"0.{minor + 15}.*" if major == 2 else None  # torchvision 0.28 goes with torch 2.13, and so on
    if release is None:
        pytest.skip(f"no known torchvision release for torch {torch.__version__}")
    folder = cache / f"torchvision-{release.rstrip('.*')}"
    if not (folder / "torchvision").is_dir():
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(cache)]
        done = subprocess.run([*command, f"torchvision=={release}"], capture_output=True, text=True, timeout=300)
        wheels = sorted(cache.glob(f"torchvision-{release.rstrip('.*')}*.whl"))
        if done.returncode != 0 or not wheels:
            pytest.skip(f"torchvision is not installed and pip could not fetch its wheel: {done.stderr.strip()[-200:]}")
        with zipfile.ZipFile(wheels[-1]) as wheel:
            sources = [n for n in wheel.namelist() if n.startswith("torchvision/") and n.endswith(".py")]
            wheel.extractall(folder, sources)
    return folder / "torchvision"


@pytest.fixture(scope="module")
def torchvision(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Any:
    if package_version("torchvision") is not None:
        spec = importlib.util.find_spec("torchvision")
        locations = list(spec.submodule_search_locations or []) if spec else []
    else:
        cache = getattr(pytestconfig, "cache", None)  # none with -p no:cacheprovider: a temporary folder then
        folder = cache.mkdir("torchvision-wheel") if cache is not None else tmp_path_factory.mktemp("torchvision")
        locations = [str(_torchvision_wheel_folder(folder))]
        spec = importlib.util.spec_from_file_location(
            "torchvision", Path(locations[0]) / "__init__.py", submodule_search_locations=locations
        )
    saved = sys.modules.get("torchvision")
    package = types.ModuleType("torchvision")
    package.__path__ = locations
    package.__spec__ = spec
    sys.modules["torchvision"] = package
    try:
        yield types.SimpleNamespace(
            transforms=importlib.import_module("torchvision.transforms"),
            resnet=importlib.import_module("torchvision.models.resnet"),
        )
    finally:
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        if saved is not None:
            sys.modules["torchvision"] = saved


def _images() -> list[Image.Image]:
    """Seeded smooth-plus-noise RGB images (smooth so that interpolation matters, noise so that offsets do)."""
    rng = np.random.default_rng(0)
    images = []
    for width, height in SIZES:
        y, x = np.mgrid[0:height, 0:width]
        smooth = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
        pixels = np.clip(smooth + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels, "RGB"))
    return images


def _max_pixel_diff(ours: np.ndarray, theirs: np.ndarray, std: tuple[float, float, float]) -> float:
    """Largest difference in [0, 1] pixel units (normalized values times std)."""
    scale = np.asarray(std, np.float32)[:, None, None]
    return float(np.abs((ours - theirs) * scale).max())


@pytest.mark.parametrize(
    ("preset", "weights"), [("torchvision-v1", "IMAGENET1K_V1"), ("torchvision-v2", "IMAGENET1K_V2")]
)
def test_torchvision_presets_match_the_weights_own_transforms(torchvision: Any, preset: str, weights: str) -> None:
    transform = getattr(torchvision.resnet.ResNeXt50_32X4D_Weights, weights).transforms()
    pre = PRESETS[preset]
    assert (pre.image_size, pre.resize_size) == (transform.crop_size[0], transform.resize_size[0])
    for image in _images():
        theirs = transform(image).numpy()
        ours = preprocess(image, pre)
        assert ours.shape == theirs.shape == (3, 224, 224)
        assert _max_pixel_diff(ours, theirs, pre.std) <= 1 / 255


def test_timm_preset_matches_timms_eval_transform(torchvision: Any) -> None:
    # timm.data.transforms_imagenet_eval for resnext50_32x4d.a1h_in1k (crop_pct 0.95, bicubic, 224):
    # Resize(floor(224 / 0.95)) on the short side, CenterCrop(224), ToTensor, Normalize.
    T = torchvision.transforms
    transform = T.Compose(
        [
            T.Resize(int(224 / 0.95), interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    pre = PRESETS["timm"]
    assert (pre.resize_size, pre.interpolation) == (235, "bicubic")
    for image in _images():
        assert _max_pixel_diff(preprocess(image, pre), transform(image).numpy(), pre.std) <= 1 / 255


def test_export_records_the_preprocessing_and_later_steps_read_it(tmp_path: Path) -> None:
    args = ["--arch", "resnext_tiny", "--image-size", "32", "--crop-pct", "0.8", "--interpolation", "bicubic"]
    args += ["--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]
    assert main(["export", "--dir", str(tmp_path), *args]) == 0
    model = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    metadata = {p.key: p.value for p in model.metadata_props}
    recorded = json.loads(metadata["resnext_deploy.preprocessing"])
    assert recorded["resize_size"] == 40 and recorded["crop_size"] == 32 and recorded["interpolation"] == "bicubic"
    assert recorded["mean"] == [0.5] * 3 and recorded["std"] == [0.25] * 3
    source = recorded_source(Manifest(tmp_path))
    pre = source.preprocessing  # what verify, bench and calibration open their data with
    assert (pre.image_size, pre.resize_size, pre.interpolation) == (32, 40, "bicubic")
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.25, 0.25, 0.25)


def test_a_manifest_from_before_presets_still_reads(tmp_path: Path) -> None:
    source = resolve_source(SourceOptions("resnext_tiny"))
    old = {k: v for k, v in source.to_dict().items() if k != "preprocess"}
    assert ModelSource.from_dict(old).preprocessing == source.preprocessing


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"resize_size": 256, "crop_pct": 0.9}, "not both"),
        ({"crop_pct": 1.5}, "--crop-pct must be in"),
        ({"resize_size": 100}, "--resize-size must be from the image size 224"),
        ({"mean": "0.5,0.5"}, "--mean takes three"),
        ({"std": "0.2,0,0.2"}, "--std must be positive"),
    ],
)
def test_bad_preprocessing_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        resolve_source(SourceOptions("resnext50_32x4d", **options))


# ----------------------------------------------------------------------------------------------
# Presets per weights tag (the libraries' own transforms: tests/test_family.py, where they import)


@pytest.mark.parametrize(
    ("preset", "arch", "sizes"),
    [
        ("ResNeXt101_64X4D_Weights.IMAGENET1K_V1", "resnext101_64x4d", (224, 232, "bilinear")),  # not 256
        ("ResNeXt50_32X4D_Weights.IMAGENET1K_V1", "resnext50_32x4d", (224, 256, "bilinear")),
        ("resnext50_32x4d.tv_in1k", "resnext50_32x4d", (224, 256, "bilinear")),  # crop 0.875, unlike --preset timm
        ("seresnext50_32x4d.racm_in1k", "seresnext50_32x4d", (224, 256, "bicubic")),
        ("resnext26ts.ra2_in1k", "resnext26ts", (256, 284, "bicubic")),
    ],
)
def test_a_weights_tag_is_a_preset_and_names_its_architecture(
    preset: str, arch: str, sizes: tuple, monkeypatch
) -> None:
    from resnext_deploy import weights
    from resnext_deploy.archs import get_arch
    from resnext_deploy.source import resolve_preprocessing

    monkeypatch.setattr(weights, "library_usable", lambda _library: False)  # the table answers here
    said: list[str] = []
    pre = resolve_preprocessing(get_arch(arch), preset=preset, log=said.append)
    assert (pre.image_size, pre.resize_size, pre.interpolation) == sizes
    assert pre.mean == IMAGENET_MEAN and pre.std == IMAGENET_STD
    assert said == [
        f"--preset {preset}: resize {sizes[1]}, crop {sizes[0]}, {sizes[2]} (from resnext-deploy's table; "
        f"{weights.WEIGHT_TAGS[preset].library} does not import here)"
    ]
    if get_arch(arch).__class__.__name__ == "ArchSpec":  # a tag alone picks the architecture
        assert resolve_source(SourceOptions(preset=preset, image_size=None)).arch == arch


def test_a_resize_or_crop_that_fits_no_published_weights_is_warned_about() -> None:
    from resnext_deploy.archs import get_arch
    from resnext_deploy.source import resolve_preprocessing

    said: list[str] = []
    resolve_preprocessing(get_arch("resnext101_64x4d"), preset="torchvision-v2", log=said.append)  # 232: IMAGENET1K_V1
    resolve_preprocessing(get_arch("resnext50_32x4d"), preset="timm", log=said.append)  # 235: a1h_in1k
    assert said == []
    resolve_preprocessing(get_arch("resnext50_32x4d"), resize_size=240, log=said.append)
    [warning] = said
    assert warning.startswith("warning: resize 240, crop 224 is none of resnext50_32x4d's published weights'")
    assert (
        "resize 256, crop 224, bilinear: resnext50_32x4d.fb_ssl_yfcc100m_ft_in1k" in warning and "--preset" in warning
    )
    assert "resize 232, crop 224, bilinear: ResNeXt50_32X4D_Weights.IMAGENET1K_V2" in warning
    said.clear()
    resolve_preprocessing(get_arch("resnext50_32x4d"), preset="seresnext50_32x4d.racm_in1k", log=said.append)
    assert (
        said[-1]
        == "warning: --preset seresnext50_32x4d.racm_in1k is a weights tag of seresnext50_32x4d, not of resnext50_32x4d"
    )
    said.clear()
    resolve_preprocessing(get_arch("resnext_tiny"), log=said.append)  # no published weights: nothing to compare
    assert said == []


def test_an_unknown_preset_names_the_kinds_of_preset(capsys, tmp_path: Path) -> None:
    assert main(["export", "--arch", "resnext_tiny", "--preset", "IMAGENET1K_V1", "--dir", str(tmp_path / "d")]) == 2
    [err] = capsys.readouterr().err.strip().splitlines()
    assert (
        "torchvision-v1" in err and "resnext50_32x4d.tv_in1k" in err and "ResNeXt50_32X4D_Weights.IMAGENET1K_V2" in err
    )
