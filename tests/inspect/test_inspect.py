"""resnext-deploy inspect: the planted outlier is ranked first in both views, a residual plant is named as the Add's
input, the demo's INT8 and FP16 stay above the documented SQNR, inspect.json follows its schema and round-trips,
and the report and pipeline read it back; inspecting never changes a file it reads."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
from helpers import QUICK_PIPELINE, TINY, calibration_of, cli, fails, load_script, noise_images, snapshot

from resnext_deploy.artifacts import Manifest
from resnext_deploy.data import open_dataset, take
from resnext_deploy.demo import DEMO_CALIB, DEMO_VAL, DEMO_WEIGHTS
from resnext_deploy.errors import BadInputError, ExitCode
from resnext_deploy.export import export_onnx
from resnext_deploy.inspect import INSPECT_JSON, INSPECT_MD, INSPECT_PNG, InspectRecord
from resnext_deploy.inspect.accuracy import fake_quantize, sqnr_db
from resnext_deploy.inspect.records import ArtifactAccuracy, ArtifactLatency, LayerTime, SiteRecord
from resnext_deploy.inspect.render import SQNR_FLOOR_DB
from resnext_deploy.inspect.run import read_inspect, run_inspect
from resnext_deploy.inspect.sites import Site, module_path
from resnext_deploy.precision.fp16 import fp16_model
from resnext_deploy.precision.graph import load_prepared
from resnext_deploy.precision.int8 import int8_model
from resnext_deploy.report import write_report
from resnext_deploy.schemas import load_schema
from resnext_deploy.source import SourceOptions, recorded_source, resolve_source

cases = load_script("int8_outlier_cases")

QUIET = {"log": lambda _m: None}
PLANTED = "/layer2/layer2.0/relu/Relu_output_0"  # layer2.0.bn1 -> ReLU, read by the grouped conv2
needs_demo = pytest.mark.skipif(not DEMO_WEIGHTS.exists(), reason="the demo weights are not built yet")


def conv_plant(state: dict) -> None:
    """8 channels of layer2.0's bn1 (before its ReLU) x300, the conv2 weights reading them /300: same function."""
    cases.plant(state, "layer2.0", "bn1", "conv2", list(range(0, 64, 8)), 300.0)


def typed_dir(directory: Path, plant: Callable[[dict], None] | None) -> Path:
    """The demo model (``plant``-ed) exported with an INT8 and an FP16 file made from minmax ranges of 32
    calibration images, recorded in the manifest as inspect finds them; no search, so the plant stays in INT8."""
    from safetensors.torch import load_file, save_file

    directory.mkdir(parents=True)
    checkpoint = DEMO_WEIGHTS
    if plant is not None:
        state = load_file(str(DEMO_WEIGHTS))
        plant(state)
        checkpoint = directory.parent / "planted.safetensors"
        save_file(state, str(checkpoint))
    export_onnx(resolve_source(SourceOptions("resnext11_digits", checkpoint)), directory, **QUIET)
    manifest = Manifest(directory)
    source = recorded_source(manifest)
    images = take(open_dataset(DEMO_CALIB, source.preprocessing, 32, num_classes=source.num_classes), 32).images
    prepared = load_prepared(directory / "model.onnx")
    calibration = calibration_of(prepared, images)
    parent = manifest.entry("model.onnx").sha256
    int8, _fp32, _plan = int8_model(load_prepared(directory / "model.onnx"), calibration)
    fp16, blocked = fp16_model(load_prepared(directory / "model.onnx"), calibration)
    for name, model, precision in (("model.int8.onnx", int8, "int8"), ("model.fp16.onnx", fp16, "fp16")):
        onnx.save(model, str(directory / name))
        manifest.record(name, precision, parent_sha256=parent, options={"fixture": "minmax, no search"})
    return directory


@pytest.fixture(scope="module")
def demo_typed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not DEMO_WEIGHTS.exists():
        pytest.skip("the demo weights are not built yet")
    return typed_dir(tmp_path_factory.mktemp("demo") / "art", None)


def test_module_paths_follow_the_exporters_scopes() -> None:
    assert module_path("/layer1/layer1.0/downsample/downsample.0/Conv") == "layer1.0.downsample.0"
    assert module_path("/layer2/layer2.0/conv2/Conv") == "layer2.0.conv2"
    assert module_path("/layer1/layer1.0/relu_1/Relu") == "layer1.0.relu"  # the second call of one module
    assert module_path("/fc/Gemm") == "fc"
    assert module_path("conv_by_hand") == "conv_by_hand"


def test_local_error_is_the_sites_own_rounding() -> None:
    """A value past the range is clipped, one under half a step flushed, the rest rounded to the step."""
    site = Site("t", "qdq", (), 0, "int8", scale=0.5)
    x = np.array([0.2, 1.26, 100.0, -1.0], np.float32)
    assert fake_quantize(x, site).tolist() == [0.0, 1.5, 63.5, -1.0]
    assert sqnr_db(100.0, 1.0) == pytest.approx(20.0)
    assert sqnr_db(1.0, 0.0) == 200.0


@pytest.mark.slow
@needs_demo
@pytest.mark.parametrize("kind", ["fp16", "int8"])
def test_the_demo_keeps_every_site_above_the_documented_sqnr(demo_typed: Path, kind: str) -> None:
    record = run_inspect(demo_typed, DEMO_VAL, artifacts=[f"model.{kind}.onnx"], backends=[], **QUIET)
    [accuracy] = record.accuracy
    assert len(accuracy.sites) >= 15
    assert accuracy.worst_sqnr_db is not None and accuracy.worst_sqnr_db >= SQNR_FLOOR_DB, accuracy.ranked("local")[0]
    assert accuracy.top1 >= 0.95


@pytest.mark.slow
@needs_demo
def test_a_planted_outlier_ranks_first_in_both_views(tmp_path: Path) -> None:
    directory = typed_dir(tmp_path / "art", conv_plant)
    before = snapshot(directory)
    record = run_inspect(directory, DEMO_VAL, artifacts=["model.int8.onnx"], backends=[], **QUIET)
    [accuracy] = record.accuracy
    local, accumulated = accuracy.ranked("local")[0], accuracy.ranked("accumulated")[0]
    assert local.tensor == accumulated.tensor == PLANTED, (local, accumulated)
    assert local.node == "/layer2/layer2.0/conv2/Conv" and local.module == "layer2.0.conv2"
    assert local.local_sqnr_db < SQNR_FLOOR_DB and local.flushed > 0.1  # the small channels flushed to zero
    assert local.fix is not None and local.fix.startswith("keep `/layer2/layer2.0/conv2/Conv` in FP16")
    assert local.alone_source == "measured" and local.alone_top1 is not None
    changed = {name for name, sha in snapshot(directory).items() if before.get(name) != sha}
    assert changed == {INSPECT_JSON, INSPECT_MD, INSPECT_PNG}  # the inspected files are untouched


@pytest.mark.slow
@needs_demo
def test_a_residual_plant_is_named_as_the_adds_input(tmp_path: Path) -> None:
    directory = typed_dir(tmp_path / "art", cases.shortcut)
    model = Manifest(directory).entry("model.onnx").sha256  # the INT8 search's saved sensitivity of the Add's site
    search = {"format": 3, "key": {"model": model, "method": "entropy"}, "scores": {"/layer2/layer2.0/Add": 0.25}}
    (directory / "int8_search.json").write_text(json.dumps(search))
    record = run_inspect(directory, DEMO_VAL, artifacts=["model.int8.onnx"], backends=[], **QUIET)
    [accuracy] = record.accuracy
    for view in ("local", "accumulated"):
        first = accuracy.ranked(view)[0]
        assert first.kind == "residual", (view, first)
        assert first.tensor == "/layer2/layer2.0/downsample/downsample.0/Conv_output_0"
        assert first.node == "/layer2/layer2.0/Add" and first.module == "layer2.0"
    assert (first.alone_source, first.alone_rel_error, first.alone_top1) == ("saved", 0.25, None)  # reused, not rerun
    second = accuracy.ranked("local")[1]
    assert second.alone_source == "measured" and second.alone_top1 is not None  # none saved: measured here


@pytest.mark.slow  # both typed files of the tiny model at 224 px
def test_inspect_json_follows_its_schema_and_round_trips(low_precision_template: Path, tmp_path: Path, capsys) -> None:
    """On the tiny model's foreign files (ONNX Runtime's float16 converter and QDQ quantizer), via the CLI."""
    import shutil

    directory = Path(shutil.copytree(low_precision_template, tmp_path / "tiny"))
    out = cli(capsys, "inspect", "--dir", directory, "--count", "4", "--backends", "none")
    assert out.code == 0, out.err
    assert "local view" in out.out and "model.int8.onnx" in out.out
    _validate(json.loads((directory / INSPECT_JSON).read_text()))
    record = read_inspect(directory)
    assert record is not None and InspectRecord.from_dict(record.to_dict()) == record
    assert {a.artifact for a in record.accuracy} == {"model.fp16.onnx", "model.int8.onnx"}
    assert all(site.module for accuracy in record.accuracy for site in accuracy.sites)
    report = write_report(directory, **QUIET).path.read_text()
    worst = record.accuracy[-1].ranked("local")[0]
    assert "## Where" in report and f"worst site `{worst.node}`" in report


def _validate(data: dict) -> None:
    schema = load_schema("inspect")
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(data, schema, cls=jsonschema.Draft202012Validator)


def test_records_round_trip_and_an_infinite_error_is_null() -> None:
    site = SiteRecord("t", "/a/Conv", "a", "qdq", "int8", 3, ("/a/Conv",), 0.5, 0.5, 0.0, 9.0, 0.0, 0.1, 0.2)
    broken = replace(site, tensor="u", added=math.inf, local_rank=1, accumulated_rank=1, local_sqnr_db=-200.0)
    layer = LayerTime("conv", ("/a/Conv", "/a/Relu"), "Convolution", "jit_avx512_I8", "I8", 0.2, 3, True, False)
    latency = ArtifactLatency("model.int8.onnx", "int8", "openvino", 1, 20, (layer,), 0.25, None)
    record = InspectRecord("now", "images", 4, [ArtifactAccuracy("model.int8.onnx", "int8", 0.5, (site, broken))])
    record.latency.append(latency)
    data = record.to_dict()
    _validate(data)
    assert data["accuracy"][0]["sites"][1]["added"] is None  # JSON has no infinity
    back = InspectRecord.from_dict(json.loads(json.dumps(data)))
    assert back.latency == record.latency and back.accuracy[0].sites[0] == site
    assert back.latency[0].int8_weighted == 1 and back.accuracy[0].ranked("local")[0].tensor == "u"
    with pytest.raises(BadInputError, match="run `resnext-deploy inspect` again"):
        InspectRecord.from_dict({**data, "accuracy": [{"artifact": "x"}]})
    with pytest.raises(BadInputError, match=r"InspectRecord.images: expected an integer, got str\)"):
        InspectRecord.from_dict({**data, "images": "4"})  # a hand edit names its field


def test_inspect_refuses_what_it_cannot_do(low_precision_template: Path, tmp_path: Path, capsys) -> None:
    import shutil

    directory = Path(shutil.copytree(low_precision_template, tmp_path / "tiny"))
    fails(cli(capsys, "inspect", "--dir", directory, "--backends", "tensorflow"), ExitCode.BAD_INPUT, "openvino")
    fails(cli(capsys, "inspect", "--dir", directory, "--artifacts", "model.x.onnx"), ExitCode.BAD_INPUT, "model.x")
    assert not (directory / INSPECT_JSON).exists()


@pytest.mark.slow  # a whole (tiny) pipeline
def test_pipeline_with_inspect_ends_with_a_where_section(tmp_path: Path, capsys) -> None:
    data = noise_images(tmp_path / "images", 48)
    directory = tmp_path / "o"
    args = ["--dir", directory, "--calib-dir", data, *QUICK_PIPELINE, "--count", "8", "--inspect"]
    cli(capsys, "pipeline", *TINY, *args)
    record = read_inspect(directory)
    assert record is not None and {a.artifact for a in record.accuracy} == {"model.fp16.onnx", "model.int8.onnx"}
    assert "## Where" in (directory / "report.md").read_text()


def test_a_malformed_inspect_json_stops_the_report_before_it_writes(tiny_dir: Path) -> None:
    (tiny_dir / INSPECT_JSON).write_text(json.dumps({"created": "now"}))
    with pytest.raises(BadInputError, match="inspect.json is malformed"):
        write_report(tiny_dir, **QUIET)
    assert not (tiny_dir / "report.md").exists() and not (tiny_dir / "report.json").exists()
