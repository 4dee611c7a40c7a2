"""Statistics of measured call times: latency percentiles, round spread, and bootstrap intervals over rounds.

Times arrive in rounds: every row measured once per round, rounds interleaved across rows. A row's
median is the median of all its calls; its interval, and a speedup's interval, come from resampling
whole rounds (paired across the two rows of a ratio, so drift that hit both in one round cancels).
Every interval is widened where needed to contain its own estimate, so the two never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 400
CONFIDENCE = 0.95
_SEED = 0


@dataclass(frozen=True)
class LatencyStats:
    """Percentiles of one row's calls, in milliseconds."""

    mean_ms: float
    median_ms: float
    min_ms: float
    max_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    std_ms: float

    @property
    def cv(self) -> float:
        """Coefficient of variation (std / mean), trtexec's stability figure."""
        return self.std_ms / self.mean_ms if self.mean_ms > 0 else 0.0


def latency_stats(times_ms: Sequence[float]) -> LatencyStats:
    values = np.asarray(times_ms, dtype=np.float64)
    p50, p90, p95, p99 = np.percentile(values, [50, 90, 95, 99])
    return LatencyStats(
        float(values.mean()),
        float(p50),
        float(values.min()),
        float(values.max()),
        float(p90),
        float(p95),
        float(p99),
        float(values.std()),
    )


def round_spread(rounds_ms: Sequence[Sequence[float]]) -> float | None:
    """(p90 - p10) / median of the per-round medians: how much the measured speed moved during the run."""
    return spread_of([float(np.median(r)) for r in rounds_ms if len(r)])


def spread_of(values: Sequence[float]) -> float | None:
    """(p90 - p10) / median of ``values``; None for fewer than two."""
    if len(values) < 2:
        return None
    p10, p50, p90 = np.percentile(np.asarray(values, dtype=np.float64), [10, 50, 90])
    return float((p90 - p10) / p50) if p50 > 0 else None


def _pooled_medians(rounds_ms: Sequence[Sequence[float]], picks: np.ndarray) -> np.ndarray:
    """The median of all calls of the rounds in each row of ``picks`` (round indices, one resample per row)."""
    arrays = [np.asarray(r, dtype=np.float64) for r in rounds_ms]
    return np.array([np.median(np.concatenate([arrays[i] for i in pick])) for pick in picks])


def _resamples(rounds: int) -> np.ndarray:
    """Round indices drawn with replacement, seeded, so one run's figures are reproducible from its times."""
    return np.random.default_rng(_SEED).integers(0, rounds, size=(BOOTSTRAP_RESAMPLES, rounds))


def _interval(samples: np.ndarray, estimate: float) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = (float(v) for v in np.percentile(samples, [tail, 100 - tail]))
    return min(low, estimate), max(high, estimate)


def median_interval(rounds_ms: Sequence[Sequence[float]]) -> tuple[float, float] | None:
    """A bootstrap interval, over rounds, of the median of all calls; None with fewer than two rounds."""
    rounds = [r for r in rounds_ms if len(r)]
    if len(rounds) < 2:
        return None
    estimate = float(np.median(np.concatenate([np.asarray(r, dtype=np.float64) for r in rounds])))
    return _interval(_pooled_medians(rounds, _resamples(len(rounds))), estimate)


def ratio_interval(
    reference_rounds_ms: Sequence[Sequence[float]], rounds_ms: Sequence[Sequence[float]]
) -> tuple[float, float, float] | None:
    """Speedup = reference median / row median, and its bootstrap interval over rounds measured side by side.

    Rounds are paired (round i of both rows ran back to back); None with fewer than two paired rounds.
    """
    pairs = [(a, b) for a, b in zip(reference_rounds_ms, rounds_ms, strict=False) if len(a) and len(b)]
    if len(pairs) < 2:
        return None
    reference, row = [p[0] for p in pairs], [p[1] for p in pairs]
    estimate = float(np.median(np.concatenate(reference)) / np.median(np.concatenate(row)))
    picks = _resamples(len(pairs))
    samples = _pooled_medians(reference, picks) / _pooled_medians(row, picks)
    low, high = _interval(samples, estimate)
    return estimate, low, high
