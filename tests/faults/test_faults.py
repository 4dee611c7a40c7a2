"""Faults and hostile or broken inputs, driven through the real CLI (and real subprocesses for Ctrl-C and locks).

Every case asserts the documented exit code, exactly one ``error:`` line on stderr (the last line; progress
lines may come before it), no traceback, and nothing half-written: no ``*.partial`` file, no new artifact,
and the manifest and every finished artifact unchanged. Cases already covered elsewhere are not repeated:
tests/test_cli.py (truncated .pth, another architecture, ``--dir`` a file or under a file for export),
tests/test_checkpoint.py, tests/test_data.py, tests/evaluate/test_verify.py and tests/test_properties.py.

Models: the tiny ResNeXt (32 px, random weights) where only structure matters and the bundled 16 px demo
model where INT8 must pass its parity check.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import (
    INT8_ONLY,
    QUICK_BENCH,
    QUICK_PIPELINE,
    TINY,
    cli,
    fails,
    quiet_export,
    rerecord,
    snapshot,
    stand_in_engine_manifest,
    unchanged,
)
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from safetensors.torch import load_file, save_file

from resnext_deploy.artifacts import Manifest, engine_file, locked, sha256_file
from resnext_deploy.backends.tensorrt import manifest as engine_manifest
from resnext_deploy.backends.tensorrt import probe
from resnext_deploy.backends.tensorrt.manifest import engine_manifest_path
from resnext_deploy.backends.tensorrt.probe import GpuInfo
from resnext_deploy.data import load_rgb, open_dataset
from resnext_deploy.demo import DEMO_CALIB, DEMO_VAL, DEMO_WEIGHTS
from resnext_deploy.errors import BadInputError, ExitCode
from resnext_deploy.models import create_model
from resnext_deploy.serde import encode
from resnext_deploy.source import SourceOptions, resolve_source

REPO = Path(__file__).resolve().parents[2]
DEMO = ["--arch", "resnext11_digits"]
SLOW = pytest.mark.slow  # a bench case: its worker processes and noise probe take seconds


# ----------------------------------------------------------------------------------------------
# Checkpoints (truncated .pth and another architecture: tests/test_cli.py)


class _RunsCode:
    """Unpickling this object would create ``marker`` (what a malicious checkpoint would do instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _state() -> dict[str, torch.Tensor]:
    return create_model("resnext_tiny").state_dict()


def _write_checkpoint(kind: str, path: Path) -> Path:
    if kind == "zero-bytes":
        path.write_bytes(b"")
    elif kind.startswith("random-bytes"):
        path.write_bytes(np.random.default_rng(int(kind[-1])).bytes(4096))
    elif kind == "truncated-safetensors":
        save_file(_state(), path)
        path.write_bytes(path.read_bytes()[:3000])
    elif kind == "code-pickle-zip":
        torch.save({"fc.weight": _RunsCode(path.parent / "MARKER")}, path)
    elif kind == "code-pickle-raw":
        path.write_bytes(pickle.dumps({"fc.weight": _RunsCode(path.parent / "MARKER")}, protocol=2))
    elif kind in ("nan-weight", "inf-buffer", "overflowing-weights"):
        state = _state()
        if kind == "nan-weight":
            state["layer2.0.conv2.weight"][0, 0, 0, 0] = float("nan")
        elif kind == "inf-buffer":
            state["bn1.running_var"][3] = float("inf")
        else:  # finite weights whose activations overflow float32 on the way through
            for key in ("conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight", "layer1.0.conv3.weight"):
                state[key] *= 1e12
        torch.save(state, path)
    return path


CHECKPOINT_CASES = {  # kind -> (file suffix, fragment of the error line)
    "zero-bytes": (".pth", "is empty (0 bytes)"),
    "random-bytes-0": (".pth", "is truncated or not"),
    "random-bytes-1": (".bin", "is truncated or not"),
    "random-bytes-2": (".ckpt", "is truncated or not"),
    "random-bytes-3": (".safetensors", "not a valid safetensors file"),
    "truncated-safetensors": (".safetensors", "not a valid safetensors file"),
    "code-pickle-zip": (".pth", "pickled objects other than tensors (possibly code)"),
    "code-pickle-raw": (".pt", "pickled objects other than tensors (possibly code)"),
    "nan-weight": (".pth", "NaN or Inf values in 'layer2.0.conv2.weight'"),
    "inf-buffer": (".pth", "NaN or Inf values in 'bn1.running_var'"),
    "overflowing-weights": (".pth", "the PyTorch model itself computes NaN or Inf"),
}


@pytest.mark.parametrize("kind", CHECKPOINT_CASES)
def test_bad_checkpoints_are_refused_by_export(capsys, tmp_path: Path, kind: str) -> None:
    suffix, message = CHECKPOINT_CASES[kind]
    checkpoint = _write_checkpoint(kind, tmp_path / f"model{suffix}")
    out = tmp_path / "out"
    outcome = cli(capsys, "export", *TINY, "--checkpoint", checkpoint, "--dir", out)
    fails(outcome, ExitCode.BAD_INPUT, message, str(checkpoint))
    assert not (tmp_path / "MARKER").exists(), "unpickling ran the checkpoint's code"
    unchanged(out, {})


def test_another_class_count_is_refused_by_export(capsys, tmp_path: Path) -> None:
    checkpoint = tmp_path / "ten.safetensors"
    save_file(_state(), checkpoint)
    outcome = cli(capsys, "export", *TINY, "--checkpoint", checkpoint, "--num-classes", "5", "--dir", tmp_path / "o")
    fails(outcome, ExitCode.BAD_INPUT, "does not fit --arch resnext_tiny", "fc.weight (10, 128) vs (5, 128)")
    unchanged(tmp_path / "o", {})


def test_pipeline_refuses_a_code_pickle_before_writing_anything(capsys, tmp_path: Path) -> None:
    checkpoint = _write_checkpoint("code-pickle-zip", tmp_path / "evil.pth")
    outcome = cli(capsys, "pipeline", *TINY, "--checkpoint", checkpoint, "--dir", tmp_path / "o", *QUICK_PIPELINE)
    fails(outcome, ExitCode.BAD_INPUT, "possibly code")
    assert not (tmp_path / "MARKER").exists()
    unchanged(tmp_path / "o", {})


# ----------------------------------------------------------------------------------------------
# ONNX files


def _corrupt(directory: Path) -> None:
    path = directory / "model.onnx"
    path.write_bytes(path.read_bytes()[:5000])


def _external(location: str):
    """Move the largest initializer into external data at ``location`` (relative to the model's directory)."""

    def edit(directory: Path) -> None:
        secret = directory.parent / "secret.bin"
        secret.write_bytes(np.ones(100_000, np.float32).tobytes())
        if location == "symlink":
            (directory / "weights.bin").symlink_to(secret)
        path = directory / "model.onnx"
        model = onnx.load(str(path))
        tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
        size = len(tensor.raw_data)
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        where = {"outside": "../secret.bin", "absolute": str(secret), "symlink": "weights.bin"}[location]
        for key, value in (("location", where), ("offset", "0"), ("length", str(size))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        onnx.save(model, str(path))

    return edit


def _opset_40(directory: Path) -> None:
    path = directory / "model.onnx"
    model = onnx.load(str(path))
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = 40
    onnx.save(model, str(path))


def _two_inputs(directory: Path) -> None:
    path = directory / "model.onnx"
    model = onnx.load(str(path))
    model.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1]))
    onnx.save(model, str(path))


def _swapped(**changes):
    """model.onnx replaced by the tiny model exported with other settings (another input size or class count)."""

    def edit(directory: Path) -> None:
        other = quiet_export(resolve_source(SourceOptions("resnext_tiny", **changes)), directory.parent / "other")
        shutil.copy(other / "model.onnx", directory / "model.onnx")

    return edit


ONNX_CASES = {
    "corrupt": _corrupt,
    "external-outside": _external("outside"),
    "external-absolute": _external("absolute"),
    "external-symlink": _external("symlink"),
    "opset-40": _opset_40,
    "two-inputs": _two_inputs,
    "16px-input": _swapped(image_size=16),
    "5-classes": _swapped(num_classes=5),
}
COMMANDS = {
    "build-trt": ["build-trt"],
    "build-trt-fp16": ["build-trt", "--fp16", "--onnx-only"],
    "verify": ["verify", "--count", "4"],
    "bench": ["bench", "--backends", "onnxruntime", *QUICK_BENCH],
}
OUTSIDE = "outside its directory"
# (case, command) -> (exit code, fragment of the error line); verify names a broken candidate and exits 1
ONNX_EXPECTED = {
    ("corrupt", "build-trt"): (ExitCode.BAD_INPUT, "is not a readable ONNX model"),
    ("corrupt", "build-trt-fp16"): (ExitCode.BAD_INPUT, "is not a readable ONNX model"),
    ("corrupt", "verify"): (ExitCode.VERIFY_FAILED, "ONNX Runtime cannot load"),
    ("corrupt", "bench"): (ExitCode.BAD_INPUT, "cannot be loaded: ONNX Runtime cannot load"),
    **{
        (case, command): (ExitCode.BAD_INPUT, OUTSIDE)
        for case in ("external-outside", "external-absolute", "external-symlink")
        for command in ("build-trt", "build-trt-fp16")
    },
    ("external-outside", "verify"): (ExitCode.VERIFY_FAILED, "escapes model directory"),
    ("external-absolute", "verify"): (ExitCode.VERIFY_FAILED, "Absolute path not allowed"),
    ("external-symlink", "verify"): (ExitCode.VERIFY_FAILED, "escapes model directory"),
    ("external-outside", "bench"): (ExitCode.BAD_INPUT, "cannot be loaded"),
    ("opset-40", "build-trt"): (ExitCode.BAD_INPUT, "uses ONNX opset 40"),
    ("opset-40", "build-trt-fp16"): (ExitCode.BAD_INPUT, "uses ONNX opset 40"),
    ("opset-40", "verify"): (ExitCode.VERIFY_FAILED, "ONNX Runtime cannot load"),
    ("opset-40", "bench"): (ExitCode.BAD_INPUT, "cannot be loaded"),
    ("two-inputs", "build-trt"): (ExitCode.BAD_INPUT, "must have one image input"),
    ("two-inputs", "build-trt-fp16"): (ExitCode.BAD_INPUT, "must have one NCHW image input"),
    ("two-inputs", "verify"): (ExitCode.VERIFY_FAILED, "must have one NCHW image input"),
    ("two-inputs", "bench"): (ExitCode.BAD_INPUT, "must have one NCHW image input"),
    ("16px-input", "build-trt"): (ExitCode.BAD_INPUT, "takes 3x16x16 images, but its model was exported for 3x32x32"),
    ("16px-input", "build-trt-fp16"): (ExitCode.BAD_INPUT, "the file does not fit its manifest entry"),
    ("16px-input", "verify"): (ExitCode.VERIFY_FAILED, "takes batch x 3 x 16 x 16 batches; got 4 x 3 x 32 x 32"),
    ("16px-input", "bench"): (ExitCode.BAD_INPUT, "cannot run a 1x3x32x32 batch"),
    ("5-classes", "verify"): (ExitCode.VERIFY_FAILED, "outputs of shape (4, 5) where the PyTorch model gives (4, 10)"),
}


@pytest.mark.parametrize(
    ("case", "command"),
    [pytest.param(*key, marks=SLOW) if key[1] == "bench" else key for key in sorted(ONNX_EXPECTED)],
)
def test_broken_onnx_recorded_in_the_manifest(capsys, tiny_dir: Path, case: str, command: str) -> None:
    """model.onnx broken and then re-recorded, so the sha256 check passes and the content itself must be refused."""
    ONNX_CASES[case](tiny_dir)
    rerecord(tiny_dir)
    before = snapshot(tiny_dir)
    name, *args = COMMANDS[command]
    outcome = cli(capsys, name, "--dir", tiny_dir, *args)
    code, fragment = ONNX_EXPECTED[(case, command)]
    line = fails(outcome, code, fragment)
    if code == ExitCode.VERIFY_FAILED:
        assert "onnxruntime-cpu:fp32 (model.onnx)" in line
    assert "trtexec" not in outcome.out, "a refused model must not get a build command"
    unchanged(tiny_dir, before)


@pytest.mark.parametrize("command", ["build-trt", "build-trt-fp16", "verify", "bench"])
def test_onnx_changed_after_it_was_recorded_is_refused_by_sha256(capsys, tiny_dir: Path, command: str) -> None:
    _corrupt(tiny_dir)
    before = snapshot(tiny_dir)
    name, *args = COMMANDS[command]
    fails(cli(capsys, name, "--dir", tiny_dir, *args), ExitCode.BAD_INPUT, "was changed after it was made")
    unchanged(tiny_dir, before)


# ----------------------------------------------------------------------------------------------
# Engines (their checks run before TensorRT is imported, so they run here too)

ENGINE_CASES = {
    "missing-manifest": "engine.json is missing",
    "edited-manifest": "was edited after the build",
    "other-tensorrt": "was built with TensorRT 9.2.0.5, this is TensorRT 10.13.3.9",
    "other-gpu": "was built for compute capability 7.5 (Tesla T4), this GPU is 8.0",
}
INSTALLED, CAPABILITY = "10.13.3.9", "8.0"


def plant_engine(directory: Path, case: str) -> Path:
    """model.fp32.engine and its manifest as build_engine writes them on some machine (opaque plan bytes)."""
    path = directory / engine_file("fp32")
    path.write_bytes(b"an opaque TensorRT plan from elsewhere")
    body = encode(
        stand_in_engine_manifest(
            path,
            tensorrt_version="9.2.0.5" if case == "other-tensorrt" else INSTALLED,
            gpu_info=GpuInfo("Tesla T4", "7.5") if case == "other-gpu" else GpuInfo("NVIDIA A100", CAPABILITY),
        )
    )
    if case == "edited-manifest":
        body["compute_capability"] = "9.0"
    meta = engine_manifest_path(path)
    meta.write_text(json.dumps(body))
    if case == "missing-manifest":
        meta.unlink()
    Manifest(directory).record(path.name, "fp32", parent_sha256=sha256_file(directory / "model.onnx"))
    return path


@pytest.mark.parametrize("case", sorted(ENGINE_CASES))
def test_engine_refusals_need_no_tensorrt(tiny_dir: Path, case: str) -> None:
    path = plant_engine(tiny_dir, case)
    with pytest.raises(BadInputError, match=re.escape(ENGINE_CASES[case])) as refused:
        engine_manifest.check_compatible(engine_manifest.read_engine_manifest(path), path, INSTALLED, CAPABILITY)
    assert f"rebuild the engine with `resnext-deploy build-trt --dir {tiny_dir}`" in str(refused.value) or (
        f"rebuild it on this machine with `resnext-deploy build-trt --dir {tiny_dir}` (add" in str(refused.value)
    )


@pytest.mark.slow  # verify and bench per case
@pytest.mark.parametrize("tensorrt_present", [False, True], ids=["this-machine", "tensorrt-present"])
@pytest.mark.parametrize("case", sorted(ENGINE_CASES))
def test_verify_and_bench_record_a_refused_engine_as_skipped(
    capsys, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch, case: str, tensorrt_present: bool
) -> None:
    """verify and bench keep going and say why the engine was not used.

    ``tensorrt-present`` makes TensorRT look installed (status, version, GPU) so that discovery opens the
    engine's runner, whose refusals all come before anything of TensorRT is touched; nothing is measured from
    it. Without that, on a machine without TensorRT, the reason is TensorRT's absence.
    """
    real_status = str(probe.tensorrt_status())
    if tensorrt_present:
        monkeypatch.setattr(probe, "tensorrt_status", lambda: None)
        monkeypatch.setattr(probe, "tensorrt_version", lambda: INSTALLED)
        monkeypatch.setattr(probe, "gpu_info", lambda: GpuInfo("NVIDIA A100", CAPABILITY))
    expected = ENGINE_CASES[case] if tensorrt_present else probe.tensorrt_status() or ENGINE_CASES[case]
    plant_engine(tiny_dir, case)
    before = snapshot(tiny_dir)
    # one runner that works beside the engine, so the run goes on (a TensorRT named where it is absent is an error)
    only = ("--backends", "onnxruntime,tensorrt") if tensorrt_present else ()
    assert cli(capsys, "verify", "--dir", tiny_dir, "--count", "4", *only).code == ExitCode.OK
    assert cli(capsys, "bench", "--dir", tiny_dir, *QUICK_BENCH, *only).code == ExitCode.OK
    for report in ("verify.json", "bench.json"):
        [skipped] = [s for s in json.loads((tiny_dir / report).read_text())["skipped"] if s["backend"] == "tensorrt"]
        # bench opens each runner in a worker process of its own, where this test's stand-in for TensorRT does
        # not reach: there the engine is skipped for the real reason of this machine (no TensorRT).
        reasons = (expected,) if report == "verify.json" else (expected, real_status)
        assert skipped["artifact"] == "model.fp32.engine" and any(r in skipped["reason"] for r in reasons)
    unchanged(tiny_dir, before)


# ----------------------------------------------------------------------------------------------
# Images


def png_header_claiming(width: int, height: int) -> bytes:
    """A few dozen bytes of PNG whose header claims ``width`` x ``height`` (nothing near that is ever allocated)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )


def _truncated_jpeg(path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _symlink_loop(path: Path) -> None:
    other = path.with_name("loop-b.png")
    path.symlink_to(other)
    other.symlink_to(path)


BAD_IMAGES = {
    "zero.jpg": (lambda p: p.write_bytes(b""), "cannot identify image file"),
    "truncated.jpg": (_truncated_jpeg, "truncated"),
    "text.png": (lambda p: p.write_text("not an image at all"), "cannot identify image file"),
    "bomb.png": (lambda p: p.write_bytes(png_header_claiming(100_000, 100_000)), "decompression bomb"),
    "bomb-warning.png": (lambda p: p.write_bytes(png_header_claiming(10_000, 10_000)), "decompression bomb"),
    "loop-a.png": (_symlink_loop, "Too many levels of symbolic links"),
}


def _odd_but_valid(folder: Path) -> None:
    """1x1 images and two-frame animations whose first frame is red and second blue."""
    Image.new("RGB", (1, 1), (255, 0, 0)).save(folder / "one-pixel.png")
    Image.new("L", (1, 1), 200).save(folder / "one-pixel-gray.jpg")
    frames = [Image.new("RGB", (24, 24), color) for color in ((255, 0, 0), (0, 0, 255))]
    for name in ("animated.gif", "animated.webp"):
        frames[0].save(folder / name, save_all=True, append_images=frames[1:], duration=40, loop=0, lossless=True)


@pytest.fixture
def calib_with_bad_files(tmp_path: Path) -> Path:
    """40 real digit images in their class folders, plus every bad and odd file in class 0, plus a directory loop."""
    folder = tmp_path / "calib"
    for source in sorted(DEMO_CALIB.rglob("*.png"))[::6][:40]:
        target = folder / source.parent.name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target / source.name)
    for name, (make, _reason) in BAD_IMAGES.items():
        make(folder / "0" / name)
    _odd_but_valid(folder / "0")
    (folder / "0" / "dir-loop").symlink_to(folder)
    return folder


def test_each_bad_image_is_skipped_with_its_reason(calib_with_bad_files: Path) -> None:
    dataset = open_dataset(calib_with_bad_files, resolve_source().preprocessing)
    batches = list(dataset.batches(64))
    reasons = {path.name: reason for path, reason in dataset.skipped}
    assert set(reasons) == set(BAD_IMAGES) | {"loop-b.png"}
    for name, (_make, fragment) in BAD_IMAGES.items():
        assert fragment.lower() in reasons[name].lower(), (name, reasons[name])
    images = np.concatenate([b.images for b in batches])
    assert images.shape == (40 + 4, 3, 16, 16) and np.isfinite(images).all()  # 1x1 and animations are used


def test_animations_use_their_first_frame(tmp_path: Path) -> None:
    _odd_but_valid(tmp_path)
    for name in ("animated.gif", "animated.webp"):
        red, green, blue = load_rgb(tmp_path / name).getpixel((12, 12))
        assert red > 200 and green < 30 and blue < 30, name


@pytest.mark.slow  # an INT8 build of the demo model
def test_int8_calibration_skips_bad_files_and_says_so(capsys, demo_dir: Path, calib_with_bad_files: Path) -> None:
    outcome = cli(capsys, "build-trt", "--dir", demo_dir, *INT8_ONLY, "--calib-dir", calib_with_bad_files)
    assert outcome.code == ExitCode.OK, outcome.err
    assert "unreadable image(s)" in outcome.err and "Traceback" not in outcome.err
    Manifest(demo_dir).require("model.int8.onnx", "")
    calibration = json.loads((demo_dir / "calibration.json").read_text())
    # 51 files (40 digits, 4 odd files, 7 bad ones), less the 32 held out for the check
    assert calibration["count"] == 19 and calibration["consumed"] > 19  # bad files read, skipped, replaced


def test_a_calibration_folder_without_one_usable_image_is_refused(capsys, demo_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    for name, (make, _reason) in BAD_IMAGES.items():
        make(folder / name)
    before = snapshot(demo_dir)
    check = ["--check-data", DEMO_VAL]  # 7 files cannot also give the check its 32
    outcome = cli(capsys, "build-trt", "--dir", demo_dir, *INT8_ONLY, "--calib-dir", folder, *check)
    fails(outcome, ExitCode.BAD_INPUT, "no usable image in", "all 7 files failed to decode")
    unchanged(demo_dir, before)


def test_unreadable_images_are_skipped(tmp_path: Path) -> None:
    image = tmp_path / "locked.png"
    Image.new("RGB", (8, 8)).save(image)
    image.chmod(0)
    try:
        image.read_bytes()
    except PermissionError:
        pass
    else:
        pytest.skip("this user reads files whatever their mode (root in CI); chmod 000 cannot make one unreadable")
    Image.new("RGB", (8, 8)).save(tmp_path / "fine.png")
    dataset = open_dataset(tmp_path, resolve_source().preprocessing)
    assert len(np.concatenate([b.images for b in dataset.batches(8)])) == 1
    assert "Permission denied" in dataset.skipped[0][1]


# ----------------------------------------------------------------------------------------------
# The output directory


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["build-trt", "--fp16", "--onnx-only"], "is not a directory"),
        (["verify"], "is not a directory"),
        (["bench"], "is not a directory"),
        (["pipeline", *TINY], "is a file, not a directory"),
    ],
)
def test_a_file_where_the_directory_should_be(capsys, tmp_path: Path, command: list[str], message: str) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    name, *args = command
    fails(cli(capsys, name, "--dir", target, *args), ExitCode.BAD_INPUT, message)
    assert target.read_text() == "x"


def test_pipeline_under_a_regular_file_cannot_write(capsys, tmp_path: Path) -> None:
    """As root nothing is unwritable by mode; a path below a regular file is (ENOTDIR) for everyone."""
    (tmp_path / "file").write_text("x")
    fails(cli(capsys, "pipeline", *TINY, "--dir", tmp_path / "file" / "sub"), ExitCode.BAD_INPUT, "cannot write")


@pytest.mark.parametrize(
    ("command", "blocked", "allowed_new"),
    [
        (["verify", "--count", "4"], "verify.json", frozenset()),
        pytest.param(["bench", "--backends", "onnxruntime", *QUICK_BENCH], "bench.json", frozenset(), marks=SLOW),
        (["build-trt", "--fp16", "--onnx-only"], "model.fp16.onnx", frozenset({"calibration.json"})),
    ],
)
def test_a_directory_where_an_output_file_should_be(capsys, tiny_dir: Path, command, blocked, allowed_new) -> None:
    (tiny_dir / blocked).mkdir()
    before = snapshot(tiny_dir)
    name, *args = command
    fails(cli(capsys, name, "--dir", tiny_dir, *args), ExitCode.BAD_INPUT, f"cannot write {tiny_dir / blocked}")
    unchanged(tiny_dir, before, allowed_new)
    assert (tiny_dir / blocked).is_dir()


def test_a_read_only_directory(capsys, tiny_dir: Path) -> None:
    tiny_dir.chmod(0o555)
    try:
        if os.access(tiny_dir, os.W_OK):
            pytest.skip("this user writes whatever the mode (root in CI); see the under-a-file and ENOSPC cases")
        before = snapshot(tiny_dir)
        outcome = cli(capsys, "build-trt", "--dir", tiny_dir, "--fp16", "--onnx-only")
        fails(outcome, ExitCode.BAD_INPUT, "permission denied")
        unchanged(tiny_dir, before)
    finally:
        tiny_dir.chmod(0o755)


def _disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write of an artifact's temporary file gets some bytes out, then ENOSPC, as on a full disk."""

    def full(_model: object, path: str, *_args: object, **_kwargs: object) -> None:
        Path(path).write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real_write_bytes = Path.write_bytes

    def write_bytes(self: Path, data: bytes) -> int:
        if not self.name.endswith(".partial"):
            return real_write_bytes(self, data)
        real_write_bytes(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(onnx, "save", full)
    monkeypatch.setattr(Path, "write_bytes", write_bytes)


@pytest.mark.parametrize(
    ("command", "written"),
    [
        (["export", *TINY], "model.onnx"),
        (["pipeline", *TINY, *QUICK_PIPELINE], "model.onnx"),
        (["verify", "--count", "4"], "verify.json"),
        pytest.param(["bench", "--backends", "onnxruntime", *QUICK_BENCH], "bench.json", marks=SLOW),
    ],
)
def test_a_full_disk(capsys, tmp_path: Path, tiny_dir: Path, monkeypatch, command: list[str], written: str) -> None:
    directory = tmp_path / "fresh" if command[0] in ("export", "pipeline") else tiny_dir
    before = snapshot(directory)
    _disk_full(monkeypatch)
    name, *args = command
    outcome = cli(capsys, name, "--dir", directory, *args)
    fails(outcome, ExitCode.BAD_INPUT, f"no space left on the device while writing {directory / written}")
    unchanged(directory, before)


def test_a_full_disk_during_int8(capsys, demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(demo_dir)
    _disk_full(monkeypatch)
    outcome = cli(capsys, "build-trt", "--dir", demo_dir, *INT8_ONLY)
    fails(outcome, ExitCode.BAD_INPUT, "no space left on the device while writing", "calibration.json")
    unchanged(demo_dir, before)


@pytest.mark.parametrize(
    "command",
    [
        ["export", *TINY],
        ["build-trt", "--fp16", "--onnx-only"],
        ["verify"],
        ["bench"],
        ["pipeline", *TINY],
    ],
)
def test_a_held_lock_is_exit_5(capsys, tiny_dir: Path, command: list[str]) -> None:
    before = snapshot(tiny_dir)
    name, *args = command
    with locked(tiny_dir):
        outcome = cli(capsys, name, "--dir", tiny_dir, *args)
    fails(outcome, ExitCode.BUSY, f"another resnext-deploy run is using {tiny_dir}", "wait for it")
    unchanged(tiny_dir, before)


@pytest.mark.slow  # a child process holds the lock
def test_a_lock_held_by_another_process(capsys, tiny_dir: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom resnext_deploy.artifacts import locked\n"
            "with locked(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n",
            str(tiny_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        fails(cli(capsys, "verify", "--dir", tiny_dir), ExitCode.BUSY, "another resnext-deploy run")
    finally:
        holder.kill()
        holder.wait()
    assert cli(capsys, "verify", "--dir", tiny_dir, "--count", "4").code == ExitCode.OK  # free once it is gone


# ----------------------------------------------------------------------------------------------
# Ctrl-C: SIGINT to a real process in the middle of each long step, then the next run resumes

# Runs the CLI after wrapping one library function so that, once it has done its real work, the process
# says PAUSED and sleeps: a fixed point inside the step at which to send SIGINT.
PAUSING_CLI = """
import importlib, sys, time
module, name = sys.argv[1].rsplit(".", 1)
module = importlib.import_module(module)
real = getattr(module, name)
def paused(*args, **kwargs):
    result = real(*args, **kwargs)
    print("PAUSED", file=sys.stderr, flush=True)
    time.sleep(120)
    return result
setattr(module, name, paused)
from resnext_deploy.cli import main
sys.exit(main(sys.argv[2:]))
"""


def interrupt(args: list[object], when: str, pause_in: str | None = None, during=None) -> tuple[int, str]:
    """Run the CLI in a subprocess, send SIGINT once stderr shows ``when``; its exit code and stderr.

    ``during`` (a callable) runs while the process is stopped there, before the signal.
    """
    command = ["-c", PAUSING_CLI, pause_in] if pause_in else ["-m", "resnext_deploy"]
    process = subprocess.Popen(
        [sys.executable, *command, *map(str, args)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    seen = []
    try:
        for line in process.stderr:
            seen.append(line)
            if when in line:
                if during is not None:
                    during()
                process.send_signal(signal.SIGINT)
                break
        seen.append(process.stderr.read())
        code = process.wait()
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    return code, "".join(seen)


def _interrupted(code: int, err: str, directory: Path, before: dict[str, str]) -> None:
    assert code == ExitCode.INTERRUPTED, err
    assert err.rstrip().splitlines()[-1].startswith("interrupted; finished artifacts are kept")
    assert "Traceback" not in err
    assert not [p for p in directory.iterdir() if p.name.endswith(".partial")]
    after = snapshot(directory)
    assert {k: v for k, v in after.items() if k in before} == {k: v for k, v in before.items() if k in after}


@pytest.mark.slow  # SIGINT to a child process, then a resume
def test_ctrl_c_during_export_then_resume(capsys, tmp_path: Path) -> None:
    directory = tmp_path / "demo"

    def partial_is_there() -> None:
        assert [p.name for p in directory.iterdir() if p.name.endswith(".partial")] != []

    code, err = interrupt(
        ["export", "--dir", directory], "PAUSED", "resnext_deploy.export.check_export", during=partial_is_there
    )
    _interrupted(code, err, directory, {})
    assert "model.onnx" not in snapshot(directory) and Manifest(directory).entry("model.onnx") is None
    outcome = cli(capsys, "export", "--dir", directory)
    assert outcome.code == ExitCode.OK and f"wrote {directory / 'model.onnx'}" in outcome.err
    again = cli(capsys, "export", "--dir", directory)
    assert again.code == ExitCode.OK and "is up to date (same model and options); reusing it" in again.err


@pytest.mark.slow  # SIGINT to a child process, then a resume
def test_ctrl_c_during_int8_then_resume(capsys, demo_dir: Path) -> None:
    before = snapshot(demo_dir)
    args = ["build-trt", "--dir", demo_dir, *INT8_ONLY]
    code, err = interrupt(args, "PAUSED", "resnext_deploy.precision.typed.check_parity")
    _interrupted(code, err, demo_dir, before)
    assert not (demo_dir / "model.int8.onnx").exists()
    assert json.loads((demo_dir / "calibration.json").read_text())["count"] == 64  # finished before the signal
    outcome = cli(capsys, *args)
    assert outcome.code == ExitCode.OK, outcome.err
    assert f"reusing {demo_dir / 'calibration.json'}" in outcome.err and "calibrated " not in outcome.err
    Manifest(demo_dir).require("model.int8.onnx", "")


@pytest.mark.slow  # SIGINT to a child process, then a resume
def test_ctrl_c_during_verify_then_rerun(capsys, tiny_dir: Path) -> None:
    before = snapshot(tiny_dir)
    code, err = interrupt(
        ["verify", "--dir", tiny_dir, "--count", "4"], "PAUSED", "resnext_deploy.evaluate.verify._run_all"
    )
    _interrupted(code, err, tiny_dir, before)
    assert not (tiny_dir / "verify.json").exists()
    assert cli(capsys, "verify", "--dir", tiny_dir, "--count", "4").code == ExitCode.OK
    assert json.loads((tiny_dir / "verify.json").read_text())["passed"] is True


@pytest.mark.slow  # SIGINT to a child process, then a resume
def test_ctrl_c_during_the_pipeline_then_resume(capsys, tmp_path: Path) -> None:
    """A plain ``python -m resnext_deploy pipeline``, interrupted once its INT8 step starts; meanwhile a second
    run on the same directory is refused by the lock."""
    directory = tmp_path / "demo"

    def second_run() -> None:
        fails(cli(capsys, "verify", "--dir", directory), ExitCode.BUSY, "another resnext-deploy run")

    code, err = interrupt(["pipeline", "--dir", directory, *QUICK_PIPELINE], "== INT8 ONNX", during=second_run)
    _interrupted(code, err, directory, {})
    manifest = Manifest(directory)
    finished = {name: manifest.require(name, "").sha256 for name in ("model.onnx", "model.fp16.onnx")}
    assert manifest.entry("model.int8.onnx") is None
    outcome = cli(capsys, "pipeline", "--dir", directory, *QUICK_PIPELINE)
    assert outcome.code == ExitCode.OK, outcome.err
    assert f"{directory / 'model.onnx'} is up to date" in outcome.err
    assert f"{directory / 'model.fp16.onnx'} is up to date" in outcome.err
    manifest = Manifest(directory)
    assert {name: manifest.entry(name).sha256 for name in finished} == finished
    manifest.require("model.int8.onnx", "")
    assert (directory / "report.md").exists()


# ----------------------------------------------------------------------------------------------
# Numbers


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_outputs_fail_verify(capsys, tiny_dir: Path, value: float) -> None:
    path = tiny_dir / "model.onnx"
    model = onnx.load(str(path))
    [bias] = [t for t in model.graph.initializer if t.name == "fc.bias"]
    bias.CopyFrom(numpy_helper.from_array(np.full(10, value, np.float32), "fc.bias"))
    onnx.save(model, str(path))
    rerecord(tiny_dir)
    line = fails(cli(capsys, "verify", "--dir", tiny_dir, "--count", "4"), ExitCode.VERIFY_FAILED)
    assert "onnxruntime-cpu:fp32 (model.onnx): 40 non-finite outputs" in line
    # strict JSON: a non-finite metric is written as null, never as NaN
    result = json.loads((tiny_dir / "verify.json").read_text(), parse_constant=pytest.fail)["results"][0]
    assert result["passed"] is False and result["nonfinite"] == 40


@pytest.mark.slow  # an INT8 build of the demo model
def test_dead_channels_and_an_all_zero_activation_get_finite_nonzero_int8_scales(capsys, tmp_path: Path) -> None:
    """The demo model with one residual branch switched off (its conv3 input is all zeros on every image) and a
    dead output channel in a weight: calibration sees a range of 0, and INT8 still gets usable scales."""
    state = load_file(str(DEMO_WEIGHTS))
    for key in ("layer2.0.bn2.weight", "layer2.0.bn2.bias"):
        state[key] = torch.zeros_like(state[key])
    state["layer3.0.conv1.weight"][5] = 0.0
    checkpoint = tmp_path / "dead.safetensors"
    save_file(state, checkpoint)
    directory = tmp_path / "dead"
    assert cli(capsys, "export", *DEMO, "--checkpoint", checkpoint, "--dir", directory).code == ExitCode.OK
    outcome = cli(capsys, "build-trt", "--dir", directory, *INT8_ONLY, "--calib-dir", DEMO_CALIB)
    assert outcome.code == ExitCode.OK, outcome.err
    ranges = json.loads((directory / "calibration.json").read_text())["tensors"]
    assert any(entry.get("amax") == 0.0 for entry in ranges.values()), "no all-zero activation was calibrated"
    model = onnx.load(str(directory / "model.int8.onnx"))
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    scales = [initializers[n.input[1]] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert scales and all(np.isfinite(s).all() and (s > 0).all() for s in scales)
    assert all(np.isfinite(1.0 / s.astype(np.float32)).all() for s in scales)
