"""Re-exporting another model into a directory marks what was made from the old model.onnx stale."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import with_low_precision

from resnext_deploy.artifacts import Manifest
from resnext_deploy.evaluate.bench import run_bench
from resnext_deploy.evaluate.settings import BenchSettings
from resnext_deploy.evaluate.verify import run_verify
from resnext_deploy.export import export_onnx
from resnext_deploy.precision.typed import make_typed_onnx
from resnext_deploy.report import write_report
from resnext_deploy.source import SourceOptions, resolve_source


@pytest.mark.slow  # a re-export and FP16/INT8 builds
def test_reexport_marks_children_stale_and_build_makes_them_again(tiny_export_template: Path, tmp_path: Path) -> None:
    directory = with_low_precision(tiny_export_template, tmp_path / "tiny")
    manifest = Manifest(directory)
    # An engine-like grandchild of model.int8.onnx: stale through its parent.
    (directory / "model.int8.engine").write_bytes(b"plan")
    manifest.record("model.int8.engine", "int8", parent_sha256=manifest.entry("model.int8.onnx").sha256)
    assert manifest.stale() == {}

    lines: list[str] = []
    export_onnx(resolve_source(SourceOptions("resnext_tiny", num_classes=7)), directory, log=lines.append)

    manifest = Manifest(directory)
    stale = manifest.stale()
    assert set(stale) == {"model.fp16.onnx", "model.int8.onnx", "model.int8.engine"}
    assert "earlier model.onnx" in stale["model.fp16.onnx"]
    assert stale["model.int8.engine"].startswith("made from model.int8.onnx, which is stale")
    for name, reason in stale.items():
        assert manifest.entry(name).stale == reason  # written into manifest.json
        assert any(line.startswith(f"warning: {name} is stale") for line in lines)

    report = run_verify(directory, count=8, log=lines.append)
    assert report.passed and {r.candidate.artifact for r in report.results} == {"model.onnx"}
    skipped = {(s.backend, s.artifact): s.reason for s in report.record.skipped}
    assert "model.fp16.onnx is stale" in skipped[("onnxruntime", "model.fp16.onnx")]
    assert "model.int8.onnx is stale" in skipped[("onnxruntime", "model.int8.onnx")]

    settings = BenchSettings(batch_sizes=(1,), warmup_ms=0, duration_s=0.05, min_iterations=2, threads=1)
    bench = run_bench(directory, settings, log=lines.append, progress=False)
    assert {r.artifact for r in bench.results} <= {None, "model.onnx"}
    assert any("model.int8.onnx is stale" in s.reason for s in bench.skipped)

    make_typed_onnx(directory, "fp16", log=lines.append)
    manifest = Manifest(directory)
    assert "model.fp16.onnx" not in manifest.stale() and manifest.entry("model.fp16.onnx").stale is None
    assert manifest.entry("model.fp16.onnx").parent_sha256 == manifest.entry("model.onnx").sha256
    assert set(manifest.stale()) == {"model.int8.onnx", "model.int8.engine"}


def test_the_report_names_stale_artifacts(tiny_export_template: Path, tmp_path: Path) -> None:
    directory = with_low_precision(tiny_export_template, tmp_path / "tiny")
    export_onnx(resolve_source(SourceOptions("resnext_tiny", num_classes=7)), directory, log=lambda _: None)
    markdown = write_report(directory, log=lambda _: None).path.read_text()
    assert "**Out of date:** model.fp16.onnx is stale, made from an earlier model.onnx" in markdown
    assert "**Out of date:** model.int8.onnx is stale" in markdown
