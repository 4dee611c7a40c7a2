"""Hostile inputs: memory bombs, hangs, stale temp files, symlinked locks, non-finite data, odd dtypes.

Every case asserts the documented exit code, one ``error:`` line and no traceback, and that nothing
appears outside ``--dir``. Bombs and possible hangs run in a subprocess under a timeout, and its peak
memory (``ru_maxrss`` of that child alone) is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import INT8_ONLY, MEMORY_BOUND, QUICK_BENCH, TIMEOUT_S, TINY, cli, fails, measured, one_error, rerecord
from PIL import Image
from safetensors.torch import save_file

from resnext_deploy.artifacts import LOCK_NAME, MANIFEST_NAME, PARTIAL_PREFIX, atomic_path, locked, sha256_file
from resnext_deploy.checkpoint import read_state_dict
from resnext_deploy.data import MAX_ARRAY_BYTES, load_rgb, open_dataset
from resnext_deploy.errors import BadInputError, ExitCode
from resnext_deploy.models import create_model
from resnext_deploy.source import SourceOptions, resolve_source

TINY_SHAPE = (3, 32, 32)
TINY_CLASSES = 10


@pytest.fixture(autouse=True)
def no_hang():
    """Fail, rather than hang, a case that blocks (a FIFO opened for reading blocks forever)."""

    def expired(signum, frame):
        raise TimeoutError(f"the case did not finish in {TIMEOUT_S} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(TIMEOUT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ----------------------------------------------------------------------------------------------
# Checkpoints: stride tricks, sizes, dtypes


def _tiny_state() -> dict[str, torch.Tensor]:
    return create_model("resnext_tiny").state_dict()


@pytest.mark.slow  # the tool in a child process, its memory measured
def test_a_stride_zero_view_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    """The issue's case: 16 floats viewed as (60000, 100000) would need 24 GB once touched."""
    state = _tiny_state()
    state["fc.weight"] = torch.ones(16).as_strided((60000, 100000), (0, 0))
    torch.save(state, tmp_path / "bomb.pth")
    code, err, peak = measured(tmp_path, "export", *TINY, "--checkpoint", "bomb.pth", "--dir", "out")
    assert code == ExitCode.BAD_INPUT
    one_error(err, "'fc.weight'", "stride 0")
    assert peak < MEMORY_BOUND, peak
    assert listing(tmp_path) == {"bomb.pth"}


def _overlapping(state: dict) -> None:
    state["layer1.0.conv1.weight"] = torch.ones(8000).as_strided((4000, 4000), (1, 1))


def _overlapping_with_offset(state: dict) -> None:
    state["fc.weight"] = torch.ones(1000).as_strided((100, 100), (5, 5), 3)


def _stride_zero_inner(state: dict) -> None:
    weight = state["conv1.weight"]
    state["conv1.weight"] = torch.ones(weight.shape[0]).as_strided(weight.shape, (1, 0, 0, 0))


@pytest.mark.parametrize(
    ("tamper", "fragment"),
    [
        (_overlapping, "over only"),
        (_overlapping_with_offset, "over only"),
        (_stride_zero_inner, "stride 0"),
    ],
)
def test_views_larger_than_their_storage_are_refused(capsys, tmp_path: Path, tamper, fragment: str) -> None:
    state = _tiny_state()
    tamper(state)
    torch.save(state, tmp_path / "view.pth")
    fails(cli(capsys, "export", *TINY, "--checkpoint", tmp_path / "view.pth", "--dir", tmp_path / "out"), 3, fragment)
    assert not (tmp_path / "out").exists()


def test_more_bytes_than_the_architecture_needs_is_refused(capsys, tmp_path: Path) -> None:
    state = _tiny_state()
    state["extra.weight"] = torch.zeros(1 << 20)  # 4 MiB beside a model of about 0.2 MiB
    torch.save(state, tmp_path / "big.pth")
    outcome = cli(capsys, "export", *TINY, "--checkpoint", tmp_path / "big.pth", "--dir", tmp_path / "out")
    fails(outcome, ExitCode.BAD_INPUT, "does not fit --arch resnext_tiny", "bytes of tensors")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int64, torch.bool, torch.complex64])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_non_float_weights_are_refused(capsys, tmp_path: Path, dtype: torch.dtype, suffix: str) -> None:
    state = _tiny_state()
    state["layer1.0.conv2.weight"] = state["layer1.0.conv2.weight"].to(dtype)
    path = tmp_path / f"ckpt{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    elif dtype == torch.complex64:
        pytest.skip("safetensors cannot store complex tensors")
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    outcome = cli(capsys, "export", *TINY, "--checkpoint", path, "--dir", tmp_path / "out")
    fails(outcome, ExitCode.BAD_INPUT, "'layer1.0.conv2.weight'", str(dtype), "convert the weights")
    assert not (tmp_path / "out").exists()


def test_float8_weights_are_refused_not_an_internal_error(capsys, tmp_path: Path) -> None:
    state = _tiny_state()
    state["fc.weight"] = state["fc.weight"].to(torch.float8_e4m3fn)
    torch.save(state, tmp_path / "fp8.pth")
    outcome = cli(capsys, "export", *TINY, "--checkpoint", tmp_path / "fp8.pth", "--dir", tmp_path / "out")
    fails(outcome, ExitCode.BAD_INPUT, "float8_e4m3fn")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_float_weights_of_any_width_still_load(tmp_path: Path, dtype: torch.dtype) -> None:
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in _tiny_state().items()}
    torch.save(state, tmp_path / "ckpt.pth")
    loaded = read_state_dict(tmp_path / "ckpt.pth", "resnext_tiny")
    assert loaded["fc.weight"].dtype == dtype and loaded["bn1.num_batches_tracked"].dtype == torch.int64


def test_bfloat16_weights_export(capsys, tmp_path: Path) -> None:
    torch.save(
        {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in _tiny_state().items()}, tmp_path / "c.pth"
    )
    outcome = cli(capsys, "export", *TINY, "--checkpoint", tmp_path / "c.pth", "--dir", tmp_path / "out")
    assert outcome.code == ExitCode.OK, outcome.err


# ----------------------------------------------------------------------------------------------
# Data files: FIFOs and other special files, .npz bombs, labels, non-finite values, float images


def _image(path: Path, value: int = 128) -> None:
    Image.new("RGB", (40, 40), (value, 255 - value, 60)).save(path)


def test_a_fifo_named_like_an_image_is_skipped_not_waited_on(capsys, tiny_dir: Path, tmp_path: Path) -> None:
    images = tmp_path / "imgs"
    images.mkdir()
    _image(images / "real.png")
    os.mkfifo(images / "x.jpg")
    outcome = cli(capsys, "verify", "--dir", tiny_dir, "--data", images)
    assert outcome.code == ExitCode.OK, outcome.err
    assert "skipped 1 unreadable image(s)" in outcome.err and "not a regular file" in outcome.err


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_a_folder_of_only_special_files_is_refused(capsys, tiny_dir: Path, tmp_path: Path, kind: str) -> None:
    images = tmp_path / "imgs"
    images.mkdir()
    if kind == "fifo":
        os.mkfifo(images / "a.png")
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(images / "a.png"))
        server.close()
    fails(cli(capsys, "verify", "--dir", tiny_dir, "--data", images), ExitCode.BAD_INPUT, "not regular files")


@pytest.mark.parametrize("flag", ["--data", "--calib-dir"])
def test_a_fifo_passed_as_the_array_file_is_refused(capsys, tiny_dir: Path, tmp_path: Path, flag: str) -> None:
    os.mkfifo(tmp_path / "arrays.npy")
    command = ["verify"] if flag == "--data" else ["build-trt", "--fp16", "--onnx-only"]
    outcome = cli(capsys, *command, "--dir", tiny_dir, flag, tmp_path / "arrays.npy")
    fails(outcome, ExitCode.BAD_INPUT, "not a regular file")


def test_an_image_that_is_a_device_is_refused_by_the_decoder() -> None:
    with pytest.raises(ValueError, match="not a regular file"):
        load_rgb("/dev/zero")


def _zeros_npz(path: Path, rows: int, shape: tuple[int, ...] = TINY_SHAPE, claimed: int | None = None) -> Path:
    """A compressed .npz of ``rows`` zero images streamed to disk (never whole in memory); the header may lie."""
    chunk = np.zeros((256, *shape), np.float32).tobytes()
    header = {"descr": "<f4", "fortran_order": False, "shape": (claimed or rows, *shape)}
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
        archive.open("images.npy", "w", force_zip64=True) as member,
    ):
        np.lib.format.write_array_header_1_0(member, header)
        for start in range(0, rows, 256):
            member.write(chunk[: min(256, rows - start) * len(chunk) // 256])
    return path


@pytest.fixture(scope="module")
def npz_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 8 MB on disk, 2.5 GB of float32 once decompressed."""
    rows = (MAX_ARRAY_BYTES // (4 * int(np.prod(TINY_SHAPE)))) + 10_000
    return _zeros_npz(tmp_path_factory.mktemp("bomb") / "bomb.npz", rows)


@pytest.mark.slow  # the tool in a child process, its memory measured
def test_an_npz_bomb_reads_only_the_requested_rows(tiny_dir: Path, npz_bomb: Path, tmp_path: Path) -> None:
    code, err, peak = measured(tmp_path, "verify", "--dir", tiny_dir, "--data", npz_bomb, "--count", "8")
    assert code == ExitCode.OK, err
    assert peak < MEMORY_BOUND, peak


@pytest.mark.slow  # the tool in a child process, its memory measured
def test_an_npz_bomb_without_a_count_is_refused_from_its_header(tiny_dir: Path, npz_bomb: Path, tmp_path: Path) -> None:
    code, err, peak = measured(tmp_path, "verify", "--dir", tiny_dir, "--data", npz_bomb)
    assert code == ExitCode.BAD_INPUT
    one_error(err, "would need", "GiB", "--count")
    assert peak < MEMORY_BOUND, peak
    assert not (tiny_dir / "verify.json").exists()


@pytest.mark.parametrize("count", [None, 32])
def test_an_npz_header_claiming_10_to_the_12_rows(capsys, tiny_dir: Path, tmp_path: Path, count) -> None:
    path = _zeros_npz(tmp_path / "liar.npz", 16, claimed=10**12)
    extra = [] if count is None else ["--count", count]
    outcome = cli(capsys, "verify", "--dir", tiny_dir, "--data", path, *extra)
    fails(outcome, ExitCode.BAD_INPUT, "would need" if count is None else "truncated")


def test_an_npy_header_claiming_10_to_the_12_rows(capsys, tiny_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "liar.npy"
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "<f4", "fortran_order": False, "shape": (10**12, *TINY_SHAPE)}
        )
        handle.write(b"\0" * 4096)
    fails(cli(capsys, "verify", "--dir", tiny_dir, "--data", path, "--count", "8"), 3, "not a readable .npy")


def _arrays(path: Path, images: np.ndarray | None = None, **arrays) -> Path:
    images = np.zeros((6, *TINY_SHAPE), np.float32) if images is None else images
    np.savez(path, images=images, **arrays)
    return path


def _with_nan(row: int) -> np.ndarray:
    images = np.zeros((6, *TINY_SHAPE), np.float32)
    images[row, 2, 7, 7] = np.nan
    return images


BAD_ARRAYS = {
    "object-images": (lambda p: _arrays(p, np.array([None] * 6, dtype=object)), "Python objects"),
    "integer-images": (lambda p: _arrays(p, np.zeros((6, *TINY_SHAPE), np.uint8)), "expected preprocessed float32"),
    "2d-labels": (lambda p: _arrays(p, labels=np.zeros((6, 2), np.int64)), "1-D integer array"),
    "float-labels": (lambda p: _arrays(p, labels=np.full(6, 2.7)), "1-D integer array"),
    "bool-labels": (lambda p: _arrays(p, labels=np.ones(6, bool)), "1-D integer array"),
    "object-labels": (lambda p: _arrays(p, labels=np.array(["a"] * 6, dtype=object)), "Python objects"),
    "negative-labels": (lambda p: _arrays(p, labels=np.array([0, 1, -1, 2, 3, 4])), "labels from -1 to 4"),
    "huge-labels": (lambda p: _arrays(p, labels=np.array([0, 10**12, 1, 2, 3, 4])), "the model has 10 classes"),
    "one-too-many-classes": (lambda p: _arrays(p, labels=np.arange(6) + 5), "labels from 5 to 10"),
    "fewer-labels": (lambda p: _arrays(p, labels=np.arange(5)), "5 labels for 6 images"),
    "nan-image": (lambda p: _arrays(p, _with_nan(row=4)), "NaN or Inf values (row 4)"),
    "fortran-images": (lambda p: _arrays(p, np.asfortranarray(np.zeros((6, *TINY_SHAPE), np.float32))), "Fortran"),
    "no-images-key": (lambda p: np.savez(p, pictures=np.zeros((6, *TINY_SHAPE), np.float32)), "no 'images'"),
    "not-a-zip": (lambda p: p.write_bytes(b"PK\x03\x04 not really"), "not a readable .npz"),
}


@pytest.mark.parametrize("case", BAD_ARRAYS)
def test_bad_npz_content_is_bad_input(capsys, tiny_dir: Path, tmp_path: Path, case: str) -> None:
    make, fragment = BAD_ARRAYS[case]
    path = tmp_path / "data.npz"
    make(path)
    before = listing(tiny_dir)
    fails(cli(capsys, "verify", "--dir", tiny_dir, "--data", path), ExitCode.BAD_INPUT, fragment)
    assert listing(tiny_dir) - before <= {LOCK_NAME}


def test_labels_in_range_give_an_accuracy(capsys, tiny_dir: Path, tmp_path: Path) -> None:
    path = _arrays(
        tmp_path / "ok.npz",
        np.random.default_rng(0).standard_normal((6, *TINY_SHAPE), np.float32),
        labels=np.arange(6, dtype=np.int32),
    )
    outcome = cli(capsys, "verify", "--dir", tiny_dir, "--data", path)
    assert outcome.code == ExitCode.OK, outcome.err
    assert json.loads((tiny_dir / "verify.json").read_text())["reference"]["accuracy"] is not None


def test_offsets_and_counts_read_the_right_npz_rows(tmp_path: Path) -> None:
    images = np.arange(10, dtype=np.float32)[:, None, None, None] * np.ones((1, *TINY_SHAPE), np.float32)
    path = _arrays(tmp_path / "rows.npz", images, labels=np.arange(10))
    dataset = open_dataset(
        path, resolve_source(SourceOptions("resnext_tiny")).preprocessing, count=3, offset=4, num_classes=10
    )
    (batch,) = list(dataset.batches(8))
    assert batch.images[:, 0, 0, 0].tolist() == [4, 5, 6] and batch.labels.tolist() == [4, 5, 6]
    assert dataset.available == 6


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_calibration_data_is_bad_input_and_writes_no_cache(capsys, tiny_dir, tmp_path, value) -> None:
    images = np.random.default_rng(0).standard_normal((64, *TINY_SHAPE)).astype(np.float32)
    images[37, 1, 5, 5] = value
    np.save(tmp_path / "nan.npy", images)
    before = listing(tiny_dir)
    outcome = cli(capsys, "build-trt", "--fp16", "--onnx-only", "--dir", tiny_dir, "--calib-dir", tmp_path / "nan.npy")
    fails(outcome, ExitCode.BAD_INPUT, "NaN or Inf values (row 37)")
    assert listing(tiny_dir) - before <= {LOCK_NAME}
    assert not (tiny_dir / "calibration.json").exists()


def _float_tiff(path: Path, values: np.ndarray) -> Path:
    Image.fromarray(values.astype(np.float32)).save(path)
    return path


@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_float_images_are_scaled_by_their_range(tmp_path: Path, scale: float) -> None:
    gradient = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    rgb = np.asarray(load_rgb(_float_tiff(tmp_path / "f.tif", gradient * scale)))
    expected = np.round(gradient * 255).astype(np.uint8)
    assert np.abs(rgb[..., 0].astype(int) - expected).max() <= 1 and rgb.max() == 255


@pytest.mark.parametrize(("values", "fragment"), [(-0.5, "no known scale"), (1e6, "no known scale"), (np.nan, "NaN")])
def test_float_images_of_no_known_range_are_skipped(tmp_path: Path, values: float, fragment: str) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    data = np.full((16, 16), 0.5, np.float32)
    data[3, 3] = values
    _float_tiff(folder / "odd.tif", data)
    _image(folder / "fine.png")
    dataset = open_dataset(folder, resolve_source(SourceOptions("resnext_tiny")).preprocessing)
    assert sum(len(b.images) for b in dataset.batches(4)) == 1
    assert fragment in dataset.skipped[0][1]


def test_32_bit_integer_images_above_16_bits_are_skipped(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8), 1 << 20, np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(ValueError, match="no known scale"):
        load_rgb(tmp_path / "wide.tif")


# ----------------------------------------------------------------------------------------------
# The artifact directory: the lock, stale temporary files, special targets, validation before mkdir


@pytest.mark.parametrize("command", [["verify", "--count", "2"], ["build-trt", "--fp16", "--onnx-only"]])
def test_a_symlinked_lock_is_refused_and_never_followed(capsys, tiny_dir: Path, tmp_path: Path, command) -> None:
    target = tmp_path / "elsewhere" / "created-by-the-lock"
    target.parent.mkdir()
    (tiny_dir / LOCK_NAME).symlink_to(target)
    fails(cli(capsys, command[0], "--dir", tiny_dir, *command[1:]), ExitCode.BAD_INPUT, "is a symlink")
    assert not target.exists()


def test_a_symlinked_lock_to_an_existing_file_leaves_it_alone(capsys, tiny_dir: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tiny_dir / LOCK_NAME).symlink_to(victim)
    fails(cli(capsys, "verify", "--dir", tiny_dir, "--count", "2"), ExitCode.BAD_INPUT, "is a symlink")
    assert victim.read_text() == "precious"


def test_a_fifo_as_the_lock_is_refused_without_blocking(capsys, tiny_dir: Path) -> None:
    os.mkfifo(tiny_dir / LOCK_NAME)
    fails(cli(capsys, "verify", "--dir", tiny_dir, "--count", "2"), ExitCode.BAD_INPUT, "not a regular file")


def test_stale_partial_files_are_removed_once_the_lock_is_held(tiny_dir: Path) -> None:
    stale = [
        tiny_dir / f"{PARTIAL_PREFIX}model.onnx.k3j2.partial",
        tiny_dir / f"{PARTIAL_PREFIX}verify.json.abcd.partial",
    ]
    for path in stale:
        path.write_bytes(b"left by a SIGKILLed run")
    keep = [tiny_dir / "notes.partial", tiny_dir / ".notes.partial"]  # the user's files: not of our prefix
    for path in keep:
        path.write_text("mine")
    with locked(tiny_dir):
        assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in keep)


@pytest.mark.slow  # a bench run
def test_a_later_run_cleans_what_a_killed_one_left(capsys, tiny_dir: Path) -> None:
    (tiny_dir / f"{PARTIAL_PREFIX}model.fp16.onnx.x1y2.partial").write_bytes(b"\0" * 1024)
    outcome = cli(capsys, "bench", "--dir", tiny_dir, "--backends", "onnxruntime", "--precisions", "fp32", *QUICK_BENCH)
    assert outcome.code == ExitCode.OK, outcome.err
    assert not list(tiny_dir.glob(".*.partial"))


@pytest.mark.parametrize(("flag", "value"), [("--opset", "5"), ("--opset", "99"), ("--static-batch", "0")])
def test_export_options_are_checked_before_the_directory_is_made(capsys, tmp_path: Path, flag: str, value: str) -> None:
    fails(cli(capsys, "export", *TINY, "--dir", tmp_path / "new", flag, value), ExitCode.BAD_INPUT, flag)
    assert not (tmp_path / "new").exists()


def _special(path: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_verify_refuses_a_special_verify_json_before_any_work(capsys, tiny_dir: Path, kind: str) -> None:
    _special(tiny_dir / "verify.json", kind)
    outcome = cli(capsys, "verify", "--dir", tiny_dir, "--count", "2")
    fails(outcome, ExitCode.BAD_INPUT, "not a regular file")
    assert "verifying" not in outcome.err  # refused before any runner started


def test_verify_checks_its_json_path_before_any_work(capsys, tiny_dir: Path, tmp_path: Path) -> None:
    outcome = cli(capsys, "verify", "--dir", tiny_dir, "--json", tmp_path / "missing" / "v.json")
    fails(outcome, ExitCode.BAD_INPUT, "is not a directory")
    assert "verifying" not in outcome.err and not (tiny_dir / "verify.json").exists()


@pytest.mark.parametrize("kind", ["fifo", "socket", "directory"])
def test_atomic_writes_refuse_a_special_target(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "out.json"
    target.mkdir() if kind == "directory" else _special(target, kind)
    with pytest.raises(BadInputError, match="not a regular file"), atomic_path(target) as tmp:
        tmp.write_text("{}")
    assert not list(tmp_path.glob(".*.partial"))


@pytest.mark.slow  # a bench run
def test_bench_refuses_a_fifo_where_bench_csv_goes(capsys, tiny_dir: Path) -> None:
    os.mkfifo(tiny_dir / "bench.csv")
    outcome = cli(capsys, "bench", "--dir", tiny_dir, "--backends", "onnxruntime", "--precisions", "fp32", *QUICK_BENCH)
    fails(outcome, ExitCode.BAD_INPUT, "bench.csv", "not a regular file")


# ----------------------------------------------------------------------------------------------
# Malformed manifests


def _edit(directory: Path, change) -> None:
    data = json.loads((directory / MANIFEST_NAME).read_text())
    change(data["artifacts"])
    (directory / MANIFEST_NAME).write_text(json.dumps(data))


def _source(**fields):
    return lambda artifacts: artifacts["model.onnx"]["options"]["source"].update(fields)


MANIFEST_CASES = {
    "entry-is-a-string": (lambda a: a.update({"model.onnx": "model.onnx"}), "is a str, not an object"),
    "entry-is-a-list": (lambda a: a.update({"model.fp16.onnx": []}), "is a list, not an object"),
    "missing-sha256": (lambda a: a["model.onnx"].pop("sha256"), "has no valid sha256"),
    "short-sha256": (lambda a: a["model.onnx"].update(sha256="abc"), "has no valid sha256"),
    "options-a-list": (lambda a: a["model.onnx"].update(options=[]), "options that are not an object"),
    "missing-options": (lambda a: a["model.onnx"].pop("options"), "has no model source"),
    "missing-source": (lambda a: a["model.onnx"]["options"].pop("source"), "has no model source"),
    "source-a-number": (lambda a: a["model.onnx"]["options"].update(source=7), "no model source"),
    "unknown-arch": (_source(arch="resnext9000"), "unknown architecture 'resnext9000'"),
    "arch-a-list": (_source(arch=["resnext_tiny"]), "ModelSource.arch: expected a string, got list"),
    "huge-class-count": (_source(num_classes=10**12), "num_classes 1000000000000 is not an integer between"),
    "zero-classes": (_source(num_classes=0), "num_classes 0"),
    "classes-a-string": (_source(num_classes="10"), "ModelSource.num_classes: expected an integer, got str"),
    "image-size-huge": (_source(image_size=10**9), "image_size"),
    "checkpoint-a-number": (_source(checkpoint=5), "ModelSource.checkpoint: expected a string, got int"),
    "parent-a-dict": (lambda a: a["model.onnx"].update(parent_sha256={}), "parent_sha256"),
}


@pytest.mark.parametrize("command", [["verify", "--count", "2"], ["bench", *QUICK_BENCH], ["build-trt", "--fp16"]])
@pytest.mark.parametrize("case", MANIFEST_CASES)
def test_malformed_manifest_fields_are_bad_input(capsys, tiny_dir: Path, case: str, command: list[str]) -> None:
    change, fragment = MANIFEST_CASES[case]
    _edit(tiny_dir, change)
    before = listing(tiny_dir)
    fails(cli(capsys, command[0], "--dir", tiny_dir, *command[1:]), ExitCode.BAD_INPUT, fragment, MANIFEST_NAME)
    assert listing(tiny_dir) == before


def test_num_classes_is_capped_on_the_command_line_too(capsys, tmp_path: Path) -> None:
    outcome = cli(capsys, "export", *TINY, "--num-classes", str(10**12), "--dir", tmp_path / "out")
    fails(outcome, ExitCode.BAD_INPUT, "--num-classes must be between 1 and")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# ONNX files with unnamed nodes, triton-repo checks and external data, the serve workspace


def _rename(directory: Path, duplicate: bool) -> None:
    model = onnx.load(str(directory / "model.onnx"))
    for node in model.graph.node[::2]:
        node.name = ""
    if duplicate:
        model.graph.node[1].name = model.graph.node[3].name
    onnx.save(model, str(directory / "model.onnx"))
    rerecord(directory)


@pytest.mark.slow  # an INT8 build of the demo model
def test_unnamed_nodes_under_int8_are_named_not_an_internal_error(capsys, demo_dir: Path) -> None:
    _rename(demo_dir, duplicate=False)
    outcome = cli(capsys, "build-trt", "--dir", demo_dir, *INT8_ONLY)
    assert outcome.code == ExitCode.OK, outcome.err
    names = [node.name for node in onnx.load(str(demo_dir / "model.int8.onnx")).graph.node]
    assert all(names) and len(set(names)) == len(names)


def test_duplicate_node_names_are_bad_input(capsys, tiny_dir: Path) -> None:
    _rename(tiny_dir, duplicate=True)
    outcome = cli(capsys, "build-trt", "--fp16", "--onnx-only", "--dir", tiny_dir)
    fails(outcome, ExitCode.BAD_INPUT, "same node name")
    assert not (tiny_dir / "model.fp16.onnx").exists()


def _external(directory: Path, location: str = "model.onnx.data") -> None:
    model = onnx.load(str(directory / "model.onnx"))
    onnx.save(model, str(directory / "model.onnx"), save_as_external_data=True, location=location, size_threshold=0)
    rerecord(directory)


def test_triton_repo_copies_external_data_with_the_model(capsys, tiny_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("tritonclient")
    import onnxruntime as ort

    _external(tiny_dir)
    outcome = cli(capsys, "triton-repo", "--dir", tiny_dir, "--out", tmp_path / "repo")
    assert outcome.code == ExitCode.OK, outcome.err
    versions = sorted((tmp_path / "repo").glob("*/1"))  # the ONNX Runtime model and the OpenVINO one
    assert len(versions) == 2
    for version in versions:
        assert sha256_file(version / "model.onnx.data") == sha256_file(tiny_dir / "model.onnx.data")
    [version] = (tmp_path / "repo").glob("*_onnx_*/1")
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": np.zeros((1, *TINY_SHAPE), np.float32)})[0]
    assert logits.shape == (1, TINY_CLASSES) and np.isfinite(logits).all()


def test_triton_repo_refuses_external_data_outside_the_directory(capsys, tiny_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("tritonclient")
    _external(tiny_dir)
    outside = tmp_path / "outside.data"
    (tiny_dir / "model.onnx.data").rename(outside)
    model = onnx.load(str(tiny_dir / "model.onnx"), load_external_data=False)
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = "../outside.data"
    onnx.save(model, str(tiny_dir / "model.onnx"))
    rerecord(tiny_dir)
    outcome = cli(capsys, "triton-repo", "--dir", tiny_dir, "--out", tmp_path / "repo")
    fails(outcome, ExitCode.BAD_INPUT, "outside its directory")
    assert not (tmp_path / "repo").exists() or not list((tmp_path / "repo").rglob("*.onnx"))


def test_triton_repo_refuses_a_model_changed_after_it_was_recorded(capsys, tiny_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("tritonclient")
    with open(tiny_dir / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    outcome = cli(capsys, "triton-repo", "--dir", tiny_dir, "--out", tmp_path / "repo")
    fails(outcome, ExitCode.BAD_INPUT, "sha256 differs")
    assert not (tmp_path / "repo").exists()


def test_serve_workspaces_of_dead_processes_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from resnext_deploy.serving import pytriton

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{pytriton.WORKSPACE_PREFIX}{dead.pid}-abc"
    (stale / "workspace" / "model-store").mkdir(parents=True)
    living = tmp_path / f"{pytriton.WORKSPACE_PREFIX}{os.getppid()}-def"
    living.mkdir()
    with pytriton._workspace() as workspace:
        assert not stale.exists() and living.exists()
        assert workspace.parent.name.startswith(f"{pytriton.WORKSPACE_PREFIX}{os.getpid()}-")
        workspace.mkdir()
    assert not workspace.parent.exists()


def test_the_triton_load_test_waits_for_no_one_else_s_lock(capsys, tiny_dir: Path) -> None:
    """It writes bench_triton.json into DIR, so it takes the lock first (before contacting any server)."""
    with locked(tiny_dir):
        outcome = cli(capsys, "bench-triton", "--dir", tiny_dir, "--url", "http://127.0.0.1:9", "--duration", "0.1")
    fails(outcome, ExitCode.BUSY, "another resnext-deploy run is using")
    assert not (tiny_dir / "bench_triton.json").exists()
