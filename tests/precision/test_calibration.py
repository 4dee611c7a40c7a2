"""Calibration: data selection, streaming statistics, the saved calibration.json and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import load_script, noise_images

from resnext_deploy.artifacts import write_json
from resnext_deploy.data import open_dataset
from resnext_deploy.errors import BadInputError
from resnext_deploy.precision.calibration import (
    CALIBRATION_NAME,
    Calibration,
    TensorRange,
    calibrate,
    calibration_json,
    read_calibration,
)
from resnext_deploy.precision.methods import CalibrationMethod
from resnext_deploy.precision.split import check_share, split_datasets
from resnext_deploy.precision.statistics import (
    NUM_BINS,
    AbsHistogram,
    Scratch,
    TensorStats,
    activation_tensors,
    collect_statistics,
    histogram_stride,
    nonnegative_tensors,
    run_batches,
)
from resnext_deploy.serde import decode
from resnext_deploy.source import SourceOptions, resolve_source

TINY = resolve_source(SourceOptions("resnext_tiny"))
PRE = TINY.preprocessing


# ----------------------------------------------------------------------------------------------
# The histogram


def test_histogram_growth_merges_bins_exactly() -> None:
    rng = np.random.default_rng(0)
    batches = [np.abs(rng.standard_normal(5000).astype(np.float32)) * s for s in (0.5, 1.0, 7.0, 3.0)]
    streamed = AbsHistogram()
    for values in batches:
        streamed.add(values, float(values.max()))
    everything = np.concatenate(batches)
    direct = np.bincount(
        np.minimum((everything * np.float32(NUM_BINS / streamed.limit)).astype(np.int64), NUM_BINS - 1),
        minlength=NUM_BINS,
    )
    assert streamed.counts.size == NUM_BINS  # memory stays fixed however much data comes in
    assert streamed.limit >= everything.max()
    assert streamed.counts.sum() == everything.size
    # merged counts may differ from a one-shot histogram only by values sitting on a bin edge
    assert np.abs(streamed.counts - direct).sum() <= 0.001 * everything.size


def _reference_counts(batches: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """The histogram as it was first written: |x| allocated, scaled, cast to int32, clipped, counted, per batch."""
    reference = AbsHistogram()
    for values in batches:
        magnitudes = np.abs(values).ravel()
        amax = float(magnitudes.max())
        if amax > reference.limit:
            reference._grow(amax)
        index = (magnitudes * np.float32(NUM_BINS / reference.limit)).astype(np.int32)
        reference.counts += np.bincount(np.minimum(index, NUM_BINS - 1), minlength=NUM_BINS)
    return reference.counts, reference.limit


@pytest.mark.parametrize("chunk", [7, 1 << 18])
def test_the_chunked_histogram_counts_what_the_straightforward_one_does(monkeypatch, chunk: int) -> None:
    """Counted ``chunk`` values at a time (7: many chunks and a short last one), in shared scratch buffers, the
    counts are a one-shot bincount's, and the caller's arrays stay as they were."""
    from resnext_deploy.precision import statistics

    monkeypatch.setattr(statistics, "CHUNK", chunk)
    rng = np.random.default_rng(3)
    batches = [np.maximum(rng.standard_normal((4, 3, 5, 5)).astype(np.float32) * s, 0) for s in (0.5, 4.0, 1.0)]
    batches.append(rng.standard_normal((4, 3, 5, 5)).astype(np.float32) * 9.0)  # signed, grows the range again
    batches[1].flat[0] = batches[1].max() * 2  # a value exactly at the limit it sets: the top bin
    expected, limit = _reference_counts(batches)
    kept = [values.copy() for values in batches]
    alone, shared, scratch = TensorStats(histogram=AbsHistogram()), TensorStats(histogram=AbsHistogram()), Scratch()
    for values, kept_values in zip(batches, kept, strict=True):
        alone.add(kept_values)
        shared.add(kept_values, scratch=scratch)
        np.testing.assert_array_equal(kept_values, values)
    for result in (alone, shared):
        assert result.histogram.limit == limit
        np.testing.assert_array_equal(result.histogram.counts, expected)
        assert (result.minimum, result.maximum) == (min(map(np.min, batches)), max(map(np.max, batches)))


@pytest.mark.parametrize(
    ("per_sample", "stride"),
    [(1, 1), (65535, 1), (65536, 3), (256 * 56 * 56, 25), (2048 * 7 * 7, 3), (3 * 224 * 224, 5)],
)
def test_the_histogram_stride_shares_no_factor_with_an_image(per_sample: int, stride: int) -> None:
    """All values up to twice HISTOGRAM_VALUES; above, the first stride past per_sample // HISTOGRAM_VALUES with no
    factor in common with the image's size (256x56x56 = 2**14 * 7**2: 24 shares 8, 25 shares none)."""
    assert histogram_stride(per_sample) == stride
    assert math.gcd(stride, per_sample) == 1


def test_a_large_tensor_s_histogram_counts_a_strided_sample_and_its_range_every_value() -> None:
    """Over twice HISTOGRAM_VALUES an image, the histogram counts every stride-th value of the batch (through every
    row and column, across images), while min and max still see every value, the extremes off the sample included."""
    rng = np.random.default_rng(5)
    values = rng.standard_normal((3, 2, 9, 10)).astype(np.float32)  # 180 values an image: stride 4 shares 2, so 7
    values.flat[1], values.flat[2] = 50.0, -60.0  # neither at a multiple of 7
    stats = TensorStats(histogram=AbsHistogram())
    stats.add(values, histogram_values=40)
    sample = values.ravel()[::7]
    expected = AbsHistogram()
    expected.add(sample, 60.0)
    assert (stats.minimum, stats.maximum) == (-60.0, 50.0)
    assert stats.histogram.counts.sum() == len(sample) == math.ceil(values.size / 7)
    np.testing.assert_array_equal(stats.histogram.counts, expected.counts)
    columns = {(index % 180) % 10 for index in range(0, values.size, 7)}
    assert columns == set(range(10))  # a stride sharing a factor with the width would skip columns


def test_sampled_clips_stay_near_every_value_s() -> None:
    """On 32 images of 400K ReLU'd values (a stride of 13), entropy and percentile clips from the sample are within
    a few percent of those of every value; min and max are the same."""
    rng = np.random.default_rng(6)
    images = np.maximum(rng.standard_normal((32, 16, 160, 160), dtype=np.float32) * rng.gamma(2, 1, (32, 16, 1, 1)), 0)
    sampled = TensorStats(histogram=AbsHistogram())
    for batch in np.split(images, 4):
        sampled.add(batch)
    exact = TensorStats(histogram=AbsHistogram())
    for batch in np.split(images, 4):
        exact.add(batch, histogram_values=images[0].size)  # every value
    assert sampled.histogram.counts.sum() * 12 < exact.histogram.counts.sum()
    assert (sampled.minimum, sampled.maximum) == (exact.minimum, exact.maximum)
    for method, tolerance in (("entropy", 0.05), ("percentile", 0.01), ("minmax", 0.0)):
        assert sampled.amax(method, 99.99) == pytest.approx(exact.amax(method, 99.99), rel=tolerance), method


def _relu_batch(seed: int) -> np.ndarray:
    return np.maximum(np.random.default_rng(seed).standard_normal((3, 64, 40, 40)).astype(np.float32), 0.0)


def _positive_then(value: float) -> np.ndarray:
    """All positive, with ``value`` past the zero probe (where only a min pass finds it)."""
    values = _relu_batch(1) + 0.5
    values[2, 63, 39, 39] = value
    return values


@pytest.mark.parametrize(
    "batches",
    [
        [_relu_batch(0), _relu_batch(1)],  # zeros in the probe: the min pass is skipped
        [_relu_batch(0) + 0.25],  # none is 0: the min pass finds 0.25
        [_positive_then(0.0)],  # a 0 past the probe only
        [_relu_batch(0), _positive_then(math.nan)],  # a NaN past the probe: NaN range, as a min pass gives
    ],
)
def test_a_nonnegative_tensor_s_range_and_histogram_are_those_of_a_min_pass(batches: list[np.ndarray]) -> None:
    """A tensor the graph keeps >= 0 takes a 0 in its first values as its minimum instead of reading them all: min,
    max and histogram are those of the plain statistics, whatever the data."""
    skipped, plain = TensorStats(histogram=AbsHistogram(), nonnegative=True), TensorStats(histogram=AbsHistogram())
    for values in batches:
        skipped.add(values)
        plain.add(values)
    np.testing.assert_array_equal([skipped.minimum, skipped.maximum], [plain.minimum, plain.maximum])
    assert skipped.histogram.limit == plain.histogram.limit
    np.testing.assert_array_equal(skipped.histogram.counts, plain.histogram.counts)


def test_nonnegative_tensors_are_relu_outputs_and_what_pooling_keeps_of_them() -> None:
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("MaxPool", ["relu"], ["pooled"], kernel_shape=[2, 2]),
        helper.make_node("GlobalAveragePool", ["pooled"], ["averaged"]),
        helper.make_node("Flatten", ["averaged"], ["flat"]),
        helper.make_node("MaxPool", ["conv"], ["signed_pool"], kernel_shape=[2, 2]),
        helper.make_node("Add", ["pooled", "signed_pool"], ["sum"]),
        helper.make_node("Neg", ["relu"], ["negated"]),
    ]
    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    model = helper.make_model(helper.make_graph(nodes, "signs", [value], []))
    assert nonnegative_tensors(model) == {"relu", "pooled", "averaged", "flat"}


def test_the_tiny_model_s_relu_outputs_are_found_nonnegative(tiny_dir: Path) -> None:
    model = onnx.load(str(tiny_dir / "model.onnx"))
    found = activation_tensors(model)
    producers = {name: node.op_type for node in model.graph.node for name in node.output}
    assert {name for name in found.names if producers.get(name) == "Relu"} <= found.nonnegative
    assert "input" not in found.nonnegative and "logits" not in found.nonnegative


def test_histogram_of_zeros_then_values() -> None:
    hist = AbsHistogram()
    hist.add(np.zeros(100, np.float32), 0.0)
    hist.add(np.full(10, 2.0, np.float32), 2.0)
    assert hist.counts[0] == 100 and hist.counts.sum() == 110 and hist.limit == 2.0


def test_methods_give_sensible_clips() -> None:
    rng = np.random.default_rng(1)
    values = rng.standard_normal(200_000).astype(np.float32)
    values[0] = 60.0  # one outlier far out
    stats = TensorStats(histogram=AbsHistogram())
    for chunk in np.array_split(values, 7):
        stats.add(chunk)
    assert stats.amax("minmax", 99.99) == pytest.approx(60.0)
    percentile = stats.amax("percentile", 99.0)
    assert 2.4 < percentile < 2.8  # |N(0,1)| 99th percentile is 2.576, up to one bin (60/2048)
    entropy = stats.amax("entropy", 99.99)
    assert 2.0 < entropy < 20.0  # the outlier is clipped, the bulk is kept


def test_dead_tensor_has_zero_range() -> None:
    stats = TensorStats(histogram=AbsHistogram())
    stats.add(np.zeros((4, 3), np.float32))
    assert stats.amax("entropy", 99.99) == 0.0 and stats.amax("percentile", 99.99) == 0.0


# ----------------------------------------------------------------------------------------------
# Streaming collection


def test_streaming_statistics_match_one_big_batch(tiny_dir: Path) -> None:
    model_path = tiny_dir / "model.onnx"
    dataset = open_dataset(None, PRE, count=12, seed=3)
    stats, consumed = collect_statistics(model_path, dataset, log=lambda _m: None, batch_bytes=1)  # batch size 1
    assert consumed == 12

    model = onnx.load(str(model_path))
    found = activation_tensors(model)
    tensors, histogram = found.names, found.histogram
    assert "input" in tensors and "input" in histogram and found.per_sample and found.per_sample > 0
    fetched = [t for t in tensors if t != "input"]
    model.graph.output.extend(onnx.ValueInfoProto(name=t) for t in fetched if t != "logits")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    images = np.concatenate([b.images for b in dataset.batches(12)])
    values = dict(zip(fetched, session.run(fetched, {"input": images}), strict=True))
    values["input"] = images
    for name in tensors:
        assert stats[name].minimum == pytest.approx(float(values[name].min()), rel=1e-5, abs=1e-6)
        assert stats[name].maximum == pytest.approx(float(values[name].max()), rel=1e-5, abs=1e-6)
        assert (stats[name].histogram is not None) == (name in histogram)


@pytest.mark.parametrize("batch", [1, 5])
def test_threaded_statistics_equal_one_tensor_at_a_time(tiny_dir: Path, batch: int) -> None:
    """Tensors folded in on the thread pool (shared scratch, in place) give a plain loop's statistics, bin for bin."""
    model_path = tiny_dir / "model.onnx"
    dataset = open_dataset(None, PRE, count=12, seed=4)
    model = onnx.load(str(model_path))
    found = activation_tensors(model)
    stats, _consumed = collect_statistics(
        model_path, dataset, log=lambda _m: None, batch_bytes=batch * found.per_sample
    )
    tensors, histogram = found.names, found.histogram
    fetched = [t for t in tensors if t != "input"]
    reference = {t: TensorStats(histogram=AbsHistogram() if t in histogram else None) for t in tensors}
    for images, values in run_batches(model, fetched, dataset, batch, "", model_path):
        reference["input"].add(images)
        for name, value in zip(fetched, values, strict=True):
            reference[name].add(value)
    for name, expected in reference.items():
        assert (stats[name].minimum, stats[name].maximum) == (expected.minimum, expected.maximum), name
        assert (stats[name].histogram is None) == (expected.histogram is None)
        if expected.histogram is not None:
            assert stats[name].histogram.limit == expected.histogram.limit
            np.testing.assert_array_equal(stats[name].histogram.counts, expected.histogram.counts)


@pytest.mark.parametrize("kernel_maps", [True, False])
def test_the_fetch_buffers_are_aligned_zeroed_and_apart(monkeypatch, kernel_maps: bool) -> None:
    """One mapping cut into 64-byte aligned float32 arrays that do not overlap; where the kernel cannot map pages on
    request (before Linux 5.14) a write to each page does it."""
    from resnext_deploy.precision import statistics

    calls: list[int] = []
    madvise = statistics._madvise

    def recorded(address: int, length: int, advice: int) -> int:
        calls.append(length)
        return madvise(address, length, advice) if kernel_maps else -1

    monkeypatch.setattr(statistics, "_madvise", recorded)
    monkeypatch.setattr(statistics, "POPULATE_CHUNK", 1 << 16)
    shapes = [(3, 5, 7, 7), (3, 100), (3, 64, 16, 16)]
    buffers = statistics._populated(shapes)
    assert [buffer.shape for buffer in buffers] == shapes
    assert all(buffer.ctypes.data % 64 == 0 and not buffer.any() for buffer in buffers)
    for index, buffer in enumerate(buffers):
        buffer[...] = index + 1
    assert [float(buffer.min()) for buffer in buffers] == [1.0, 2.0, 3.0]
    total = sum(-(-math.prod(shape) // 16) * 16 * 4 for shape in shapes)
    assert sum(calls) == total if kernel_maps else calls == [1 << 16]


def test_shapes_inferred_without_the_weights_are_those_with_them(tiny_dir: Path) -> None:
    """activation_tensors infers shapes on a weight-less copy: the same byte count, and the model keeps its weights."""
    from onnx import shape_inference

    model = onnx.load(str(tiny_dir / "model.onnx"))
    weights = [tensor.SerializeToString() for tensor in model.graph.initializer]
    assert max(map(len, weights)) > 4096  # some are stripped in the copy
    found = activation_tensors(model)
    assert [tensor.SerializeToString() for tensor in model.graph.initializer] == weights
    inferred = shape_inference.infer_shapes(model).graph
    shapes = {v.name: v.type.tensor_type.shape for v in [*inferred.input, *inferred.value_info, *inferred.output]}
    assert found.shapes == {name: tuple(d.dim_value for d in shapes[name].dim[1:]) for name in found.names}
    assert found.per_sample == sum(4 * math.prod(found.shapes[name]) for name in found.names)


def test_a_nan_makes_the_range_nan(tmp_path: Path) -> None:
    """A tensor holding one NaN among zeros has a NaN range (ONNX Runtime's ReduceMin/Max would step over it)."""
    from onnx import TensorProto, helper, numpy_helper

    shape = next(open_dataset(None, PRE, count=1, seed=0).batches(1)).images.shape[1:]
    mask = np.ones(shape, np.float32)
    mask.flat[100] = np.inf  # x * inf - x * inf: one NaN per sample, zeros elsewhere
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["input", "mask"], ["scaled"]),
            helper.make_node("Sub", ["scaled", "scaled"], ["holed"]),
        ],
        "nan",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", *shape])],
        [helper.make_tensor_value_info("holed", TensorProto.FLOAT, ["n", *shape])],
        [numpy_helper.from_array(mask, "mask")],
    )
    path = tmp_path / "nan.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    stats, _consumed = collect_statistics(path, open_dataset(None, PRE, count=4, seed=0), log=lambda _m: None)
    assert np.isnan(stats["holed"].minimum) and np.isnan(stats["holed"].maximum)
    assert stats["scaled"].minimum == -math.inf and stats["scaled"].maximum == math.inf


# ----------------------------------------------------------------------------------------------
# calibration.json: saved, reused only when it fits


@pytest.mark.slow  # four calibration runs
def test_calibration_is_saved_reused_and_recomputed_when_stale(tiny_dir: Path, tmp_path: Path) -> None:
    folder = noise_images(tmp_path / "calib", 12)
    model_path = tiny_dir / "model.onnx"
    messages: list[str] = []
    dataset = open_dataset(folder, PRE, count=8, seed=0)
    first = calibrate(tiny_dir, model_path, dataset, "entropy", log=messages.append)
    saved = json.loads((tiny_dir / CALIBRATION_NAME).read_text())
    assert saved["method"] == "entropy" and saved["count"] == 8 and saved["fingerprint"] == dataset.fingerprint
    assert saved["model_sha256"] and all("min" in t and "max" in t for t in saved["tensors"].values())
    assert first.amax("input") > 0

    messages.clear()
    again = calibrate(tiny_dir, model_path, dataset, "entropy", log=messages.append)
    assert again.tensors == first.tensors and messages[0].startswith("reusing")

    for method, data, why in (
        ("minmax", dataset, "--calib-method entropy"),
        ("minmax", open_dataset(folder, PRE, count=6, seed=0), "other data"),
    ):
        messages.clear()
        calibrate(tiny_dir, model_path, data, method, log=messages.append)
        assert "stale" in messages[0] and why in messages[0]

    model = onnx.load(str(model_path))
    model.producer_version = "changed"
    onnx.save(model, str(model_path))
    messages.clear()
    calibrate(tiny_dir, model_path, open_dataset(folder, PRE, count=6, seed=0), "minmax", log=messages.append)
    assert "stale (model.onnx changed)" in messages[0]

    (tiny_dir / CALIBRATION_NAME).write_text("{not json")
    messages.clear()
    calibrate(tiny_dir, model_path, open_dataset(folder, PRE, count=6, seed=0), "minmax", log=messages.append)
    assert "stale (it is unreadable)" in messages[0]


def test_calibration_json_reads_back_as_the_record_it_was_written_from(tiny_dir: Path, tmp_path: Path) -> None:
    dataset = open_dataset(noise_images(tmp_path / "calib", 8), PRE, seed=0)
    written = calibrate(tiny_dir, tiny_dir / "model.onnx", dataset, "percentile", log=lambda _m: None)
    path = tiny_dir / CALIBRATION_NAME
    assert read_calibration(path) == written and written.method is CalibrationMethod.PERCENTILE
    saved = json.loads(path.read_text())
    assert saved["method"] == "percentile" and saved["format"] == 2
    clipped = [entry for entry in saved["tensors"].values() if "amax" in entry]
    assert clipped and all(entry["amax"] == entry["amax_percentile"] for entry in clipped)
    plain = [name for name, entry in saved["tensors"].items() if "amax" not in entry]  # no histogram: min/max only
    assert plain and all(saved["tensors"][name].keys() == {"min", "max"} for name in plain)  # never null clips
    assert all(written.tensors[name].amax is None for name in plain)
    minmax = written.with_method("minmax")
    assert all(minmax.amax(name) == entry.amax_minmax for name, entry in written.tensors.items() if entry.amax)


def test_a_nan_range_round_trips_and_is_refused_on_reuse(tmp_path: Path) -> None:
    """A tensor with NaN gets a NaN range (write_json keeps NaN); read back, it is what calibration never reuses."""
    tensors = {"x": TensorRange(math.nan, math.nan), "y": TensorRange(-math.inf, math.inf)}
    record = Calibration("sha", "f", "d", 1, 1, CalibrationMethod.ENTROPY, 99.99, tensors)
    path = tmp_path / CALIBRATION_NAME
    write_json(path, calibration_json(record))
    back = decode(Calibration, json.loads(path.read_text()))
    assert math.isnan(back.tensors["x"].min) and math.isnan(back.tensors["x"].max)
    assert back.tensors["y"] == tensors["y"] and back.count == 1
    with pytest.raises(BadInputError, match=r"has tensor 'x' with values that are not finite numbers; it is a cache"):
        read_calibration(path)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda data: data.update(count="many"), "has count: expected an integer, got str"),
        (lambda data: data.update(method="kl"), "has method: expected one of 'entropy', 'minmax', 'percentile'"),
        (lambda data: data["tensors"]["input"].update(min="0"), "has tensors['input'].min: expected a number, got str"),
        (lambda data: data["tensors"]["input"].update(min=[[1.0]]), "has tensors['input'].min: expected a number"),
        (lambda data: data["tensors"].update(input=3), "has tensors['input']: expected an object"),
        (lambda data: data["tensors"]["input"].update(min=5.0, max=1.0), "'input' without a valid min <= max"),
        (lambda data: data.update(consumed=-1), "has a count that is not a non-negative integer"),
    ],
)
def test_a_hand_edited_calibration_json_is_one_line_naming_the_field(tmp_path: Path, edit, named: str) -> None:
    record = Calibration("sha", "f", "d", 2, 2, CalibrationMethod.MINMAX, 99.99, {"input": TensorRange(0.0, 1.0)})
    data = calibration_json(record)
    edit(data)
    path = tmp_path / CALIBRATION_NAME
    path.write_text(json.dumps(data))
    with pytest.raises(BadInputError) as caught:
        read_calibration(path)
    message = str(caught.value)
    assert named in message and str(path) in message and "delete it (rm " in message and "\n" not in message


def test_a_calibration_json_of_another_format_is_recomputed_not_refused(tmp_path: Path) -> None:
    path = tmp_path / CALIBRATION_NAME
    for text in ("{not json", "[]", json.dumps({"format": 1, "tensors": {"x": {"amax": 1.0}}})):
        path.write_text(text)
        assert read_calibration(path) is None


def test_bad_method_and_percentile(tiny_dir: Path) -> None:
    dataset = open_dataset(None, PRE, count=2)
    with pytest.raises(BadInputError, match="calib-method"):
        calibrate(tiny_dir, tiny_dir / "model.onnx", dataset, "kl")
    with pytest.raises(BadInputError, match="percentile"):
        calibrate(tiny_dir, tiny_dir / "model.onnx", dataset, "percentile", percentile=120)


# ----------------------------------------------------------------------------------------------
# Which data


def calib_only(source, count: int):
    """The calibration subset alone: with a separate check source the calibration source is not split."""
    return split_datasets(TINY, "int8", source, count, check_source=source)[0]


def test_int8_needs_data_for_a_non_demo_model_fp16_does_not() -> None:
    with pytest.raises(BadInputError, match="--calib-dir"):
        split_datasets(TINY, "int8", None, 16)
    calib, check = split_datasets(TINY, "fp16", None, 16)
    assert calib.fingerprint.startswith("synthetic") and check.fingerprint.startswith("synthetic")
    assert calib.fingerprint != check.fingerprint  # another seed: not the calibration inputs again
    with pytest.raises(BadInputError, match="--calib-count"):
        split_datasets(TINY, "int8", "x", 0)


@pytest.mark.parametrize(("available", "held"), [(33, 32), (100, 32), (400, 40), (1000, 100)])
def test_the_check_takes_ten_percent_and_at_least_32(available: int, held: int) -> None:
    assert check_share(available, 32) == held


def test_heldout_is_split_off_the_seeded_order(tmp_path: Path) -> None:
    folder = noise_images(tmp_path / "imgs", 10)
    calib, held = split_datasets(TINY, "int8", folder, 6, min_check=3)
    taken = {calib.folder.files[i] for i in calib.order[: calib.count]}
    checked = {held.folder.files[i] for i in held.order[: held.count]}
    assert calib.count == 6 and held.count == 3 and not taken & checked and held.has_labels
    everything, held_again = split_datasets(TINY, "int8", folder, 50, min_check=3)
    checked_again = {held_again.folder.files[i] for i in held_again.order[: held_again.count]}
    assert everything.count == 7 and checked_again == checked  # the calibration count never moves the check set

    with pytest.raises(BadInputError, match="--check-data"):
        split_datasets(TINY, "int8", folder, 6)  # 10 images cannot give 32 to the check and some to calibration
    given = noise_images(tmp_path / "check", 4)
    calib, held = split_datasets(TINY, "int8", folder, 50, check_source=given)
    assert calib.count == 10 and held.count == 4 and not held.fingerprint.startswith("synthetic")

    arrays = tmp_path / "x.npy"
    np.save(arrays, np.random.default_rng(0).standard_normal((5, 3, 32, 32), dtype=np.float32))
    calib, held = split_datasets(TINY, "int8", arrays, 3, min_check=2)
    assert calib.count == 3 and held.count == 2
    np.testing.assert_array_equal(held.images, np.load(arrays)[3:])


def _empty(folder: Path) -> None:
    """Nothing at all."""


def _text_only(folder: Path) -> None:
    (folder / "notes.txt").write_text("not an image")


def _corrupt_only(folder: Path) -> None:
    (folder / "a.png").write_bytes(b"not a png")


@pytest.mark.parametrize(
    ("make", "message"),
    [(_empty, "no images"), (_text_only, "no images"), (_corrupt_only, "no usable image")],
    ids=["empty-folder", "no-image-files", "only-corrupt-images"],
)
def test_unusable_folders_are_one_line_errors(tiny_dir: Path, tmp_path: Path, make, message: str) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    make(folder)
    with pytest.raises(BadInputError, match=message) as caught:
        dataset = calib_only(folder, 4)
        calibrate(tiny_dir, tiny_dir / "model.onnx", dataset, "entropy", log=lambda _m: None)
    assert "\n" not in str(caught.value)
    assert not (tiny_dir / CALIBRATION_NAME).exists()


def test_corrupt_files_are_skipped_and_counted(tiny_dir: Path, tmp_path: Path) -> None:
    folder = noise_images(tmp_path / "imgs", 6, classes=1)
    (folder / "class0" / "broken1.png").write_bytes(b"\x89PNG garbage")
    (folder / "class0" / "broken2.jpg").write_bytes(b"")
    messages: list[str] = []
    dataset = calib_only(folder, 100)
    result = calibrate(tiny_dir, tiny_dir / "model.onnx", dataset, "minmax", log=messages.append)
    warnings = [m for m in messages if m.startswith("warning")]
    assert len(warnings) == 1 and "skipped 2 unreadable image(s)" in warnings[0]
    assert result.consumed == 8


def test_wrong_shape_npy(tmp_path: Path) -> None:
    arrays = tmp_path / "x.npy"
    np.save(arrays, np.zeros((4, 3, 16, 16), np.float32))
    with pytest.raises(BadInputError, match=r"expected \(N, 3, 32, 32\)"):
        calib_only(arrays, 4)


def test_tensors_read_only_by_relus_are_not_fetched(tiny_dir: Path) -> None:
    """A Conv's or Add's output before its ReLU gets no statistics (nothing quantizes it); its ReLU's output does."""
    from resnext_deploy.precision.statistics import relu_outputs

    model = onnx.load(str(tiny_dir / "model.onnx"))
    before_relu = relu_outputs(model)
    producers = {name: node.op_type for node in model.graph.node for name in node.output}
    assert {producers[name] for name in before_relu} == {"Conv", "Add"}
    stats, _consumed = collect_statistics(tiny_dir / "model.onnx", open_dataset(None, PRE, count=2, seed=0), print)
    assert not stats.keys() & before_relu.keys()
    assert {output for outputs in before_relu.values() for output in outputs} <= stats.keys()


def test_the_sampling_script_finds_no_difference_where_every_value_is_counted(
    tiny_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """scripts/calibration_sampling.py on the tiny model (every tensor under the threshold, so the sample is every
    value): its "sample vs every value" row is exactly zero, while other images do move the clips."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "scripts"))
    out = tmp_path / "sampling.json"
    assert load_script("calibration_sampling").main(["--dir", str(tiny_dir), "--count", "8", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["differences"]
    assert all(value == 0.0 for figures in rows["sample vs every value"].values() for value in figures.values())
    assert rows["other images vs these"]["entropy"]["max"] > 0 and rows["other images vs these"]["minmax"]["max"] > 0


def test_the_cost_script_times_each_step_every_round_and_pairs_the_ratios(
    tiny_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """scripts/calibration_cost.py on a copy of the tiny model: every step timed every round, the medians, and each
    round's own ratio to the plain loop (plain's own is 1)."""
    import shutil

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "scripts"))
    directory = tmp_path / "model"
    shutil.copytree(tiny_dir, directory)
    out = tmp_path / "cost.json"
    arguments = ["--dir", str(directory), "--count", "4", "--batch-size", "2", "--rounds", "2", "--json", str(out)]
    assert load_script("calibration_cost").main(arguments) == 0
    record = json.loads(out.read_text())
    assert {name: len(values) for name, values in record["seconds"].items()} == {
        "plain": 2,
        "fetch": 2,
        "calibration": 2,
    }
    assert all(value > 0 for values in record["seconds"].values() for value in values)
    assert record["paired_ratio_median"]["plain"] == 1.0 and record["paired_ratio_median"]["calibration"] > 0
    assert "each round's own ratio" in capsys.readouterr().out
