"""No silent surprises in verify: unlabeled data, class folders that are not the model's, random weights;
and the table stays narrow with failure reasons under it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import edit_initializers, is_weight_scale, with_low_precision
from PIL import Image

from resnext_deploy.artifacts import Manifest
from resnext_deploy.cli import main
from resnext_deploy.evaluate.verify import run_verify
from resnext_deploy.report import write_report


def _images(folder: Path, count: int, seed: int = 0) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8), "RGB").save(folder / f"{i}.png")


def test_a_folder_without_class_subfolders_is_noted_as_unlabeled(tiny_dir: Path, tmp_path: Path) -> None:
    _images(tmp_path / "flat", 4)
    lines: list[str] = []
    report = run_verify(tiny_dir, data=tmp_path / "flat", log=lines.append)
    [note] = [w for w in report.record.warnings if "class subfolders" in w]
    assert "unlabeled" in note and f"warning: {note}" in lines
    assert report.record.reference.accuracy is None


def test_class_folders_that_are_not_the_models_classes_give_no_accuracy(tiny_dir: Path, tmp_path: Path) -> None:
    _images(tmp_path / "pets" / "cat", 3, seed=1)
    _images(tmp_path / "pets" / "dog", 3, seed=2)
    report = run_verify(tiny_dir, data=tmp_path / "pets", log=lambda _: None)
    [note] = [w for w in report.record.warnings if "do not match" in w]
    assert "(2: cat, dog)" in note and "the model's 10 classes" in note
    assert report.record.reference.accuracy is None
    assert all(r.parity is not None and r.parity.accuracy is None for r in report.results)
    markdown = write_report(tiny_dir, log=lambda _: None).path.read_text()
    assert f"**Note:** {note}." in markdown


def test_as_many_class_folders_as_outputs_give_accuracy(tiny_dir: Path, tmp_path: Path) -> None:
    for digit in range(10):
        _images(tmp_path / "ten" / str(digit), 1, seed=digit)
    report = run_verify(tiny_dir, data=tmp_path / "ten", log=lambda _: None)
    assert report.record.reference.accuracy is not None
    assert not [w for w in report.record.warnings if "do not match" in w or "class subfolders" in w]


def test_random_weights_are_loud_on_stdout_in_the_manifest_and_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "--dir", str(tmp_path), "--arch", "resnext_tiny"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("WARNING: RANDOM WEIGHTS: resnext_tiny was exported without --checkpoint")
    warning = Manifest(tmp_path).entry("model.onnx").weights_warning
    assert warning.startswith("RANDOM WEIGHTS")
    assert f"**{warning}.**" in write_report(tmp_path, log=lambda _: None).path.read_text()


def test_the_demo_model_is_not_called_random(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--dir", str(tmp_path)]) == 0
    assert "RANDOM WEIGHTS" not in capsys.readouterr().out
    assert Manifest(tmp_path).entry("model.onnx").weights_warning is None


def test_failure_reasons_go_under_a_table_that_fits_120_columns(
    tiny_export_template: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: the table fits it, no name cut
    directory = with_low_precision(tiny_export_template, tmp_path / "tiny")
    edit_initializers(directory / "model.int8.onnx", is_weight_scale, lambda a: a * 3)
    Manifest(directory).record("model.int8.onnx", "int8", parent_sha256=Manifest(directory).entry("model.onnx").sha256)
    assert main(["verify", "--dir", str(directory), "--count", "16", "--backends", "onnxruntime"]) == 1
    out = capsys.readouterr().out  # the table and the reasons under it are the result: stdout
    table = out[out.index("verify: FAILED") : out.index("\n[1] ")]
    assert max(len(line) for line in table.splitlines()) <= 200
    data = json.loads((directory / "verify.json").read_text())
    [failing] = [r for r in data["results"] if not r["passed"]]
    assert f"[1] onnxruntime-cpu:int8: {'; '.join(failing['failures'])}" in out
    rows = [line for line in table.splitlines() if line.startswith(("│", "|"))]
    assert any("FAIL [1]" in line for line in rows)
    assert not any(failing["failures"][0][:30] in line for line in rows)
