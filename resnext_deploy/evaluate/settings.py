"""What bench measures and for how long, validated once where it is made; light to import (the CLI's defaults)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..artifacts.precisions import PRECISIONS, Precision
from ..backends.base import BATCH_LIMIT
from ..errors import BadInputError

if TYPE_CHECKING:  # the CLI imports these settings for its defaults: no numpy or backends at import
    from ..backends.base import OptionValue


@dataclass(frozen=True)
class BenchSettings:
    """What to measure and for how long; validated when made, so nothing downstream checks it again.

    ``backends`` None means every registered backend; naming one that cannot run here is an error.
    ``duration_s`` is the measured time each row aims for; ``budget_s`` bounds the whole run, and the
    plan shrinks slices, then rounds (down to ``min_rounds``), to fit it. ``backend_options`` holds the
    backends' own knobs by backend name (OpenVINO's ``performance_hint``), checked against their declarations.
    Each runtime runs in its default threading unless ``passive_pools`` (idle pools sleep: what some
    deployments set, not what users get by default). ``pause_ms`` is the idle time after each slice that
    lets the last runner's pool go quiet; None measures it when bench starts.
    """

    backends: tuple[str, ...] | None = None
    precisions: tuple[str, ...] = PRECISIONS
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    warmup_ms: float = 200.0
    duration_s: float = 3.0
    min_iterations: int = 10
    threads: int | None = None
    backend_options: Mapping[str, Mapping[str, OptionValue]] = field(default_factory=dict)
    budget_s: float = 180.0
    rounds: int = 10
    min_rounds: int = 5
    pause_ms: float | None = None
    passive_pools: bool = False

    def __post_init__(self) -> None:
        from ..backends.registry import backend_names, check_options

        if self.backends is not None:
            parse_list(",".join(self.backends), backend_names(), "--backends")
        parse_list(",".join(self.precisions), Precision.names(), "--precisions")
        object.__setattr__(self, "backend_options", check_options(self.backend_options))
        parse_batch_sizes(",".join(str(b) for b in self.batch_sizes))
        _check_range("--warmup-ms", self.warmup_ms, 0, 600_000)
        _check_range("--duration", self.duration_s, 0, 3600, open_low=True)
        _check_range("--budget", self.budget_s, 0, 86_400, open_low=True)
        if self.pause_ms is not None:
            _check_range("--pause-ms", self.pause_ms, 0, 10_000)
        if self.min_iterations < 1:
            raise BadInputError(f"--min-iterations must be at least 1, got {self.min_iterations}")
        if not 2 <= self.min_rounds <= self.rounds <= 1000:
            raise BadInputError(f"--rounds must be from 2 to 1000, got {self.rounds} (at least {self.min_rounds})")
        if self.threads is not None and self.threads < 1:
            raise BadInputError(f"--threads must be at least 1, got {self.threads}")


def _check_range(flag: str, value: float, low: float, high: float, open_low: bool = False) -> None:
    if not (math.isfinite(value) and (value > low if open_low else value >= low) and value <= high):
        bound = "more than" if open_low else "at least"
        raise BadInputError(f"{flag} must be {bound} {low:g} and at most {high:g}, got {value:g}")


def parse_list(text: str, allowed: Sequence[str], flag: str) -> tuple[str, ...]:
    """``a,b`` into ``("a", "b")``, each checked against ``allowed``."""
    items = tuple(dict.fromkeys(item.strip().lower() for item in text.split(",") if item.strip()))
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise BadInputError(f"{flag} takes a comma-separated list of {', '.join(allowed)}; got {text!r}")
    return items


def parse_int_list(text: str, flag: str, maximum: int) -> tuple[int, ...]:
    """``1,8,32`` into ``(1, 8, 32)``, each from 1 to ``maximum``."""
    try:
        values = tuple(sorted({int(item) for item in text.split(",") if item.strip()}))
    except ValueError:
        values = ()
    if not values or not all(1 <= value <= maximum for value in values):
        raise BadInputError(f"{flag} takes comma-separated integers from 1 to {maximum}; got {text!r}")
    return values


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    return parse_int_list(text, "--batch-sizes", BATCH_LIMIT)
