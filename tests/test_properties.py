"""Property-based tests: preprocessing always gives a finite tensor of the right shape; parity metrics behave."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from resnext_deploy.data import preprocess, to_rgb
from resnext_deploy.models import Preprocessing
from resnext_deploy.parity import DEFAULT_TOLERANCES, compare, cosine_rows

MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "LA", "I;16", "I", "F", "YCbCr"]


@settings(max_examples=60, deadline=None)
@given(
    mode=st.sampled_from(MODES),
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    size=st.integers(8, 64),
    seed=st.integers(0, 2**16),
)
def test_any_mode_and_size_gives_a_finite_tensor(mode, width, height, size, seed):
    """Any mode and size within 100:1 (beyond, images are refused before the resize: the fault battery's case)."""
    assume(max(width, height) <= 100 * min(width, height))
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    image = (
        base.convert(mode)
        if mode not in ("I;16",)
        else Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    )
    pre = Preprocessing(size, size + size // 7, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    array = preprocess(to_rgb(image), pre)
    assert array.shape == (3, size, size)
    assert array.dtype == np.float32
    assert np.isfinite(array).all()


logits = arrays(np.float32, st.tuples(st.integers(1, 8), st.integers(2, 12)), elements=st.floats(-1e3, 1e3, width=32))


@settings(max_examples=80, deadline=None)
@given(a=logits, data=st.data())
def test_metrics_are_symmetric_and_bounded(a, data):
    b = data.draw(arrays(np.float32, a.shape, elements=st.floats(-1e3, 1e3, width=32)))
    ab, ba = compare(a, b), compare(b, a)
    assert ab.max_abs == ba.max_abs and ab.mean_abs == ba.mean_abs
    assert np.isclose(ab.cosine_min, ba.cosine_min) and np.isclose(ab.cosine_mean, ba.cosine_mean)
    assert -1.0 <= ab.cosine_min <= ab.cosine_mean <= 1.0 + 1e-12
    assert 0.0 <= ab.top1_agreement <= 1.0
    assert (ab.top5_overlap is None) == (a.shape[1] <= 5)  # top-5 says nothing with 5 classes or fewer
    assert ab.top5_overlap is None or 0.0 <= ab.top5_overlap <= 1.0
    assert ab.max_abs >= ab.mean_abs >= 0.0


@settings(max_examples=50, deadline=None)
@given(a=logits)
def test_identical_logits_pass_every_tolerance(a):
    for tolerance in DEFAULT_TOLERANCES.values():
        result = compare(a, a.copy(), tolerance, labels=np.zeros(len(a), dtype=np.int64))
        assert result.max_abs == 0.0 and result.top1_agreement == 1.0
        assert result.cosine_min >= 1.0 - 1e-12
        assert result, result.failures


def test_known_cases():
    ref = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], np.float32)
    assert cosine_rows(ref, -ref).tolist() == [-1.0, -1.0]
    assert cosine_rows(np.zeros((1, 3)), np.zeros((1, 3))).tolist() == [1.0]
    assert cosine_rows(np.zeros((1, 3)), np.ones((1, 3))).tolist() == [0.0]
    swapped = ref[:, [1, 0, 2]]
    result = compare(ref, swapped, DEFAULT_TOLERANCES["fp16"])
    assert result.top1_agreement == 0.0 and not result
    assert compare(ref, ref * 2).cosine_min == 1.0  # scale-invariant


def test_non_finite_outputs_always_fail():
    ref = np.ones((2, 4), np.float32)
    for bad in (np.nan, np.inf, -np.inf):
        cand = ref.copy()
        cand[1, 2] = bad
        result = compare(ref, cand)  # even with no tolerance at all
        assert not result and result.nonfinite == 1
        assert "non-finite" in result.failures[0]
