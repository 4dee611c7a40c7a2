"""Precision on users' own models: FP16 with FP32 head or tail, the near-tie-robust check, the INT8 search."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import noise_images
from onnx import TensorProto
from safetensors.torch import load_file, save_file

from resnext_deploy.artifacts import Manifest
from resnext_deploy.cli import main
from resnext_deploy.demo import DEMO_CALIB, DEMO_VAL, DEMO_WEIGHTS
from resnext_deploy.errors import BadInputError, ExitCode, VerificationError
from resnext_deploy.export import export_onnx
from resnext_deploy.inspect import accuracy
from resnext_deploy.models import create_model
from resnext_deploy.parity import DEFAULT_TOLERANCES, compare
from resnext_deploy.precision import search
from resnext_deploy.precision.equalize import equalize
from resnext_deploy.precision.graph import load_prepared
from resnext_deploy.precision.options import PrecisionOptions
from resnext_deploy.precision.typed import make_typed_onnx
from resnext_deploy.source import SourceOptions, resolve_source

QUIET = {"log": lambda _m: None}
BIG = 1e4  # activations this large overflow float16's safe range (512) by far
needs_demo = pytest.mark.skipif(not DEMO_WEIGHTS.exists(), reason="the demo weights are not built yet")


def _export(state: dict[str, torch.Tensor], arch: str, tmp_path: Path) -> Path:
    checkpoint = tmp_path / "ckpt.safetensors"
    save_file(state, str(checkpoint))
    directory = tmp_path / "art"
    directory.mkdir()
    export_onnx(resolve_source(SourceOptions(arch, checkpoint)), directory, **QUIET)
    return directory


def _tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in create_model("resnext_tiny").state_dict().items()}


def _scale_bn(state: dict[str, torch.Tensor], bn: str, factor: float, channels=slice(None)) -> None:
    state[f"{bn}.weight"][channels] *= factor
    state[f"{bn}.bias"][channels] *= factor


def _tail_overflow(state: dict[str, torch.Tensor]) -> None:
    """The last block's output BIG times larger, the classifier BIG times smaller: same logits."""
    _scale_bn(state, "layer3.0.bn3", BIG)
    _scale_bn(state, "layer3.0.downsample.1", BIG)
    state["fc.weight"] /= BIG


def _head_overflow(state: dict[str, torch.Tensor]) -> None:
    """The first convolution's output BIG times larger, the convolutions reading it BIG times smaller."""
    _scale_bn(state, "bn1", BIG)
    state["layer1.0.conv1.weight"] /= BIG
    state["layer1.0.downsample.0.weight"] /= BIG


@pytest.mark.slow  # an export and an FP16 build per case
@pytest.mark.parametrize(
    ("plant", "expected"),
    [
        (_tail_overflow, {"/layer3/layer3.0/Add", "/layer3/layer3.0/relu_2/Relu", "/fc/Gemm"}),
        (_head_overflow, {"/conv1/Conv", "/relu/Relu", "/layer1/layer1.0/conv1/Conv"}),
    ],
    ids=["last-block", "first-conv"],
)
def test_fp16_is_valid_whatever_stays_fp32(tmp_path: Path, plant, expected: set[str]) -> None:
    state = _tiny_state()
    plant(state)
    directory = _export(state, "resnext_tiny", tmp_path)
    result = make_typed_onnx(directory, "fp16", PrecisionOptions(), **QUIET)
    assert expected <= set(result.fp32_nodes), result.fp32_nodes
    assert result.parity.cosine_min >= 0.999
    model = onnx.load(str(result.path))
    onnx.checker.check_model(model, full_check=True)
    produced = {name for node in model.graph.node for name in node.output}
    for value in (*model.graph.input, *model.graph.output):
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT
    assert all(value.name in produced for value in model.graph.output)
    # a residual group (Conv -> Add -> ReLU) is in one dtype: no Cast between its members
    producers = {name: node for node in model.graph.node for name in node.output}
    for node in model.graph.node:
        if node.op_type == "Add":
            parents = [producers.get(name) for name in node.input]
            assert not any(
                p is not None and p.op_type == "Cast" and producers[p.input[0]].op_type == "Conv" for p in parents
            ), f"{node.name}: a Cast splits Conv + Add"
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32), dtype=np.float32)
    ours = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    reference = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    assert compare(reference.run(None, {"input": x})[0], ours, DEFAULT_TOLERANCES["fp16"]).cosine_min >= 0.999


def test_near_ties_do_not_decide_but_real_damage_does() -> None:
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((64, 1000)).astype(np.float32)
    noise = 0.01 * rng.standard_normal(reference.shape).astype(np.float32)
    for row in range(6):  # six near-ties, which tiny noise flips: the two best swap
        first, second = np.argsort(-reference[row])[:2]
        reference[row, second] = reference[row, first] - 1e-3
    candidate = reference + noise
    for row in range(6):
        first, second = np.argsort(-reference[row])[:2]
        candidate[row, first], candidate[row, second] = reference[row, second], reference[row, first]
    parity = compare(reference, candidate, DEFAULT_TOLERANCES["int8"])
    assert parity.top1_agreement < 0.97 and parity.top1_decisive == 1.0 and parity.passed
    assert parity.decisive < 64  # the flipped near-ties are not decisive

    damaged = reference.copy()
    damaged[:8] = np.roll(damaged[:8], 1, axis=1)  # a real error on eight samples
    broken = compare(reference, damaged, DEFAULT_TOLERANCES["int8"])
    assert not broken.passed and broken.top1_decisive < 0.97 and "decisive" in " ".join(broken.failures)


def test_too_few_check_samples_is_a_clear_error(tiny_dir: Path, tmp_path: Path) -> None:
    calib = noise_images(tmp_path / "calib", 8)
    check = noise_images(tmp_path / "check", 4)
    with pytest.raises(BadInputError, match="only 4 check samples.*at least 32"):
        make_typed_onnx(tiny_dir, "int8", PrecisionOptions(calib_source=calib, check_source=check), **QUIET)
    assert not (tiny_dir / "model.int8.onnx").exists()


@pytest.mark.slow  # the whole pipeline
def test_pipeline_records_a_failed_step_and_still_reports(tmp_path: Path) -> None:
    images = noise_images(tmp_path / "imgs", 40)
    code = main(
        [
            "pipeline", "--dir", str(tmp_path / "p"), "--arch", "resnext_tiny", "--calib-dir", str(images),
            "--int8-cosine", "1.0", "--search-max-fraction", "0.2",
            "--batch-sizes", "1", "--duration", "0.05", "--count", "8",
        ]
    )  # fmt: skip
    assert code == ExitCode.VERIFY_FAILED
    directory = tmp_path / "p"
    for name in ("model.fp16.onnx", "verify.json", "bench.json", "report.md"):
        assert (directory / name).exists(), name
    assert not (directory / "model.int8.onnx").exists()
    report = (directory / "report.md").read_text()
    assert "int8 ONNX: failed" in report and "after trying --calib-method entropy, minmax, percentile" in report
    top = report.splitlines()[:6]
    assert top[0].endswith(": FAILED") and "**Status: FAILED**" in top[2]
    assert any(line.startswith("- int8 ONNX (model.int8.onnx was not made): ") for line in top), top
    assert f"`model.fp16.onnx` was checked on {images}" in report and "numeric parity only" not in report
    verified_on = json.loads((directory / "verify.json").read_text())["reference"]["data"]
    assert str(images) in verified_on and "synthetic" not in verified_on  # the held-out images, never noise


# ----------------------------------------------------------------------------------------------
# Outlier channels: function-preserving rescales the per-tensor INT8 scale cannot absorb


def _plant_outliers(state, block: str, bn: str, conv: str, channels: list[int], factor: float, groups: int = 8):
    """Channels of ``block.bn`` ``factor`` times larger, the weights of ``block.conv`` that read them smaller.

    ReLU commutes with a positive factor, so the model computes the same function; only the
    activation read by ``conv`` gets outlier channels.
    """
    weight = state[f"{block}.{conv}.weight"]
    for channel in channels:
        _scale_bn(state, f"{block}.{bn}", factor, channel)
        if conv == "conv2":  # grouped: the input channel's group of output channels reads it
            per_group, outputs = weight.shape[1], weight.shape[0] // groups
            group = channel // per_group
            weight[group * outputs : (group + 1) * outputs, channel % per_group] /= factor
        else:
            weight[:, channel] /= factor


OUTLIERS = [
    ("layer1.0", "bn2", "conv3", [1, 9, 20, 30], 400.0),
    ("layer2.0", "bn1", "conv2", [3, 17, 40], 300.0),
    ("layer3.0", "bn1", "conv2", [5, 77], 1000.0),
]


@pytest.mark.slow  # an INT8 search on the demo model
@needs_demo
@pytest.mark.parametrize(("block", "bn", "conv", "channels", "factor"), OUTLIERS, ids=[o[0] for o in OUTLIERS])
def test_equalization_keeps_the_outlier_layer_in_int8(tmp_path: Path, block, bn, conv, channels, factor) -> None:
    state = load_file(str(DEMO_WEIGHTS))
    _plant_outliers(state, block, bn, conv, channels, factor)
    directory = _export(state, "resnext11_digits", tmp_path)
    data = dict(calib_source=DEMO_CALIB, calib_count=128, check_source=DEMO_VAL, check_count=200)
    plain = PrecisionOptions(**data, search=False)
    with pytest.raises(VerificationError, match="accuracy drop|min cosine"):
        make_typed_onnx(directory, "int8", plain, **QUIET)
    layer = f"/{block.split('.')[0]}/{block}/{conv}/Conv"
    result = make_typed_onnx(
        directory, "int8", PrecisionOptions(calib_source=DEMO_CALIB, check_source=DEMO_VAL), **QUIET
    )
    assert result.parity.passed and result.parity.reference_accuracy - result.parity.accuracy <= 1.0
    assert result.search.kept == [] and result.search.equalization.chosen  # nothing left in float
    assert result.search.equalization.size == 6  # conv1 -> conv2 (grouped) -> conv3 in each block
    assert {"entropy", "minmax", "percentile"} <= set(result.search.methods)
    assert layer in result.quantized_nodes
    entry = Manifest(directory).entry("model.int8.onnx")
    assert entry.search["equalization"]["chosen"] and entry.heldout_synthetic is False


def test_equalization_preserves_the_function_and_evens_grouped_ranges(tmp_path: Path) -> None:
    state = _tiny_state()
    _plant_outliers(state, "layer2.0", "bn1", "conv2", [3, 17], 300.0, groups=8)
    directory = _export(state, "resnext_tiny", tmp_path)
    model = load_prepared(directory / "model.onnx")
    pairs = equalize(model)
    assert ("/layer2/layer2.0/conv1/Conv", "/layer2/layer2.0/conv2/Conv") in pairs and len(pairs) == 6
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)
    before = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(after.run(None, {"input": x})[0], before.run(None, {"input": x})[0], atol=1e-4)
    weights = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    conv1 = next(n for n in model.graph.node if n.name == "/layer2/layer2.0/conv1/Conv")
    ranges = np.abs(weights[conv1.input[1]]).reshape(weights[conv1.input[1]].shape[0], -1).max(axis=1)
    assert ranges.max() / np.median(ranges) < 20  # the 300x channels are back among the others


def _shortcut_outliers(state, block: str = "layer2.0", channels=(3, 11), shift: float = 100.0) -> None:
    """Channels of ``block``'s shortcut (downsample) output shifted by ``shift``, its main branch by -shift.

    The Add's sum is unchanged, so the model computes the same function; only the shortcut input of
    the residual Add, a Q/DQ site of its own, gets outlier channels. Keeping a Conv in float cannot fix it.
    """
    for channel in channels:
        state[f"{block}.downsample.1.bias"][channel] += shift
        state[f"{block}.bn3.bias"][channel] -= shift


@pytest.mark.slow  # an INT8 search on the demo model
@needs_demo
def test_outliers_on_a_shortcut_are_found_at_the_add_and_the_ranking_is_reused(tmp_path: Path) -> None:
    state = load_file(str(DEMO_WEIGHTS))
    _shortcut_outliers(state)
    directory = _export(state, "resnext11_digits", tmp_path)
    data = dict(calib_source=DEMO_CALIB, check_source=DEMO_VAL)
    with pytest.raises(VerificationError) as failed:
        make_typed_onnx(directory, "int8", PrecisionOptions(**data, search_max_fraction=0.0), **QUIET)
    message = str(failed.value)
    assert "keeping the 1 most sensitive of 17 Q/DQ sites out passes: pass --search-max-fraction 0.06" in message
    assert "--search-minutes" not in message
    messages: list[str] = []
    result = make_typed_onnx(directory, "int8", PrecisionOptions(**data, search_max_fraction=0.06), log=messages.append)
    saved = f"reusing {search.CONFIRMED_SITES} saved sensitivities"  # the confirmed ones (#31)
    assert any(saved in m for m in messages)  # a new budget reuses the ranking
    assert any(m.startswith(f"reusing {directory / 'int8_equalized' / 'calibration.json'}") for m in messages)
    assert result.parity.passed and result.search.kept == ["/layer2/layer2.0/Add"]
    assert result.search.reused_ranking and result.search.ranking[0][0] == "/layer2/layer2.0/Add"
    assert "/layer2/layer2.0/downsample/downsample.0/Conv" in result.quantized_nodes


def test_a_ranking_cut_short_is_saved_and_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sites = ["a", "b", "c", "d"]
    check = SimpleNamespace(images=np.zeros((8, 1)), reference=np.ones((8, 2), np.float32))
    monkeypatch.setattr(search, "run_model", lambda model, images: model)
    monkeypatch.setattr(accuracy, "local_errors", lambda base, typed, images: {"a": 0.4, "b": 0.3, "c": 0.2})
    measured: list[str] = []

    def build(method, kept, precision, only=None):
        if only is None:  # the whole INT8 graph, for the one-pass ranking
            return (None,)
        measured.extend(only)
        return (np.full((8, 2), 1.0 + sites.index(only[0]), np.float32),)  # d is the most sensitive

    def ranking(key: dict, expired, confirm: int = 4) -> tuple:
        return search._ranking(tmp_path, key, build, "entropy", sites, check, expired, print, None, confirm)

    calls = iter(range(100))
    measures, order, reused, cut = ranking({"k": 1}, lambda: next(calls) >= 2)
    # d, which the pass does not see, is measured first; then the pass's order
    assert [name for name, _ in measures] == ["d", "a"] and not reused and cut and measured == ["d", "a"]
    measures, order, reused, cut = ranking({"k": 1}, lambda: False)
    assert reused and not cut and measured == ["d", "a", "b", "c"]  # only the missing ones measured
    assert [name for name, _ in measures] == order == ["d", "c", "b", "a"]
    _, _, reused, _ = ranking({"k": 2}, lambda: False)
    assert not reused  # another model or data set: measured again


def test_only_the_worst_sites_of_the_one_pass_ranking_are_measured(tmp_path: Path, monkeypatch) -> None:
    """#31: one recorded pass ranks every site; full passes confirm the worst ``confirm`` of them only."""
    sites = ["a", "b", "c", "d"]
    check = SimpleNamespace(images=np.zeros((8, 1)), reference=np.ones((8, 2), np.float32))
    monkeypatch.setattr(search, "run_model", lambda model, images: model)
    monkeypatch.setattr(accuracy, "local_errors", lambda base, typed, images: {"a": 0.1, "b": 0.4, "c": 0.3, "d": 0.2})
    measured: list[str] = []

    def build(method, kept, precision, only=None):
        if only is not None:
            measured.extend(only)
        return (np.full((8, 2), 1.0 + (sites.index(only[0]) if only else 0), np.float32),)

    measures, order, _, cut = search._ranking(
        tmp_path, {"k": 1}, build, "entropy", sites, check, lambda: False, print, None, 2
    )
    assert measured == ["b", "c"] and not cut
    assert [name for name, _ in measures] == ["c", "b"]  # the confirmed ones by their measured sensitivity
    assert order == ["c", "b", "d", "a"]  # then the rest by their own error


@pytest.mark.slow  # the demo pipeline
@needs_demo
def test_pipeline_repairs_outlier_int8_and_reports_the_search(tmp_path: Path) -> None:
    state = load_file(str(DEMO_WEIGHTS))
    _plant_outliers(state, *OUTLIERS[1])
    checkpoint = tmp_path / "ckpt.safetensors"
    save_file(state, str(checkpoint))
    directory = tmp_path / "p"
    args = ["pipeline", "--dir", str(directory), "--arch", "resnext11_digits", "--checkpoint", str(checkpoint)]
    args += ["--calib-dir", str(DEMO_CALIB), "--calib-count", "128", "--check-data", str(DEMO_VAL)]
    args += ["--data", str(DEMO_VAL)]
    assert main([*args, "--count", "200", "--batch-sizes", "1", "--duration", "0.05"]) == ExitCode.OK
    report = (directory / "report.md").read_text()
    assert "INT8 search" in report and "Kept out of INT8: none" in report
    assert (
        "Cross-layer equalization (Nagel et al.) of 6 Conv -> ReLU -> Conv pairs" in report
        and "used in the file" in report
    )
    verify = json.loads((directory / "verify.json").read_text())
    accuracy = {r["precision"]: r["accuracy"] for r in verify["results"] if r["backend"] == "onnxruntime"}
    assert abs(accuracy["fp32"] - accuracy["int8"]) <= 1.0


def test_a_method_that_fails_by_far_on_a_first_slice_stops_there() -> None:
    """The minimum cosine of a slice bounds the whole set's from above, so a slice far below the bound ends it."""
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((16, 10)).astype(np.float32)
    tolerance = DEFAULT_TOLERANCES["int8"]
    close = compare(reference, reference + 0.01 * rng.standard_normal((16, 10)).astype(np.float32), tolerance)
    far = compare(reference, reference + rng.standard_normal((16, 10)).astype(np.float32), tolerance)
    assert not search.fails_by_far(close, tolerance)
    assert search.fails_by_far(far, tolerance) and not far.passed
