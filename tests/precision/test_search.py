"""Precision on users' own models: FP16 with FP32 head or tail, the near-tie-robust check, the INT8 search."""

from __future__ import annotations

import json
from dataclasses import replace
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
KEY = search.SearchKey("sha", "calibration", search.CheckData("check", 40), 99.99)
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

    def ranking(key: search.SearchKey, expired, confirm: int = 4) -> tuple:
        return search._ranking(tmp_path, key, build, "entropy", sites, check, expired, print, None, confirm)

    calls = iter(range(100))
    measures, order, reused, cut = ranking(KEY, lambda: next(calls) >= 2)
    # d, which the pass does not see, is measured first; then the pass's order
    assert [name for name, _ in measures] == ["d", "a"] and not reused and cut and measured == ["d", "a"]
    measures, order, reused, cut = ranking(KEY, lambda: False)
    assert reused and not cut and measured == ["d", "a", "b", "c"]  # only the missing ones measured
    assert [name for name, _ in measures] == order == ["d", "c", "b", "a"]
    _, _, reused, _ = ranking(replace(KEY, model="other"), lambda: False)
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
        tmp_path, KEY, build, "entropy", sites, check, lambda: False, print, None, 2
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


def _parity(noise: float, rows: int = 32, seed: int = 0):
    """A real Parity: model.onnx-like logits against a copy with ``noise`` added (0.01 passes, 1.0 fails)."""
    rng = np.random.default_rng(seed)
    reference = rng.standard_normal((rows, 10)).astype(np.float32)
    noisy = reference + noise * rng.standard_normal(reference.shape).astype(np.float32)
    return compare(reference, noisy, DEFAULT_TOLERANCES["int8"])


def _search(tmp_path: Path, check=None, **options) -> search.Int8Search:
    check = check or SimpleNamespace(images=np.zeros((8, 1)), reference=np.ones((8, 2), np.float32), labels=None)
    graph = search.Graph(None, None)
    tolerance = DEFAULT_TOLERANCES["int8"]
    return search.Int8Search(tmp_path, graph, None, check, tolerance, PrecisionOptions(**options), KEY, lambda _m: None)


def _candidate(method: str, kept=(), noise: float = 1.0) -> search.Candidate:
    parity = _parity(noise)
    return search.Candidate(method, tuple(kept), None, [], SimpleNamespace(sites=list("abcdefgh")), parity, parity)


def test_a_candidate_whose_first_slice_fails_the_cosine_bound_stops_there(tmp_path: Path, monkeypatch) -> None:
    """The minimum cosine of a slice bounds the whole set's from above: a slice below the bound fails for sure."""
    tolerance = DEFAULT_TOLERANCES["int8"]
    assert not search.fails_for_sure(_parity(0.01, 16), tolerance)
    assert search.fails_for_sure(_parity(1.0, 16), tolerance) and not _parity(1.0, 16).passed
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((40, 10)).astype(np.float32)
    check = SimpleNamespace(images=np.arange(40.0)[:, None], reference=reference, labels=None)
    runs: list[int] = []

    def open_model(noise):
        def run(images):
            runs.append(len(images))
            rows = images[:, 0].astype(int)
            return reference[rows] + noise * rng.standard_normal((len(rows), 10)).astype(np.float32)

        return run

    monkeypatch.setattr(search, "open_model", open_model)
    parity, first, complete = _search(tmp_path, check).check_parity(1.0)
    assert runs == [search.EARLY_SAMPLES] and not complete and not parity.passed and parity is first
    runs.clear()
    parity, first, complete = _search(tmp_path, check).check_parity(0.001)
    assert runs == [search.EARLY_SAMPLES, 40 - search.EARLY_SAMPLES] and complete and parity.passed


def test_the_methods_are_tried_in_order_until_one_passes_and_the_best_is_kept(tmp_path: Path) -> None:
    state = _search(tmp_path)
    noise = {"entropy": 0.5, "minmax": 0.3, "percentile": 0.01}
    tried: list[str] = []

    def candidate(method, kept=()):
        tried.append(method)
        return _candidate(method, kept, noise[method])

    state.candidate = candidate
    best = state.try_methods(["entropy", "minmax", "percentile"])
    assert best.method == "percentile" and best.parity.passed and list(state.record.methods) == tried
    noise["percentile"] = 0.8  # nothing passes: the best of the failing ones, all tried
    tried.clear()
    assert state.try_methods(["entropy", "minmax", "percentile"]).method == "minmax" and len(tried) == 3
    noise["entropy"] = 0.01  # the first passes: the others are never built
    tried.clear()
    assert state.try_methods(["entropy", "minmax", "percentile"]).method == "entropy" and tried == ["entropy"]


def test_sites_are_kept_out_greedily_until_the_check_passes(tmp_path: Path) -> None:
    state = _search(tmp_path)
    state.best, state.order, state.record.budget = _candidate("entropy", noise=2.0), list("abcdefgh"), 5
    state.candidate = lambda method, kept=(): _candidate(method, kept, 0.01 if len(kept) >= 3 else 1.0 / len(kept))
    state.keep_greedily()
    assert state.passed and state.record.kept == ["a", "b", "c"] and sorted(state.tried) == [1, 2, 3]


def test_an_exhausted_budget_stops_keeping_and_bisects_the_count_that_would_pass(tmp_path: Path) -> None:
    state = _search(tmp_path)
    state.best, state.order, state.record.budget = _candidate("entropy", noise=2.0), list("abcdefgh"), 1
    state.candidate = lambda method, kept=(): _candidate(method, kept, 0.01 if len(kept) >= 3 else 1.0 / len(kept))
    state.keep_greedily()
    assert not state.passed and state.record.kept == ["a"] and sorted(state.tried) == [1]
    state.find_needed()
    assert state.record.needed == 3 and sorted(state.tried) == [1, 2, 3, 4]  # doubling 2, 4; then bisection 3


def test_the_markers_step_alone() -> None:
    keep = search.KeepMarker(3)
    counts = []
    while keep.count is not None:
        counts.append(keep.count)
        keep.step(False)
    assert counts == [1, 2, 3] and search.KeepMarker(0).count is None
    bisect = search.BisectMarker(2, 20)
    counts = []
    while bisect.count is not None:
        counts.append(bisect.count)
        bisect.step(bisect.count >= 11)
    assert counts == [4, 8, 16, 12, 10, 11] and bisect.passing == 11
    never = search.BisectMarker(0, 4)
    while never.count is not None:
        never.step(False)
    assert never.passing is None and search.BisectMarker(4, 4).count is None


def test_the_search_key_is_saved_as_plain_json_and_another_key_is_not_reused(tmp_path: Path) -> None:
    path = tmp_path / search.SEARCH_NAME
    path.write_text(json.dumps({"format": search.SEARCH_FORMAT, "key": search._key_json(KEY), "scores": {"a": 0.5}}))
    assert search._load_scores(path, KEY, ["a"]) == {"a": 0.5}
    assert search._key_json(KEY)["check"] == {"fingerprint": "check", "count": 40}
    assert search._load_scores(path, replace(KEY, bias_corrected=True), ["a"]) == {}
