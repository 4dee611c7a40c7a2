"""Every record a step writes into DIR reads back as the record it was: manifest.json entry by entry, engine manifests.

One directory with every kind of entry the manifest holds (model.onnx, the FP16 and INT8 files made by the
precision step, ONNX Runtime's INT8 variant, an INT8 engine recorded as build-trt records one): each entry in the
file is exactly its record encoded, decodes back to it, and its options decode as the making step's own record,
which is what decides whether the file is current.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import STAND_IN_GPU, noise_images

from resnext_deploy.artifacts import (
    MANIFEST_NAME,
    ONNX_FILES,
    ORT_INT8_FILE,
    ArtifactEntry,
    EngineProfile,
    Manifest,
    engine_file,
)
from resnext_deploy.backends.tensorrt.build import engine_manifest_body, record_engine
from resnext_deploy.backends.tensorrt.manifest import engine_manifest_path, read_engine_manifest
from resnext_deploy.backends.tensorrt.options import BuildOptions, EngineOptions
from resnext_deploy.export import ExportOptions
from resnext_deploy.parity import Tolerance
from resnext_deploy.precision.options import PrecisionOptions
from resnext_deploy.precision.records import Int8Options, Int8RuntimeOptions, TypedOptions
from resnext_deploy.precision.typed import make_typed_onnx
from resnext_deploy.serde import RecordError, decode, encode

ENGINE = engine_file("int8")
# Each entry's options record, and a change to it that makes the file out of date.
OPTIONS = {
    ONNX_FILES["fp32"]: (ExportOptions, {"opset": 12}),
    ONNX_FILES["fp16"]: (TypedOptions, {"fp16_data_max": 1.0}),
    ONNX_FILES["int8"]: (Int8Options, {"exclude": ("/stem/conv/Conv",)}),
    ORT_INT8_FILE: (Int8RuntimeOptions, {"activation_type": "int8"}),
    ENGINE: (EngineOptions, {"tensorrt": "10.14.1.48"}),
}


@pytest.fixture(scope="module")
def every_entry(tiny_export_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model.onnx, FP16 and INT8 files made by the precision step (with ONNX Runtime's variant), an INT8 engine."""
    directory = Path(shutil.copytree(tiny_export_template, tmp_path_factory.mktemp("records") / "tiny"))
    calib = noise_images(tmp_path_factory.mktemp("calib"), 24)
    tolerances = {"fp16": Tolerance(cosine_min=0.98), "int8": Tolerance(cosine_min=0.98)}
    options = PrecisionOptions(calib_source=calib, min_check=8, tolerances=tolerances)
    for precision in ("fp16", "int8"):
        make_typed_onnx(directory, precision, options, log=lambda _m: None)
    manifest = Manifest(directory)
    onnx_entry = manifest.entry(ONNX_FILES["int8"])
    assert onnx_entry is not None and manifest.entry(ORT_INT8_FILE) is not None
    build = BuildOptions(min_batch=2, opt_batch=4, max_batch=8, hardware_compat="ampere+")
    version, gpu, profile_shapes = "10.13.3.9", STAND_IN_GPU, ((2, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))
    profile = EngineProfile("input", *profile_shapes)
    body = engine_manifest_body(onnx_entry, ENGINE, b"plan bytes", "int8", build, version, gpu, profile, 12.5)
    recorded = EngineOptions(build, version, gpu.compute_capability)
    record_engine(manifest, directory / ENGINE, b"plan bytes", body, recorded)
    return directory


def test_the_manifest_holds_every_kind_of_entry(every_entry: Path) -> None:
    assert list(Manifest(every_entry).artifacts) == list(OPTIONS)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_an_entry_is_its_record_in_the_file_and_reads_back_as_it(every_entry: Path, name: str) -> None:
    written = json.loads((every_entry / MANIFEST_NAME).read_text())["artifacts"][name]
    entry = Manifest(every_entry).entry(name)
    assert entry is not None and encode(entry) == written  # the record is the file's layout, field for field
    assert decode(ArtifactEntry, written) == entry
    Manifest(every_entry).save()  # a rewrite keeps the entry as it was
    assert Manifest(every_entry).entry(name) == entry


@pytest.mark.parametrize("name", list(OPTIONS))
def test_the_options_are_the_making_steps_record_and_decide_currency(every_entry: Path, name: str) -> None:
    kind, change = OPTIONS[name]
    manifest = Manifest(every_entry)
    entry = manifest.entry(name)
    assert entry is not None
    options = entry.options_as(kind)
    assert type(options) is kind and json.loads(json.dumps(encode(options))) == entry.options
    assert manifest.is_current(name, entry.parent_sha256, options)
    assert not manifest.is_current(name, entry.parent_sha256, replace(options, **change))
    others = [k for n, (k, _) in OPTIONS.items() if n != name and not issubclass(k, kind) and not issubclass(kind, k)]
    for other in others:  # another step's record does not pass for this one
        with pytest.raises(RecordError):
            entry.options_as(other)


def test_the_typed_records_hold_what_the_steps_decided(every_entry: Path) -> None:
    manifest = Manifest(every_entry)
    int8 = manifest.entry(ONNX_FILES["int8"])
    ort = manifest.entry(ORT_INT8_FILE)
    assert int8 is not None and ort is not None
    assert int8.calibration is not None and ort.calibration == int8.calibration  # one calibration, both files
    assert int8.options_as(Int8Options).calibration.method == int8.calibration.method or int8.search is not None
    assert ort.placement == "onnxruntime" and ort.parent_sha256 == int8.sha256
    runtime = ort.options_as(Int8RuntimeOptions)
    assert runtime.for_runtime("onnxruntime", runtime.activation_type) == runtime
    fp16 = manifest.entry(ONNX_FILES["fp16"])
    assert fp16 is not None and fp16.options_as(TypedOptions).calibration.method is None
    assert not fp16.quantized_nodes and int8.quantized_nodes  # only the INT8 files quantize


def test_the_engine_manifest_is_its_record_and_carries_the_calibration(every_entry: Path) -> None:
    path = every_entry / ENGINE
    written = json.loads(engine_manifest_path(path).read_text())
    body = read_engine_manifest(path)
    assert encode(body) == written and decode(type(body), written) == body
    assert body.profile.batches == (2, 4, 8) and body.gpu_info == STAND_IN_GPU
    assert body.build_options.hardware_compat == "ampere+"
    int8 = Manifest(every_entry).entry(ONNX_FILES["int8"])
    assert int8 is not None and int8.calibration is not None
    assert body.calibration_fingerprint == int8.calibration.fingerprint
    engine = Manifest(every_entry).entry(ENGINE)
    assert (
        engine is not None
        and engine.profile == body.profile
        and engine.gpu == STAND_IN_GPU.gpu
        and encode(body)["gpu"] == STAND_IN_GPU.gpu
    )
    assert engine.engine_manifest == engine_manifest_path(path).name and engine.parent_sha256 == int8.sha256


def _contains(new: object, old: object) -> bool:
    """``old``'s keys are all in ``new`` with the same values (fields added since may be there too)."""
    if isinstance(old, dict):
        return isinstance(new, dict) and all(key in new and _contains(new[key], value) for key, value in old.items())
    return new == old


def test_a_manifest_written_before_the_records_reads_as_them(tmp_path: Path) -> None:
    """The manifest the previous version wrote for the tiny model (export, FP16, INT8 and its ORT variant).

    Its entries decode as records, their options as each step's record, and what the records write again keeps
    every value it had: a directory made before stays current (``is_current`` compares the decoded options).
    """
    shutil.copy(Path(__file__).parent / "data" / "manifest_before_records.json", tmp_path / MANIFEST_NAME)
    old = json.loads((tmp_path / MANIFEST_NAME).read_text())["artifacts"]
    manifest = Manifest(tmp_path)
    assert list(manifest.artifacts) == list(old)
    for name, recorded in old.items():
        entry = manifest.entry(name)
        assert entry is not None and _contains(json.loads(json.dumps(encode(entry))), recorded)
        options = entry.options_as(OPTIONS[name][0])
        assert _contains(json.loads(json.dumps(encode(options))), recorded["options"])
