"""Caches and records keyed by content: calibration.json, the INT8 search's sensitivities, the engine manifest's
calibration fingerprint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, noise_images
from PIL import Image

from resnext_deploy.artifacts import CALIBRATION_NAME, EngineProfile, Manifest
from resnext_deploy.backends.tensorrt.build import engine_manifest_body
from resnext_deploy.backends.tensorrt.manifest import manifest_checksum
from resnext_deploy.backends.tensorrt.options import BuildOptions
from resnext_deploy.backends.tensorrt.probe import GpuInfo
from resnext_deploy.errors import BadInputError, ExitCode, VerificationError
from resnext_deploy.parity import Tolerance
from resnext_deploy.precision.calibration import calibrate
from resnext_deploy.precision.options import PrecisionOptions
from resnext_deploy.precision.typed import make_typed_onnx
from resnext_deploy.serde import encode
from resnext_deploy.source import SourceOptions, resolve_source

QUIET = {"log": lambda _m: None}
PRE = resolve_source(SourceOptions("resnext_tiny")).preprocessing


def _rewrite_in_place(folder: Path, seed: int) -> int:
    """Every image rewritten with other pixels, same name and size, its mtime and atime restored; how many."""
    rng = np.random.default_rng(seed)
    images = sorted(folder.rglob("*.png"))
    for path in images:
        before = path.stat()
        size = Image.open(path).size
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        assert path.stat().st_size == before.st_size  # random pixels do not compress: PNG sizes stay the same
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert path.stat().st_mtime_ns == before.st_mtime_ns
    return len(images)


def test_an_int8_engine_would_record_its_calibration_fingerprint(tiny_dir: Path, tmp_path: Path) -> None:
    """#28: the engine manifest's calibration_fingerprint came from a key the typed step never wrote (always null)."""
    calib = noise_images(tmp_path / "calib", 24)
    options = PrecisionOptions(calib_source=calib, min_check=8, tolerances={"int8": Tolerance(cosine_min=0.98)})
    make_typed_onnx(tiny_dir, "int8", options, **QUIET)
    entry = Manifest(tiny_dir).entry("model.int8.onnx")
    fingerprint = json.loads((tiny_dir / CALIBRATION_NAME).read_text())["fingerprint"]
    assert entry is not None and entry.calibration is not None and entry.calibration.fingerprint == fingerprint

    gpu = GpuInfo("none (no TensorRT here)", "0.0")
    profile = EngineProfile("input", (1, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32))
    body = engine_manifest_body(entry, "model.int8.engine", b"plan", "int8", BuildOptions(), "10.13", gpu, profile, 1.0)
    assert body.calibration_fingerprint == fingerprint
    assert body.source_onnx == "model.int8.onnx" and body.source_onnx_sha256 == entry.sha256
    written = encode(body)  # as build_engine writes it: the fingerprint in the file, under the checksum
    assert written["calibration_fingerprint"] == fingerprint and written["checksum"] == manifest_checksum(written)
    fp32 = Manifest(tiny_dir).entry("model.onnx")
    fp32_body = engine_manifest_body(
        fp32, "model.fp32.engine", b"p", "fp32", BuildOptions(), "10.13", gpu, profile, 1.0
    )
    assert fp32_body.calibration_fingerprint is None  # nothing calibrated the FP32 file


def test_a_hand_edited_calibration_record_is_refused_naming_the_manifest(tiny_dir: Path, tmp_path: Path) -> None:
    calib = noise_images(tmp_path / "calib", 24)
    options = PrecisionOptions(calib_source=calib, min_check=8, tolerances={"int8": Tolerance(cosine_min=0.98)})
    make_typed_onnx(tiny_dir, "int8", options, **QUIET)
    data = json.loads((tiny_dir / "manifest.json").read_text())
    data["artifacts"]["model.int8.onnx"]["calibration"]["fingerprint"] = 7
    (tiny_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(
        BadInputError, match=r"model.int8.onnx' has calibration.fingerprint: expected a string, got int; delete"
    ):
        Manifest(tiny_dir)


@pytest.mark.slow  # two INT8 builds with the search's sensitivities measured in each
def test_images_rewritten_in_place_reuse_nothing(capsys, tiny_dir: Path, tmp_path: Path) -> None:
    """#26.4, #29.8: same names, sizes and mtimes, other pixels: new ranges, new sensitivities, a new INT8 file."""
    calib = noise_images(tmp_path / "calib", 64)
    # a cosine bound random weights on noise cannot meet, so the search ranks (and saves) every Q/DQ site
    args = ["build-trt", "--dir", tiny_dir, "--int8", "--onnx-only", "--calib-dir", calib, "--int8-cosine", "0.999999"]
    args += ["--search-max-fraction", "0.1"]
    first = cli(capsys, *args)
    assert first.code == ExitCode.VERIFY_FAILED, first.err
    assert "INT8 search: most sensitive Q/DQ sites" in first.err
    ranges = json.loads((tiny_dir / CALIBRATION_NAME).read_text())
    saved_key = json.loads((tiny_dir / "int8_search.json").read_text())["key"]

    again = cli(capsys, *args)  # unchanged images: the caches are what they are for
    assert f"reusing {tiny_dir / CALIBRATION_NAME}" in again.err and "saved sensitivities" in again.err

    assert _rewrite_in_place(calib, seed=99) == 64
    after = cli(capsys, *args)
    lines = after.err.splitlines()
    for i, line in enumerate(lines):  # only what this run wrote itself (the search's equalized ranges) is reused
        if line.startswith("reusing "):
            assert any(f"wrote {line.split()[1]}" in earlier for earlier in lines[:i]), line
    assert "same folder and count, other names or contents" in after.err
    new_ranges = json.loads((tiny_dir / CALIBRATION_NAME).read_text())
    assert new_ranges["fingerprint"] != ranges["fingerprint"] and new_ranges["tensors"] != ranges["tensors"]
    assert json.loads((tiny_dir / "int8_search.json").read_text())["key"] != saved_key


def test_calibration_with_another_percentile_is_not_reused(tiny_dir: Path, tmp_path: Path) -> None:
    """Every method's clip is saved, so the percentile they were computed with keys the file, whatever the method."""
    from resnext_deploy.data import open_dataset

    dataset = open_dataset(noise_images(tmp_path / "calib", 8), PRE, seed=0)
    first = calibrate(tiny_dir, tiny_dir / "model.onnx", dataset, "entropy", 99.99, **QUIET)
    messages: list[str] = []
    second = calibrate(tiny_dir, tiny_dir / "model.onnx", dataset, "entropy", 99.0, log=messages.append)
    assert "stale (it was made with --percentile 99.99)" in messages[0]
    assert second.with_method("percentile").tensors != first.with_method("percentile").tensors


@pytest.mark.slow  # two INT8 searches
def test_another_exclude_ranks_again_instead_of_refusing_the_saved_ranking(tiny_dir: Path, tmp_path: Path) -> None:
    """The saved sensitivities name the sites of their run; with another --exclude they are another ranking."""
    calib = noise_images(tmp_path / "calib", 64)
    strict = {"int8": Tolerance(cosine_min=0.999999)}  # random weights on noise: the search ranks every site
    for exclude in ((), ("/layer2/layer2.0/conv1/*",)):
        options = PrecisionOptions(calib_source=calib, search_max_fraction=0.1, exclude=exclude, tolerances=strict)
        messages: list[str] = []
        with pytest.raises(VerificationError):
            make_typed_onnx(tiny_dir, "int8", options, log=messages.append)
        assert not [m for m in messages if "saved sensitivities" in m]
        key = json.loads((tiny_dir / "int8_search.json").read_text())["key"]
        assert key["exclude"] == list(exclude) and key["model"] == Manifest(tiny_dir).entry("model.onnx").sha256
