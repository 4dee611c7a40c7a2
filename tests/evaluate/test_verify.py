"""verify: real runners on the tiny ResNeXt's real artifacts, good and deliberately broken."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import copy_dir, edit_initializers, is_weight_scale
from onnx import numpy_helper

from resnext_deploy import source as source_module
from resnext_deploy.artifacts import Manifest, engine_file
from resnext_deploy.backends.registry import discover_runners
from resnext_deploy.cli import main
from resnext_deploy.environment import cuda_available
from resnext_deploy.errors import BadInputError
from resnext_deploy.evaluate import verify as verify_module
from resnext_deploy.evaluate.verify import run_verify, tolerance_overrides
from resnext_deploy.models import DEMO_ARCH
from resnext_deploy.parity import DEFAULT_TOLERANCES, Tolerance, compare
from resnext_deploy.source import ModelSource

RESULT_KEYS = {
    "backend",
    "precision",
    "artifact",
    "n",
    "max_abs",
    "mean_abs",
    "max_rel",
    "cosine_min",
    "cosine_mean",
    "top1_agreement",
    "top5_overlap",
    "nonfinite",
    "accuracy",
    "reference_accuracy",
    "passed",
}


@pytest.fixture
def art(low_precision_template: Path, tmp_path: Path) -> Path:
    return copy_dir(low_precision_template, tmp_path / "art")


def quiet(_: str) -> None:
    pass


def break_int8_scales(directory: Path, record: bool) -> None:
    """Multiply alternate per-channel weight scales by 4 and 1/4, as a damaged INT8 file would have them."""
    path = directory / "model.int8.onnx"
    changed = edit_initializers(
        path, is_weight_scale, lambda a: a * np.where(np.arange(a.size) % 2, 4.0, 0.25).reshape(a.shape)
    )
    assert changed > 5
    if record:
        manifest = Manifest(directory)
        entry = manifest.entry("model.int8.onnx")
        manifest.record("model.int8.onnx", "int8", parent_sha256=entry.parent_sha256, options=entry.options)


def test_discovery_covers_every_artifact_and_runner_here(art: Path) -> None:
    found = discover_runners(art)
    keys = {(c.backend, c.precision, c.device, c.artifact) for c in found.runnable}
    assert ("torch", "fp32", "cpu", None) in keys
    for precision, name in (("fp32", "model.onnx"), ("fp16", "model.fp16.onnx"), ("int8", "model.int8.onnx")):
        assert ("onnxruntime", precision, "cpu", name) in keys
    assert (("torch", "fp16", "cuda", None) in keys) == cuda_available()
    assert not found.skipped


def test_discovery_records_files_it_cannot_use_instead_of_dropping_them(art: Path) -> None:
    Manifest(art).forget("model.fp16.onnx")  # the file stays, unrecorded
    found = discover_runners(art, ("onnxruntime",), precisions=("fp16",))
    assert not found.runnable
    [skipped] = found.skipped
    assert skipped.artifact == "model.fp16.onnx"
    assert "not recorded in manifest.json" in skipped.skipped


def test_an_engine_that_cannot_run_here_is_a_skipped_entry(art: Path) -> None:
    from resnext_deploy.backends.tensorrt import probe

    if probe.tensorrt_status() is None:
        pytest.skip("TensorRT is usable here; this test is about machines without it")
    (art / engine_file("fp16")).write_bytes(b"not a plan")
    Manifest(art).record(engine_file("fp16"), "fp16")
    found = discover_runners(art, ("tensorrt",))
    [skipped] = found.skipped
    assert (skipped.backend, skipped.precision, skipped.artifact) == ("tensorrt", "fp16", "model.fp16.engine")
    assert skipped.skipped == probe.tensorrt_status()


def test_verify_passes_on_good_artifacts_and_writes_the_schema(art: Path, tmp_path: Path) -> None:
    extra = tmp_path / "out" / "copy.json"
    extra.parent.mkdir()
    assert main(["verify", "--dir", str(art), "--count", "40", "--batch-size", "16", "--json", str(extra)]) == 0
    data = json.loads((art / "verify.json").read_text())
    assert data == {**json.loads(extra.read_text()), "created": data["created"]}
    assert data["passed"] is True
    assert data["reference"]["n"] == 40 and data["reference"]["backend"] == "torch"
    manifest = Manifest(art)
    assert data["artifacts"] == {name: manifest.entry(name).sha256 for name in manifest.artifacts}
    assert {(r["backend"], r["precision"]) for r in data["results"]} >= {
        ("onnxruntime", "fp32"),
        ("onnxruntime", "fp16"),
        ("onnxruntime", "int8"),
    }
    for result in data["results"]:
        assert set(result) >= RESULT_KEYS
        assert result["n"] == 40 and result["passed"] and result["nonfinite"] == 0
        assert result["tolerance"] == asdict(DEFAULT_TOLERANCES[result["precision"]])
        assert result["accuracy"] is None  # synthetic input has no labels


def test_tampered_int8_scales_fail_and_name_the_candidate(art: Path, capsys: pytest.CaptureFixture[str]) -> None:
    break_int8_scales(art, record=True)  # re-recorded, so the sha256 check passes and parity must catch it
    assert main(["verify", "--dir", str(art), "--count", "32"]) == 1
    err = capsys.readouterr().err
    assert "onnxruntime-cpu:int8 (model.int8.onnx)" in err
    assert "onnxruntime-cpu:fp16" not in err.split("error:")[-1]
    data = json.loads((art / "verify.json").read_text())
    by_precision = {r["precision"]: r for r in data["results"]}
    assert data["passed"] is False
    assert not by_precision["int8"]["passed"] and by_precision["int8"]["failures"]
    assert by_precision["fp16"]["passed"] and by_precision["fp32"]["passed"]


def test_tolerance_flags_reach_the_verdict(art: Path) -> None:
    break_int8_scales(art, record=True)
    loose = ["--int8-cosine", "-1", "--int8-top1", "0", "--int8-max-accuracy-drop", "100"]
    assert main(["verify", "--dir", str(art), "--count", "16", *loose]) == 1
    for int8 in [r for r in json.loads((art / "verify.json").read_text())["results"] if r["precision"] == "int8"]:
        assert [f.split(" ")[:3] for f in int8["failures"]] == [["relative", "logit", "error"]]  # not relaxed away
    assert main(["verify", "--dir", str(art), "--count", "16", "--int8-top1", "1.5"]) == 3


def scale_logits(path: Path, factor: float) -> None:
    """The file's logits ``factor`` times larger: same direction (cosine 1), same winners, wrong scale."""
    model = onnx.load(str(path))
    output = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{name}_unscaled" if name == output else name for name in node.output]
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(factor, np.float32), "logit_factor"))
    model.graph.node.append(onnx.helper.make_node("Mul", [f"{output}_unscaled", "logit_factor"], [output]))
    onnx.save(model, str(path))


@pytest.mark.parametrize("factor", [1.5, 3.0])
def test_logits_at_the_wrong_scale_fail_verify(art: Path, factor: float) -> None:
    scale_logits(art / "model.int8.onnx", factor)
    manifest = Manifest(art)
    entry = manifest.entry("model.int8.onnx")
    manifest.record("model.int8.onnx", "int8", parent_sha256=entry.parent_sha256, options=entry.options)
    report = run_verify(art, count=32, log=quiet, backends=("onnxruntime",), precisions=("int8",))
    [int8] = [r for r in report.results if r.candidate.precision == "int8"]
    assert int8.parity.cosine_min > 0.99 and not int8.passed
    assert any(f.startswith("relative logit error") for f in int8.failures), int8.failures


def test_swapped_answers_at_a_larger_scale_fail_even_relaxed_and_unlabeled() -> None:
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((500, 10)).astype(np.float32) * 4
    candidate = reference * 3
    swapped = rng.choice(500, 99, replace=False)
    for row in swapped:  # the two best logits swap: a wrong answer on 99 of 500
        first, second = np.argsort(-candidate[row])[:2]
        candidate[row, [first, second]] = candidate[row, [second, first]]
    relaxed = tolerance_overrides({"int8_cosine": 0.5})["int8"]
    parity = compare(reference, candidate, relaxed)
    assert parity.top1_agreement == pytest.approx(401 / 500) and not parity.passed
    assert not parity.top1_decidable  # the 3x error dwarfs the margins: the decisive figure is undecidable
    assert any(f.startswith("raw top-1 agreement 80.20%") for f in parity.failures), parity.failures
    assert any(f.startswith("relative logit error") for f in parity.failures)


def test_near_tie_logits_with_a_small_error_are_judged_by_the_error() -> None:
    """Random weights: 1000 near-tied logits, INT8-sized noise flips winners; top-1 can tell nothing there."""
    rng = np.random.default_rng(1)
    reference = rng.standard_normal((32, 1000)).astype(np.float32) * 0.05
    candidate = reference + 0.004 * rng.standard_normal(reference.shape).astype(np.float32)
    parity = compare(reference, candidate, DEFAULT_TOLERANCES["int8"])
    assert not parity.top1_decidable and parity.rel_error < 0.15 and parity.passed, parity.failures
    scaled = compare(reference, candidate * 3, DEFAULT_TOLERANCES["int8"])
    assert not scaled.passed and any(f.startswith("raw top-1") for f in scaled.failures)


def test_no_decisive_sample_is_not_a_perfect_score() -> None:
    reference = np.tile(np.arange(10, dtype=np.float32), (40, 1))
    candidate = reference[:, ::-1] * 1.0  # every answer wrong, errors as large as the logits
    parity = compare(reference, candidate, Tolerance(top1_min=0.97))
    assert parity.decisive < 40 and not parity.top1_decidable and parity.top1 == 0.0 and not parity.passed


def test_a_recorded_file_that_does_not_load_fails_its_candidate(art: Path) -> None:
    (art / "model.fp16.onnx").write_bytes(b"not an onnx file")
    manifest = Manifest(art)
    manifest.record("model.fp16.onnx", "fp16")
    report = run_verify(art, count=4, log=quiet)
    assert not report
    [fp16] = [r for r in report.results if r.candidate.key == ("onnxruntime", "fp16", "cpu")]
    assert fp16.parity is None and "cannot load" in fp16.failures[0]
    assert json.loads((art / "verify.json").read_text())["results"][-1]["passed"] is False


def test_labeled_arrays_give_accuracy_and_its_delta(art: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    images = rng.standard_normal((24, 3, 32, 32), dtype=np.float32)
    data = tmp_path / "val.npz"
    np.savez(data, images=images, labels=rng.integers(0, 10, 24))
    report = run_verify(art, data=data, batch_size=10, log=quiet)
    assert report
    assert report.record.reference.labeled and report.record.reference.n == 24
    for result in report.results:
        assert result.parity.accuracy is not None
        assert result.parity.reference_accuracy == pytest.approx(report.record.reference.accuracy)


def test_the_demo_model_defaults_to_its_validation_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source_module, "DEMO_VAL", tmp_path)
    demo = ModelSource(DEMO_ARCH, 10, 16, None, None)
    other = ModelSource("resnext_tiny", 10, 32, None, None)
    assert verify_module.default_data(demo) == tmp_path
    assert verify_module.default_data(other) is None


def test_bad_tolerance_values_are_one_line_errors() -> None:
    with pytest.raises(BadInputError, match="--fp16-cosine"):
        tolerance_overrides({"fp16_cosine": 1.5})
    assert tolerance_overrides({"int8_top1": 0.5})["int8"].top1_min == 0.5
    assert tolerance_overrides({})["fp16"] == DEFAULT_TOLERANCES["fp16"]


def test_a_directory_without_an_export_is_refused(tmp_path: Path) -> None:
    assert main(["verify", "--dir", str(tmp_path / "nowhere")]) == 3
    assert main(["verify", "--dir", str(tmp_path)]) == 3
