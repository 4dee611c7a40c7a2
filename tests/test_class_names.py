"""Class names: given at export (a file, or the data's class folders), kept in model.onnx and the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from resnext_deploy.artifacts import Manifest
from resnext_deploy.cli import main
from resnext_deploy.errors import ExitCode
from resnext_deploy.parity import compare
from resnext_deploy.source import ModelSource, SourceOptions, recorded_source, resolve_source

NAMES = [f"class {i}" for i in range(10)]


def _image_folder(root: Path, classes: list[str]) -> Path:
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), (index * 20, 0, 0)).save(root / name / "a.png")
    return root


def _metadata(directory: Path) -> dict[str, str]:
    model = onnx.load(str(directory / "model.onnx"), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def test_class_names_file_goes_into_the_onnx_metadata_and_the_manifest(tmp_path: Path) -> None:
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(NAMES) + "\n\n")  # blank lines are ignored
    assert main(["export", "--arch", "resnext_tiny", "--class-names", str(names), "--dir", str(tmp_path / "d")]) == 0
    assert json.loads(_metadata(tmp_path / "d")["resnext_deploy.class_names"]) == NAMES
    source = recorded_source(Manifest(tmp_path / "d"))
    assert source.class_names == tuple(NAMES)
    assert ModelSource.from_dict(source.to_dict()) == source


def test_class_names_set_the_class_count_and_must_match_a_checkpoint(tmp_path: Path, capsys) -> None:
    names = tmp_path / "classes.txt"
    names.write_text("a\nb\nc\n")
    assert resolve_source(SourceOptions("resnext_tiny", class_names=names)).num_classes == 3
    code = main(["export", "--arch", "resnext_tiny", "--num-classes", "5", "--class-names", str(names), "--dir", "x"])
    err = capsys.readouterr().err.strip()
    assert code == ExitCode.BAD_INPUT and "names 3 classes; the model has 5" in err and len(err.splitlines()) == 1
    names.write_text("a\na\n")
    assert main(["export", "--arch", "resnext_tiny", "--class-names", str(names), "--dir", "x"]) == ExitCode.BAD_INPUT
    assert "names a class twice" in capsys.readouterr().err


def test_a_folder_names_the_classes_by_its_subfolders(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path / "images", ["cat", "dog", "eel"])
    assert resolve_source(SourceOptions("resnext_tiny", class_names=folder)).class_names == ("cat", "dog", "eel")


def test_data_folders_given_at_export_name_the_classes_when_they_fit(tmp_path: Path) -> None:
    fits = _image_folder(tmp_path / "calib", NAMES)
    other = _image_folder(tmp_path / "three", ["a", "b", "c"])
    assert resolve_source(SourceOptions("resnext_tiny"), name_folders=(None, other, fits)).class_names == tuple(NAMES)
    assert (
        resolve_source(SourceOptions("resnext_tiny"), name_folders=(other,)).class_names == ()
    )  # 3 folders, 10 classes
    given = tmp_path / "given.txt"
    given.write_text("".join(f"g{i}\n" for i in range(10)))
    assert resolve_source(SourceOptions("resnext_tiny", class_names=given), name_folders=(fits,)).class_names[0] == "g0"


def test_a_source_recorded_before_names_existed_reads_as_the_same_source(tmp_path: Path) -> None:
    """Manifests written before class names existed stay up to date: the missing field reads as no names."""
    source = resolve_source(SourceOptions("resnext_tiny"))
    before = {key: value for key, value in source.to_dict().items() if key != "classes"}
    assert ModelSource.from_dict(before) == source == ModelSource.from_dict(source.to_dict())


@pytest.mark.parametrize(("classes", "top5"), [(4, False), (5, False), (6, True), (10, True)])
def test_top5_is_reported_only_with_more_than_5_classes(classes: int, top5: bool) -> None:
    logits = np.random.default_rng(0).standard_normal((8, classes)).astype(np.float32)
    overlap = compare(logits, logits + 0.01).top5_overlap
    assert (overlap is not None) == top5
