"""The entropy calibration, computed for every clip at once, against the loop over clips it replaced.

The reference below is the former ``AbsHistogram.entropy_amax`` (a loop over the clip bins, one KL per
clip, as in NVIDIA's pytorch-quantization), kept here only. The clip chosen must be the same bin; where
the two pick different bins, that is a floating-point near-tie, and the reference's own KL at both bins
must then agree to 1e-9 relative.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from resnext_deploy.data import open_dataset
from resnext_deploy.precision.statistics import QUANTIZED_BINS, AbsHistogram, collect_statistics
from resnext_deploy.source import SourceOptions, resolve_source

PRE = resolve_source(SourceOptions("resnext_tiny")).preprocessing
NEAR_TIE = 1e-9


def reference_divergences(counts: np.ndarray, quantized_bins: int = QUANTIZED_BINS) -> list[float]:
    """The former loop: KL(P || Q) for clip bins quantized_bins..len(counts), bin 0 set to bin 1's count first."""
    counts = counts.astype(np.float64)
    counts[0] = counts[1]
    tail = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])
    divergences = []
    for i in range(quantized_bins, len(counts) + 1):
        head = counts[:i]
        reference = head.copy()
        reference[-1] += tail[i]
        group = np.arange(i) * quantized_bins // i
        nonzero = head != 0
        sums = np.bincount(group, weights=head, minlength=quantized_bins)
        members = np.bincount(group, weights=nonzero, minlength=quantized_bins)
        average = np.divide(sums, members, out=np.zeros_like(sums), where=members > 0)
        candidate = np.where(nonzero, average[group], 0.0)
        divergences.append(_reference_kl(reference, candidate))
    return divergences


def _reference_kl(p: np.ndarray, q: np.ndarray) -> float:
    p_total, q_total = p.sum(), q.sum()
    if p_total == 0 or q_total == 0:
        return math.inf
    p, q = p / p_total, q / q_total
    support = p > 0
    if np.any(q[support] == 0):
        return math.inf
    return float(np.sum(p[support] * np.log(p[support] / q[support])))


def reference_clip(divergences: list[float], quantized_bins: int = QUANTIZED_BINS) -> int:
    """The former selection: the last clip whose KL is <= the best so far (len(counts) when every KL is inf)."""
    best_i, best_kl = quantized_bins + len(divergences) - 1, math.inf
    for offset, kl in enumerate(divergences):
        if kl <= best_kl:
            best_i, best_kl = quantized_bins + offset, kl
    return best_i


def assert_same_clip(counts: np.ndarray) -> bool:
    """The clip of the new entropy_amax is the reference's (True) or a near-tie of it (False)."""
    histogram = AbsHistogram(len(counts))
    histogram.counts = np.asarray(counts, dtype=np.int64)
    histogram.limit = float(len(counts))  # edge(i) == i: the amax is the clip bin
    chosen = histogram.entropy_amax()
    if histogram.counts.sum() == 0:
        assert chosen == 0.0
        return True
    divergences = reference_divergences(histogram.counts)
    expected = reference_clip(divergences)
    clip = round(chosen)
    assert chosen == histogram.edge(clip)
    if clip == expected:
        return True
    ours, theirs = divergences[clip - QUANTIZED_BINS], divergences[expected - QUANTIZED_BINS]
    assert math.isfinite(ours) and ours == pytest.approx(theirs, rel=NEAR_TIE, abs=1e-15), (clip, expected)
    return False


def _histogram(samples: np.ndarray, bins: int = 2048) -> np.ndarray:
    magnitudes = np.abs(samples)
    return np.histogram(magnitudes, bins=bins, range=(0.0, float(magnitudes.max())))[0]


def _relu_like(rng: np.random.Generator) -> np.ndarray:
    samples = np.maximum(rng.normal(rng.uniform(-1, 0.5), 1.0, 200_000), 0.0)
    return _histogram(samples)


def _heavy_tailed(rng: np.random.Generator) -> np.ndarray:
    return _histogram(rng.standard_t(rng.uniform(1.5, 4.0), 200_000))


def _sparse(rng: np.random.Generator) -> np.ndarray:
    counts = rng.integers(0, 1000, 2048)
    counts[rng.random(2048) < rng.uniform(0.5, 0.98)] = 0
    return counts


def _first_bins_only(rng: np.random.Generator) -> np.ndarray:
    counts = np.zeros(2048, np.int64)
    used = int(rng.integers(2, 129))
    counts[:used] = rng.integers(1, 50, used) if rng.random() < 0.5 else 7
    return counts


KINDS = {
    "random": lambda rng: rng.integers(0, 10_000, 2048),
    "relu_like": _relu_like,
    "heavy_tailed": _heavy_tailed,
    "sparse": _sparse,
    "first_128_bins_only": _first_bins_only,
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_same_clip_as_the_loop_on_random_histograms(kind: str) -> None:
    rng = np.random.default_rng(sorted(KINDS).index(kind))
    for _ in range(6):
        assert_same_clip(KINDS[kind](rng))


def test_relu_spike_at_zero_does_not_decide() -> None:
    """A huge count in bin 0 (exact zeros after a ReLU) is replaced by bin 1's count in both."""
    rng = np.random.default_rng(7)
    counts = _relu_like(rng)
    counts[0] = 10**9
    assert_same_clip(counts)


@pytest.mark.parametrize("position", [0, 1, 2, 100, 127, 128, 129, 1000, 2046, 2047])
def test_all_mass_in_one_bin(position: int) -> None:
    """Every finite KL is 0 here (or all are inf): the last clip among the equal minima wins, as before."""
    counts = np.zeros(2048, np.int64)
    counts[position] = 12345
    assert assert_same_clip(counts)


@pytest.mark.parametrize(
    "nonzero",
    [[(1, 5), (3, 5)], [(0, 4), (2047, 4)], [(10, 3), (11, 3), (300, 3)], [(5, 2), (2047, 9)], [(2040, 1), (2047, 1)]],
)
def test_exact_ties_and_infinities(nonzero: list[tuple[int, int]]) -> None:
    """Histograms whose KL is exactly 0 or inf for many clips: ties are decided as the loop decided them."""
    counts = np.zeros(2048, np.int64)
    for position, count in nonzero:
        counts[position] = count
    assert assert_same_clip(counts)


def test_equal_counts_in_the_first_128_bins_give_zero_divergence_ties() -> None:
    counts = np.zeros(2048, np.int64)
    counts[:128] = 9
    assert assert_same_clip(counts)
    counts[:64] = 3  # groups of two merge unequal neighbours only at 63/64
    assert assert_same_clip(counts)


def test_other_bin_counts() -> None:
    """A histogram with fewer bins than the search, or just more, runs as the loop did."""
    rng = np.random.default_rng(11)
    for bins in (QUANTIZED_BINS, QUANTIZED_BINS + 1, 300):
        assert_same_clip(rng.integers(0, 100, bins))
    few = AbsHistogram(64)
    few.counts[:] = rng.integers(1, 100, 64)
    few.limit = 2.0
    assert few.entropy_amax() == 2.0  # no clip to try: the whole range, as the loop returned


def test_same_clip_on_a_tiny_models_activations(tiny_dir: Path) -> None:
    """Real-looking histograms: every histogram of the tiny ResNeXt's calibration."""
    dataset = open_dataset(None, PRE, count=8, seed=5)
    stats, _seen = collect_statistics(tiny_dir / "model.onnx", dataset, log=lambda _m: None)
    histograms = [tensor.histogram.counts for tensor in stats.values() if tensor.histogram is not None]
    assert len(histograms) >= 5
    for counts in histograms:
        assert_same_clip(counts)
