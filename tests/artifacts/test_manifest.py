"""The manifest's typed records: artifact entries and skipped steps, read and written only by artifacts/manifest.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resnext_deploy.artifacts import MANIFEST_NAME, Manifest, SkippedStep, sha256_file
from resnext_deploy.cli import main
from resnext_deploy.errors import BadInputError
from resnext_deploy.source import recorded_source


def _raw(directory: Path) -> dict:
    return json.loads((directory / MANIFEST_NAME).read_text())


def test_an_entry_is_the_recorded_json_typed(tiny_dir: Path) -> None:
    entry = Manifest(tiny_dir).entry("model.onnx")
    raw = _raw(tiny_dir)["artifacts"]["model.onnx"]
    assert entry is not None and entry.name == "model.onnx"
    assert entry.sha256 == raw["sha256"] == sha256_file(tiny_dir / "model.onnx")
    assert (entry.precision, entry.size_bytes, entry.parent_sha256) == ("fp32", raw["size_bytes"], None)
    assert entry.source == raw["options"]["source"]
    assert recorded_source(Manifest(tiny_dir)).arch == "resnext_tiny"
    assert entry.stale is None and entry.quantized_nodes is None and entry.fp32_nodes == ()


def test_skipped_steps_are_objects_on_top_of_the_same_json(tiny_dir: Path) -> None:
    manifest = Manifest(tiny_dir)
    no_gpu = "no GPU here\ntrtexec --onnx=model.onnx"
    manifest.record_skipped("tensorrt", no_gpu)
    manifest.record_skipped("bench", "failed: no runner")
    assert _raw(tiny_dir)["skipped"] == {"tensorrt": no_gpu, "bench": "failed: no runner"}  # the earlier format
    steps = Manifest(tiny_dir).skipped
    assert steps == [SkippedStep("tensorrt", no_gpu), SkippedStep("bench", "failed: no runner")]
    assert [s.failed for s in steps] == [False, True]
    manifest.record_skipped("tensorrt", None)
    manifest.record_skipped("bench", None)
    assert Manifest(tiny_dir).skipped == [] and "skipped" not in _raw(tiny_dir)


def test_a_malformed_skipped_record_is_refused_in_one_line(tiny_dir: Path, capsys: pytest.CaptureFixture) -> None:
    raw = _raw(tiny_dir)
    raw["skipped"] = ["tensorrt"]
    (tiny_dir / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(BadInputError, match="'skipped' is not an object"):
        Manifest(tiny_dir)
    assert main(["report", "--dir", str(tiny_dir)]) == 3
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
