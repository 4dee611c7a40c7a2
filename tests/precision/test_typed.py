"""model.fp16.onnx and model.int8.onnx: graph structure TensorRT needs, parity in ONNX Runtime, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import noise_images, strip_activation_qdq
from onnx import TensorProto, numpy_helper

from resnext_deploy.artifacts import ORT_INT8_FILE, Manifest, sha256_file
from resnext_deploy.backends.onnxruntime import OnnxRuntimeRunner
from resnext_deploy.demo import DEMO_WEIGHTS
from resnext_deploy.errors import BadInputError, VerificationError
from resnext_deploy.evaluate.verify import run_verify
from resnext_deploy.export import export_onnx
from resnext_deploy.parity import DEFAULT_TOLERANCES, Tolerance, compare
from resnext_deploy.precision.calibration import calibrate
from resnext_deploy.precision.fp16 import fp16_model
from resnext_deploy.precision.graph import load_prepared
from resnext_deploy.precision.int8 import WEIGHT_MAX, activation_scale, int8_model, qdq_plan, quantize_weight
from resnext_deploy.precision.options import PrecisionOptions
from resnext_deploy.precision.split import split_datasets
from resnext_deploy.precision.typed import check_tolerance, make_typed_onnx
from resnext_deploy.source import SourceOptions, resolve_source

RELAXED = Tolerance(cosine_min=0.98)  # random weights: structure and cosine are what these tests are about
QUIET = {"log": lambda _m: None}
TINY = {"int8": Tolerance(cosine_min=0.98, rel_error_max=0.2)}  # random weights on noise, 8 samples


def opts(calib_source: Path | None = None, tolerance: Tolerance | None = None, **kwargs) -> PrecisionOptions:
    """Precision options for the tiny fixtures: a small check set, one tolerance for both precisions."""
    kwargs.setdefault("min_check", 8)
    tolerances = {} if tolerance is None else {"fp16": tolerance, "int8": tolerance}
    return PrecisionOptions(calib_source=calib_source, tolerances=tolerances, **kwargs)


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return noise_images(tmp_path_factory.mktemp("calib"), 24)


def _graph_maps(model):
    producers = {name: node for node in model.graph.node for name in node.output}
    initializers = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    return producers, initializers


def _attr(node, name: str, default=None):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _skip_casts(producers: dict, name: str):
    """The node behind ``name``, looking through Casts (an Add kept in FP32 takes a Conv's output via a Cast)."""
    node = producers[name]
    while node.op_type == "Cast":
        node = producers[node.input[0]]
    return node


def assert_explicit_int8(model, excluded: frozenset[str] = frozenset()) -> None:
    """What TensorRT's explicit quantization wants, checked on the graph itself."""
    graph = model.graph
    producers, initializers = _graph_maps(model)
    for value in (*graph.input, *graph.output):
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT, f"{value.name} is not float32"
    assert not any(a.dtype == np.int32 for a in initializers.values()), "an INT32 (quantized bias) initializer"
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero_point, scale = initializers[node.input[2]], initializers[node.input[1]]
            assert zero_point.dtype == np.int8 and not zero_point.any(), f"{node.name}: zero point not int8 0"
            assert np.all(np.isfinite(scale)) and np.all(scale > 0), f"{node.name}: bad scale"
    convs = [n for n in graph.node if n.op_type == "Conv" and n.name not in excluded]
    gemms = [n for n in graph.node if n.op_type == "Gemm" and n.name not in excluded]
    assert convs and gemms
    for node in convs + gemms:
        data, weight = producers.get(node.input[0]), producers.get(node.input[1])
        assert data is not None and data.op_type == "DequantizeLinear", f"{node.name}: data input has no DQ"
        assert weight is not None and weight.op_type == "DequantizeLinear", f"{node.name}: weight has no DQ"
        assert producers[data.input[0]].op_type == "QuantizeLinear"
        assert data.input[1] in initializers and initializers[data.input[1]].size == 1, "activation not per-tensor"
        q = initializers[weight.input[0]]
        assert q.dtype == np.int8 and np.abs(q.astype(np.int32)).max() <= WEIGHT_MAX, f"{node.name}: not 7-bit"
        assert _attr(weight, "axis") == 0, f"{node.name}: weight scales not on axis 0"
        assert initializers[weight.input[1]].shape == (q.shape[0],), f"{node.name}: weight scales not per channel"
        if len(node.input) > 2:  # the bias is a float initializer, no Q/DQ anywhere near it
            assert node.input[2] in initializers and initializers[node.input[2]].dtype.kind == "f"
    residual = 0
    for node in graph.node:
        if node.op_type == "Add":
            kinds = sorted(_skip_casts(producers, name).op_type for name in node.input)
            assert kinds == ["Conv", "DequantizeLinear"], f"{node.name}: residual Add inputs {kinds}"
            residual += 1
    assert residual > 0
    for pool in (n for n in graph.node if n.op_type == "MaxPool"):  # an ImageNet stem: pooled in INT8
        assert producers[pool.input[0]].op_type == "DequantizeLinear", f"{pool.name}: input has no DQ"


def test_int8_graph_is_explicit_tensorrt_style_and_recorded(tiny_dir: Path, calib_dir: Path) -> None:
    result = make_typed_onnx(tiny_dir, "int8", opts(calib_dir, calib_count=16, tolerance=RELAXED), **QUIET)
    assert result.path == tiny_dir / "model.int8.onnx" and not result.reused
    model = onnx.load(str(result.path))
    onnx.checker.check_model(model, full_check=True)
    assert_explicit_int8(model)
    producers, initializers = _graph_maps(model)
    # high precision fp16: activation scales, Conv biases and DQ outputs are float16
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert initializers[producers[conv.input[0]].input[1]].dtype == np.float16
    assert initializers[conv.input[2]].dtype == np.float16
    assert result.parity is not None and result.parity.cosine_min >= 0.98
    assert len(result.quantized_nodes) == sum(n.op_type in ("Conv", "Gemm") for n in model.graph.node)

    entry = Manifest(tiny_dir).entry("model.int8.onnx")
    parent = Manifest(tiny_dir).entry("model.onnx")
    assert entry.parent_sha256 == parent.sha256 and entry.precision == "int8"
    assert entry.calibration.method == "entropy" and entry.calibration.count == 16
    assert entry.parity["cosine_min"] == result.parity.cosine_min and entry.parity["passed"]
    assert entry.options["high_precision"] == "fp16"
    assert entry.options["weight_max"] == WEIGHT_MAX == 63  # the 7-bit weights are on record
    assert {p.key: p.value for p in model.metadata_props}["resnext_deploy.weight_max"] == "63"
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": np.zeros((3, 3, 32, 32), np.float32)})[0]
    assert out.dtype == np.float32 and out.shape == (3, 10)


def test_int8_with_fp32_high_precision_and_exclude(tiny_dir: Path, calib_dir: Path) -> None:
    excluded = "/layer2/*/conv2/Conv"
    options = opts(calib_dir, calib_count=16, exclude=[excluded], high_precision="fp32", tolerance=RELAXED)
    result = make_typed_onnx(tiny_dir, "int8", options, **QUIET)
    model = onnx.load(str(result.path))
    skipped = frozenset(n.name for n in model.graph.node if n.name == "/layer2/layer2.0/conv2/Conv")
    assert skipped, "the excluded node should still be in the graph"
    assert_explicit_int8(model, excluded=skipped)
    producers, initializers = _graph_maps(model)
    node = next(n for n in model.graph.node if n.name in skipped)
    assert node.input[1] in initializers and node.input[0] not in {
        o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output
    }
    assert not any(a.dtype == np.float16 for a in initializers.values())
    with pytest.raises(BadInputError, match="matches no node"):
        make_typed_onnx(tiny_dir, "int8", opts(calib_dir, calib_count=16, exclude=["/nothing*"]), **QUIET)


def test_excluding_everything_is_not_int8(tiny_dir: Path, calib_dir: Path) -> None:
    with pytest.raises(BadInputError, match="no activation is left in INT8"):
        make_typed_onnx(tiny_dir, "int8", opts(calib_dir, calib_count=16, exclude=["*"], search=False), **QUIET)
    assert not (tiny_dir / "model.int8.onnx").exists()


def test_verify_fails_int8_that_quantizes_less_than_recorded_or_nothing(tiny_dir: Path, calib_dir: Path) -> None:
    result = make_typed_onnx(tiny_dir, "int8", opts(calib_dir, calib_count=16, tolerance=RELAXED), **QUIET)
    entry = Manifest(tiny_dir).entry("model.int8.onnx")
    assert set(entry.quantized_tensors) and set(entry.quantized_nodes) == set(result.quantized_nodes)
    Manifest(tiny_dir).forget(ORT_INT8_FILE)  # ONNX Runtime runs TensorRT's file, as in a directory without its own
    (tiny_dir / ORT_INT8_FILE).unlink()
    check = dict(count=8, log=QUIET["log"], backends=("onnxruntime",), precisions=("int8",), tolerances=TINY)
    assert run_verify(tiny_dir, **check)
    [removed] = strip_activation_qdq(result.path, lambda tensor: tensor == "/Flatten_output_0")
    Manifest(tiny_dir).update("model.int8.onnx", sha256=sha256_file(result.path))
    [int8] = run_verify(tiny_dir, **check).results
    assert not int8.passed
    assert any("1 of the" in f and "activation tensors" in f and removed in f for f in int8.failures), int8.failures
    assert any("layers its manifest records are not INT8 (/fc/Gemm)" in f for f in int8.failures), int8.failures

    assert strip_activation_qdq(result.path)  # no activation Q/DQ at all: a float file with INT8 weights
    Manifest(tiny_dir).update("model.int8.onnx", sha256=sha256_file(result.path))
    [int8] = run_verify(tiny_dir, **check).results
    assert int8.parity.cosine_min > 0.99 and not int8.passed  # as close to FP32 as the INT8 file, yet not INT8
    assert any("quantizes no activation" in f for f in int8.failures), int8.failures


def test_a_candidate_that_barely_passes_a_small_check_is_not_written(tiny_dir: Path, calib_dir: Path) -> None:
    """The check's minimum cosine on a few images overstates verify's on many: the margin turns it down."""
    found = make_typed_onnx(tiny_dir, "int8", opts(calib_dir, calib_count=16, tolerance=RELAXED), **QUIET)
    small = found.parity.cosine_min
    images = np.random.default_rng(5).standard_normal((256, 3, 32, 32)).astype(np.float32)
    np.save(tiny_dir.parent / "large.npy", images)
    large = OnnxRuntimeRunner(found.path, "int8")(images)
    reference = OnnxRuntimeRunner(tiny_dir / "model.onnx")(images)
    barely = Tolerance(cosine_min=small - 1e-5)  # passes the 8-image check without a margin
    assert not compare(reference, large, barely).passed  # and fails on 256 images
    Manifest(tiny_dir).forget("model.int8.onnx")
    (tiny_dir / "model.int8.onnx").unlink()
    with pytest.raises(VerificationError, match="keeps a margin: half of each allowance"):
        make_typed_onnx(tiny_dir, "int8", opts(calib_dir, calib_count=16, tolerance=barely, search=False), **QUIET)
    assert not (tiny_dir / "model.int8.onnx").exists()
    tight, note = check_tolerance(DEFAULT_TOLERANCES["int8"], 32)
    assert tight.cosine_min == pytest.approx(0.995) and tight.rel_error_max == pytest.approx(0.075) and note
    assert check_tolerance(DEFAULT_TOLERANCES["int8"], 500) == (DEFAULT_TOLERANCES["int8"], "")


def test_fp16_graph_and_parity(tiny_dir: Path) -> None:
    messages: list[str] = []
    result = make_typed_onnx(tiny_dir, "fp16", opts(), log=messages.append)
    assert any("synthetic" in m for m in messages)  # no data given: says where the ranges came from
    model = onnx.load(str(result.path))
    for value in (*model.graph.input, *model.graph.output):
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT
    _, initializers = _graph_maps(model)
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            assert all(initializers[name].dtype == np.float16 for name in node.input[1:])
    assert result.fp32_nodes == ()
    assert result.parity.cosine_min >= 0.9999 and result.parity.top1_agreement == 1.0
    assert Manifest(tiny_dir).entry("model.fp16.onnx").parity["passed"]


def _bump(calibration, tensor: str, value: float) -> None:
    calibration.tensors[tensor].max = value


def test_fp16_keeps_overflowing_nodes_in_fp32(tiny_dir: Path) -> None:
    dataset = split_datasets(resolve_source(SourceOptions("resnext_tiny")), "fp16", None, 4)[0]
    calibration = calibrate(tiny_dir, tiny_dir / "model.onnx", dataset, **QUIET)
    # the ReLU after conv1 saw 5000: conv1's output (not recorded: only the ReLU reads it) was as large
    _bump(calibration, "/layer2/layer2.0/relu/Relu_output_0", 5000.0)
    model, blocked = fp16_model(load_prepared(tiny_dir / "model.onnx"), calibration)
    assert set(blocked) == {"/layer2/layer2.0/conv1/Conv", "/layer2/layer2.0/relu/Relu", "/layer2/layer2.0/conv2/Conv"}
    producers, initializers = _graph_maps(model)
    conv = next(n for n in model.graph.node if n.name == "/layer2/layer2.0/conv1/Conv")
    assert initializers[conv.input[1]].dtype == np.float32 and producers[conv.input[0]].op_type == "Cast"
    relu = next(n for n in model.graph.node if n.name == "/layer2/layer2.0/relu/Relu")
    assert producers[relu.input[0]].name == conv.name  # FP32 to FP32 directly, never through float16
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    reference = ort.InferenceSession(str(tiny_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": x})[0], reference.run(None, {"input": x})[0], atol=2e-2)


def test_int8_overflowing_conv_gets_its_own_fp32_qdq(tiny_dir: Path, calib_dir: Path) -> None:
    dataset = split_datasets(resolve_source(SourceOptions("resnext_tiny")), "int8", calib_dir, 8, min_check=8)[0]
    calibration = calibrate(tiny_dir, tiny_dir / "model.onnx", dataset, **QUIET)
    _bump(calibration, "/layer2/layer2.0/downsample/downsample.0/Conv_output_0", 5000.0)
    model, fp32_nodes, _ = int8_model(load_prepared(tiny_dir / "model.onnx"), calibration)
    assert "/layer2/layer2.0/downsample/downsample.0/Conv" in fp32_nodes
    onnx.checker.check_model(model, full_check=True)
    assert_explicit_int8(model)
    producers, initializers = _graph_maps(model)
    conv = next(n for n in model.graph.node if n.name == "/layer2/layer2.0/downsample/downsample.0/Conv")
    sibling = next(n for n in model.graph.node if n.name == "/layer2/layer2.0/conv1/Conv")
    assert initializers[producers[conv.input[0]].input[1]].dtype == np.float32  # own FP32 pair
    assert initializers[producers[conv.input[1]].input[1]].dtype == np.float32
    assert initializers[producers[sibling.input[0]].input[1]].dtype == np.float16  # same tensor, FP16 pair
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": np.zeros((1, 3, 32, 32), np.float32)}
    )


def test_7_bit_weights_keep_avx2_int8_pair_sums_from_saturating() -> None:
    """CPUs without VNNI sum u8 x s8 products in pairs into an int16 (``vpmaddubsw``); OpenVINO makes the
    signed activations u8 by adding 128, so a pair can reach 2 * 255 * max|q|, which must fit in 32767."""
    assert 2 * 255 * WEIGHT_MAX <= np.iinfo(np.int16).max < 2 * 255 * 127
    weight = np.random.default_rng(1).standard_normal((8, 4, 3, 3)).astype(np.float32)
    q, scale = quantize_weight(weight, 0)
    assert np.abs(q.astype(np.int32)).max(axis=(1, 2, 3)).tolist() == [WEIGHT_MAX] * 8  # each channel's range used
    full, full_scale = quantize_weight(weight, 0, qmax=127)
    np.testing.assert_allclose(scale, full_scale * 127 / WEIGHT_MAX, rtol=1e-6)  # the scale is ~doubled


def test_qdq_sites_include_residual_adds_and_exclusion_never_moves_a_pair(tiny_dir: Path, calib_dir: Path) -> None:
    dataset = split_datasets(resolve_source(SourceOptions("resnext_tiny")), "int8", calib_dir, 8, min_check=8)[0]
    calibration = calibrate(tiny_dir, tiny_dir / "model.onnx", dataset, **QUIET)
    prepared = load_prepared(tiny_dir / "model.onnx")
    full = qdq_plan(prepared, calibration)
    add, main = "/layer2/layer2.0/Add", "/layer2/layer2.0/conv3/Conv"
    assert add in full.residual_adds and full.sites == [*full.weighted, *full.residual_adds]
    shortcut = "/layer2/layer2.0/downsample/downsample.0/Conv_output_0"
    assert (add, 1) in full.consumers[shortcut] or (add, 0) in full.consumers[shortcut]
    without_main = qdq_plan(prepared, calibration, exclude=(main,))
    assert main not in without_main.weighted and add in without_main.residual_adds
    assert without_main.consumers[shortcut] == full.consumers[shortcut]  # the Add's pair stays on the shortcut
    alone = qdq_plan(prepared, calibration, only=[add])
    assert alone.weighted == [] and alone.residual_adds == [add]
    assert alone.consumers == {shortcut: [slot for slot in full.consumers[shortcut] if slot[0] == add]}


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_dead_channels_never_get_a_zero_or_infinite_scale(dtype) -> None:
    weight = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    weight[2] = 0.0
    q, scale = quantize_weight(weight, 0, dtype)
    assert scale.dtype == dtype and np.all(scale > 0) and np.all(np.isfinite(1.0 / scale.astype(np.float32)))
    assert not q[2].any() and np.abs(q.astype(np.int32)).max() == WEIGHT_MAX
    restored = q.astype(np.float32) * scale.astype(np.float32)[:, None, None, None]
    assert np.abs(restored - weight).max() <= scale.astype(np.float32).max() / 2 + 1e-6
    for amax in (0.0, 1e-30):
        assert float(activation_scale(amax, dtype)) > 0 and np.isfinite(1.0 / float(activation_scale(amax, dtype)))


def test_resume_reuse_and_option_changes(tiny_dir: Path, calib_dir: Path) -> None:
    args = dict(calib_count=12, tolerance=RELAXED)
    first = make_typed_onnx(tiny_dir, "int8", opts(calib_dir, **args), **QUIET)
    messages: list[str] = []
    again = make_typed_onnx(tiny_dir, "int8", opts(calib_dir, **args), log=messages.append)
    assert again.reused and "up to date" in messages[0] and again.parity == first.parity
    other = make_typed_onnx(tiny_dir, "int8", opts(calib_dir, calib_method="minmax", **args), **QUIET)
    assert not other.reused
    calibration = json.loads((tiny_dir / "calibration.json").read_text())
    assert calibration["method"] == "minmax"
    fp32 = make_typed_onnx(tiny_dir, "fp32", **QUIET)
    assert fp32.path == tiny_dir / "model.onnx" and fp32.precision == "fp32"


@pytest.mark.slow  # a failing INT8 build tries every calibration method and the search
def test_failed_check_writes_nothing(tiny_dir: Path, calib_dir: Path) -> None:
    impossible = Tolerance(cosine_min=1.5)
    with pytest.raises(VerificationError, match="no model.int8.onnx was written"):
        make_typed_onnx(tiny_dir, "int8", opts(calib_dir, calib_count=8, tolerance=impossible), **QUIET)
    assert not (tiny_dir / "model.int8.onnx").exists()
    assert Manifest(tiny_dir).entry("model.int8.onnx") is None
    assert not [p for p in tiny_dir.iterdir() if p.name.endswith(".partial")]


def test_missing_export_and_missing_int8_data(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="resnext-deploy export"):
        make_typed_onnx(tmp_path, "fp16", **QUIET)
    with pytest.raises(BadInputError, match="pass --calib-dir"):
        make_typed_onnx(tiny_dir, "int8", opts(), **QUIET)
    assert not (tiny_dir / "model.int8.onnx").exists() and not (tiny_dir / "calibration.json").exists()
    with pytest.raises(BadInputError, match="unknown precision"):
        make_typed_onnx(tiny_dir, "int4", **QUIET)


@pytest.mark.slow  # an INT8 build of the demo model
@pytest.mark.skipif(not DEMO_WEIGHTS.exists(), reason="the demo weights are not built yet")
def test_demo_model_uses_its_bundled_data(tmp_path: Path) -> None:
    export_onnx(resolve_source(), tmp_path, **QUIET)
    result = make_typed_onnx(tmp_path, "int8", **QUIET)
    parity = result.parity
    assert parity.accuracy is not None and parity.reference_accuracy >= 97.0
    assert parity.reference_accuracy - parity.accuracy <= 1.0 and parity.top1_agreement >= 0.98
    assert "calib" in Manifest(tmp_path).entry("model.int8.onnx").calibration.description


@pytest.mark.slow
def test_resnext50_int8_and_fp16(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The done-means check: ResNeXt-50 (random weights), 64 calibration images, real ORT sessions."""
    images = noise_images(tmp_path_factory.mktemp("noise"), 80, classes=1, size=64)
    export_onnx(resolve_source(SourceOptions("resnext50_32x4d")), tmp_path, **QUIET)
    int8 = make_typed_onnx(tmp_path, "int8", opts(images, calib_count=64, tolerance=RELAXED, min_check=16), **QUIET)
    assert_explicit_int8(onnx.load(str(int8.path)))
    assert int8.parity.cosine_min >= 0.98
    fp16 = make_typed_onnx(tmp_path, "fp16", opts(images, calib_count=64, min_check=16), **QUIET)
    model = onnx.load(str(fp16.path))
    weights = [i for i in model.graph.initializer if len(i.dims) == 4]
    assert weights and all(i.data_type == TensorProto.FLOAT16 for i in weights)
    assert fp16.parity.cosine_min >= 0.9999
    shutil.rmtree(tmp_path)
