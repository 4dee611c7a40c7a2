"""Data that says what it is: class names are data (never structure), folders of some classes or with a stray file
stay labeled, and the messages about calibration data are true."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, fails, noise_images, quiet_export, snapshot, unchanged
from PIL import Image

from resnext_deploy.artifacts import CALIBRATION_NAME
from resnext_deploy.data import ImageFolder, open_dataset
from resnext_deploy.demo import DEMO_CALIB, DEMO_WEIGHTS
from resnext_deploy.errors import BadInputError, ExitCode
from resnext_deploy.precision.calibration import calibrate
from resnext_deploy.precision.options import PrecisionOptions
from resnext_deploy.precision.split import MIN_CALIBRATION, split_datasets
from resnext_deploy.precision.typed import make_typed_onnx, plan_typed
from resnext_deploy.source import SourceOptions, resolve_source

NAMES = [f"c{i}" for i in range(10)]
TINY_SOURCE = ["--arch", "resnext_tiny"]
PRE = resolve_source(SourceOptions("resnext_tiny")).preprocessing


def _folder(root: Path, classes: list[str], per_class: int = 2) -> Path:
    """``per_class`` 16x16 images in a subfolder per class; names may be any bytes the file system takes."""
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (16, 16), (index * 20, i * 40, 0)).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def named_dir(tmp_path: Path) -> Path:
    """The tiny model exported with the class names c0..c9."""
    names = tmp_path / "names.txt"
    names.write_text("\n".join(NAMES) + "\n")
    return quiet_export(resolve_source(SourceOptions("resnext_tiny", class_names=names)), tmp_path / "named")


# ----------------------------------------------------------------------------------------------
# Names are data (#29.1, #29.5)


@pytest.mark.parametrize(
    ("name", "shown", "problem"),
    [
        ("0\nfake", r"'0\nfake'", "line break or control character (U+000A)"),
        ("\x1b[31mred", r"'\x1b[31mred'", "(U+001B)"),  # NUL cannot be in a file name: the names file test has it
        ("tab\there", r"'tab\there'", "(U+0009)"),
        ("para\u2029graph", r"'para\u2029graph'", "(U+2029)"),
        (os.fsdecode(b"caf\xe9"), r"b'caf\xe9'"[1:], "is not valid UTF-8"),
    ],
)
def test_a_class_folder_that_is_not_a_name_is_refused_at_every_door(
    capsys, named_dir: Path, tmp_path: Path, name: str, shown: str, problem: str
) -> None:
    data = _folder(tmp_path / "data", ["c1", name])
    out = tmp_path / "out"
    for command in (
        ["export", *TINY_SOURCE, "--dir", out, "--class-names", data],
        ["pipeline", *TINY_SOURCE, "--dir", out, "--calib-dir", data],
        ["pipeline", *TINY_SOURCE, "--dir", out, "--data", data, "--class-names", tmp_path / "names.txt"],
    ):
        line = fails(cli(capsys, *command), ExitCode.BAD_INPUT, str(data), shown, problem)
        assert "\n" not in line
        assert not out.exists()  # refused before anything was written
    before = snapshot(named_dir)
    fails(cli(capsys, "verify", "--dir", named_dir, "--data", data), ExitCode.BAD_INPUT, shown, problem)
    unchanged(named_dir, before)
    assert not (named_dir / "verify.json").exists()


@pytest.mark.parametrize(
    ("content", "line", "problem"),
    [
        (b"a\nb\x0bc\n", 2, "(U+000B)"),  # str.splitlines would have made two names of it
        (b"a\nb\xe9\n", 2, "is not valid UTF-8"),
        (b"a\r\nb\r\nc\x00\r\n", 3, "(U+0000)"),
        (b"a\nb\x85c\n", 2, "is not valid UTF-8"),  # a lone Latin-1 NEL byte
        ("a\nb\u2028c\n".encode(), 2, "(U+2028)"),
    ],
)
def test_a_class_names_file_line_that_is_not_a_name_is_refused_naming_the_line(
    capsys, tmp_path: Path, content: bytes, line: int, problem: str
) -> None:
    names = tmp_path / "names.txt"
    names.write_bytes(content)
    out = tmp_path / "out"
    fails(
        cli(capsys, "export", *TINY_SOURCE, "--dir", out, "--class-names", names),
        ExitCode.BAD_INPUT,
        f"{names} line {line}",
        problem,
    )
    assert not out.exists()


def test_crlf_and_blank_lines_are_still_one_name_per_line(tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_bytes(b'caf\xc3\xa9 "quoted" {braces}\r\n\r\n' + b"".join(f"n{i}\r\n".encode() for i in range(9)))
    source = resolve_source(SourceOptions("resnext_tiny", class_names=names))
    assert source.class_names == ('café "quoted" {braces}', *[f"n{i}" for i in range(9)])


def test_a_hand_edited_manifest_name_is_refused(capsys, named_dir: Path) -> None:
    manifest = json.loads((named_dir / "manifest.json").read_text())
    manifest["artifacts"]["model.onnx"]["options"]["source"]["classes"][1] = "c1\nforged"
    (named_dir / "manifest.json").write_text(json.dumps(manifest))
    fails(cli(capsys, "verify", "--dir", named_dir), ExitCode.BAD_INPUT, "manifest.json", r"'c1\nforged'")


def test_labels_txt_has_one_line_per_class(capsys, tmp_path: Path) -> None:
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="triton-repo's ModelConfig protobuf")
    names = ['"quoted"', 'label_filename: "evil.txt"', "café", "名前", "with space", *[f"n{i}" for i in range(5)]]
    data = _folder(tmp_path / "data", names, per_class=1)
    assert cli(capsys, "export", *TINY_SOURCE, "--dir", tmp_path / "d", "--class-names", data).code == ExitCode.OK
    assert cli(capsys, "triton-repo", "--dir", tmp_path / "d", "--out", tmp_path / "repo").code == ExitCode.OK
    labels = sorted((tmp_path / "repo").rglob("labels.txt"))
    assert labels
    for path in labels:
        raw = path.read_bytes()
        assert raw.count(b"\n") == 10 and raw.decode("utf-8").split("\n")[:-1] == sorted(names)


# ----------------------------------------------------------------------------------------------
# Folders of some classes, and stray files (#26.6, #29.8)


def test_a_folder_of_some_classes_is_labeled_with_the_models_indices(named_dir: Path, tmp_path: Path) -> None:
    data = _folder(tmp_path / "data", ["c7"], per_class=3)
    dataset = open_dataset(data, PRE, class_names=NAMES)
    labels = np.concatenate([batch.labels for batch in dataset.batches(2)])
    assert labels.tolist() == [7, 7, 7] and dataset.has_labels
    assert open_dataset(_folder(tmp_path / "other", ["c7", "zebra"]), PRE, class_names=NAMES).folder.classes == [
        "c7",
        "zebra",
    ]  # a folder the model does not name: its own labels, not the model's


def test_verify_on_a_folder_of_one_class_reports_accuracy_and_says_so_once(
    capsys, named_dir: Path, tmp_path: Path
) -> None:
    data = _folder(tmp_path / "data", ["c7"], per_class=4)
    outcome = cli(capsys, "verify", "--dir", named_dir, "--data", data, "--backends", "onnxruntime")
    assert outcome.code == ExitCode.OK, outcome.err
    assert "do not match" not in outcome.err
    note = f"{data} holds 1 of the model's 10 classes (c7): accuracy is over those classes only"
    assert outcome.err.count(note) == 1
    reference = json.loads((named_dir / "verify.json").read_text())["reference"]
    assert reference["n"] == 4 and reference["accuracy"] is not None


def test_a_stray_image_beside_class_folders_is_skipped_naming_it(capsys, named_dir: Path, tmp_path: Path) -> None:
    data = _folder(tmp_path / "data", NAMES)
    Image.new("RGB", (16, 16)).save(data / "stray.png")
    folder = ImageFolder.scan(data)
    assert folder.labels is not None and folder.stray == [data / "stray.png"] and len(folder.files) == 20
    outcome = cli(capsys, "verify", "--dir", named_dir, "--data", data, "--backends", "onnxruntime")
    assert outcome.code == ExitCode.OK, outcome.err
    assert outcome.err.count("'stray.png'") == 1 and "beside the class folders" in outcome.err
    assert "unlabeled" not in outcome.err
    assert json.loads((named_dir / "verify.json").read_text())["reference"]["accuracy"] is not None


def test_images_beside_one_small_subfolder_stay_one_unlabeled_set(tmp_path: Path) -> None:
    data = noise_images(tmp_path / "flat", 1, classes=1)
    for i in range(3):
        Image.new("RGB", (16, 16)).save(data / f"{i}.png")
    folder = ImageFolder.scan(data)
    assert folder.labels is None and len(folder.files) == 4 and folder.stray == []


# ----------------------------------------------------------------------------------------------
# Calibration data messages (#26.6)


def test_calibration_on_few_images_warns_even_with_check_data(tiny_dir: Path, tmp_path: Path) -> None:
    calib = _folder(tmp_path / "calib", ["only"], per_class=3)
    check = noise_images(tmp_path / "check", 40)
    messages: list[str] = []
    make_typed_onnx(tiny_dir, "fp16", PrecisionOptions(calib_source=calib, check_source=check), log=messages.append)
    warnings = [m for m in messages if m.startswith("warning: calibrating on only 3 samples")]
    assert len(warnings) == 1 and "fewer than the model's 10 classes" in warnings[0]

    messages.clear()
    twenty = noise_images(tmp_path / "twenty", 20, classes=10)
    make_typed_onnx(tiny_dir, "fp16", PrecisionOptions(calib_source=twenty, check_source=check), log=messages.append)
    assert f"fewer than {MIN_CALIBRATION} (the minimum)" in "\n".join(messages)

    messages.clear()
    enough = noise_images(tmp_path / "enough", MIN_CALIBRATION + 2, classes=10)
    make_typed_onnx(tiny_dir, "fp16", PrecisionOptions(calib_source=enough, check_source=check), log=messages.append)
    assert not [m for m in messages if "calibrating on only" in m or "cover" in m]

    messages.clear()
    two = noise_images(tmp_path / "two", MIN_CALIBRATION + 2, classes=2)
    make_typed_onnx(tiny_dir, "fp16", PrecisionOptions(calib_source=two, check_source=check), log=messages.append)
    assert "warning: the calibration images cover 2 of the model's 10 classes" in "\n".join(messages)


def test_stale_calibration_says_what_changed(tiny_dir: Path, tmp_path: Path) -> None:
    folder = noise_images(tmp_path / "calib", 12)
    model = tiny_dir / "model.onnx"
    calibrate(tiny_dir, model, open_dataset(folder, PRE, count=8, seed=0), log=lambda _m: None)
    messages: list[str] = []
    calibrate(tiny_dir, model, open_dataset(folder, PRE, count=6, seed=0), log=messages.append)
    assert messages[0] == (
        f"{tiny_dir / CALIBRATION_NAME} is stale (it was made on other data ({folder} (8 of 12 images, 2 classes); "
        f"this run calibrates on {folder} (6 of 12 images, 2 classes))); calibrating again"
    )
    first = json.loads((tiny_dir / CALIBRATION_NAME).read_text())
    for path in sorted(folder.rglob("*.png")):  # the same files, other pixels, the old mtimes
        stat = path.stat()
        pixels = np.asarray(Image.open(path))
        Image.fromarray(255 - pixels).save(path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    messages.clear()
    calibrate(tiny_dir, model, open_dataset(folder, PRE, count=6, seed=0), log=messages.append)
    assert "same folder and count, other names or contents" in messages[0] and "reusing" not in messages[0]
    assert json.loads((tiny_dir / CALIBRATION_NAME).read_text())["tensors"] != first["tensors"]


@pytest.mark.skipif(not DEMO_WEIGHTS.exists(), reason="the demo weights are not built yet")
def test_naming_the_demos_own_calibration_folder_is_the_same_data(demo_dir: Path, tmp_path: Path) -> None:
    from resnext_deploy.artifacts import Manifest
    from resnext_deploy.source import recorded_source

    source = recorded_source(Manifest(demo_dir))
    default = split_datasets(source, "int8", None, 512)
    for named in (DEMO_CALIB, Path(shutil.copytree(DEMO_CALIB, tmp_path / "calib"))):  # the copy is other data
        calib, check = split_datasets(source, "int8", named, 512)
        same = named == DEMO_CALIB
        assert (calib.fingerprint == default[0].fingerprint) is same
        assert (check.fingerprint == default[1].fingerprint) is same
    manifest = Manifest(demo_dir)
    parent = manifest.entry("model.onnx").sha256
    plans = [plan_typed(manifest, parent, "int8", PrecisionOptions(calib_source=c)) for c in (None, DEMO_CALIB)]
    assert plans[0].record_options == plans[1].record_options  # the INT8 file made without --calib-dir is reused


def test_bad_names_in_a_calibration_folder_fail_before_the_split(tmp_path: Path) -> None:
    data = _folder(tmp_path / "data", ["ok", "bad\rname"], per_class=20)
    source = resolve_source(SourceOptions("resnext_tiny"))
    with pytest.raises(BadInputError, match=r"'bad\\rname' holds a line break"):
        split_datasets(source, "int8", data, 64)


@pytest.mark.skipif(not DEMO_WEIGHTS.exists(), reason="the demo weights are not built yet")
def test_the_demos_own_folders_name_the_model_as_without_them() -> None:
    """The demo's class folders are its architecture's own names: naming them changes no record (no re-export)."""
    from resnext_deploy.demo import DEMO_VAL

    assert resolve_source(name_folders=(DEMO_CALIB, DEMO_VAL)) == resolve_source()


@pytest.mark.slow  # an INT8 build of the demo model
@pytest.mark.skipif(not DEMO_WEIGHTS.exists(), reason="the demo weights are not built yet")
def test_build_trt_with_the_demos_own_calibration_folder_reuses_everything(capsys, demo_dir: Path) -> None:
    """#26.6: it printed "calibration.json is stale (it was made on other data (.../digits/calib ...))"."""
    first = cli(capsys, "build-trt", "--dir", demo_dir, "--int8", "--onnx-only")
    assert first.code == ExitCode.OK, first.err
    again = cli(capsys, "build-trt", "--dir", demo_dir, "--int8", "--onnx-only", "--calib-dir", DEMO_CALIB)
    assert again.code == ExitCode.OK, again.err
    assert "stale" not in again.err and f"{demo_dir / 'model.int8.onnx'} is up to date" in again.err
