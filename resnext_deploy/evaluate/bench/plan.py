"""How much to measure: the units (one worker at one batch size), and the rounds and slices that fit the budget."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ...backends.base import Candidate
from ..settings import BenchSettings
from ..worker import RunnerProcess


@dataclass
class Unit:
    """One worker at one batch size: what the plan gives it per round, and what it measured, round by round."""

    candidate: Candidate
    worker: RunnerProcess
    batch_size: int
    first_call_ms: float = 0.0
    call_ms: float = 0.0  # a warm call's time, from the warm-up; the plan is built on it
    min_calls: int = 1
    fixed_slice_s: float | None = None  # the noise control's own slice, whatever the plan's
    rounds_ms: list[list[float]] = field(default_factory=list)
    device_ms: list[float] = field(default_factory=list)
    ticks: list[tuple[int, int]] = field(default_factory=list)  # (other processes', machine's) per slice
    quiet_s: float | None = None  # how long the worker's pool kept using CPU after its warm-up
    pause_s: float = 0.0  # the wait after each slice the plan expects (until the worker is quiet)
    waits_s: list[float] = field(default_factory=list)  # the waits after its slices, as measured


@dataclass(frozen=True)
class Plan:
    """Rounds, the time slice every unit gets per round, and how long that should take."""

    rounds: int
    slice_s: float
    seconds: float
    fits: bool


def plan_rounds(
    units: Sequence[Unit],
    settings: BenchSettings,
    available_s: float,
    control_s: float = 0.0,
    pause_s: float | None = None,
) -> Plan:
    """The most measurement that fits ``available_s``, giving up in this order: slice length, then
    ``min_iterations`` (one call per round), then rounds (down to ``min_rounds``).

    Every unit gets at least ``min_calls`` calls per round (its share of ``min_iterations``), so a slow
    row (one call longer than its slice) costs its calls, not its slice. Sets each unit's ``min_calls``.
    ``control_s`` is what each round spends besides the units (the noise control's slice); ``pause_s`` the
    pause after each slice (``--pause-ms`` when None, else 0).
    """
    if pause_s is None:
        pause_s = (settings.pause_ms or 0.0) / 1e3

    def seconds(rounds: int, slice_s: float, calls: int | None = None) -> float:
        for unit in units:
            unit.min_calls = calls or max(1, math.ceil(settings.min_iterations / rounds))
        return rounds * (
            control_s + sum(max(slice_s, u.min_calls * u.call_ms / 1e3) + pause_s + u.pause_s for u in units)
        )

    def plan(rounds: int, slice_s: float, calls: int | None = None, fits: bool = True) -> Plan:
        return Plan(rounds, slice_s, seconds(rounds, slice_s, calls), fits)

    full, rounds = settings.duration_s / settings.rounds, settings.rounds
    if seconds(rounds, full) <= available_s:
        return plan(rounds, full)
    if seconds(rounds, 0.0) <= available_s:
        low, high = 0.0, full
        for _ in range(40):
            middle = (low + high) / 2
            low, high = (middle, high) if seconds(rounds, middle) <= available_s else (low, middle)
        return plan(rounds, low)
    for fewer in range(rounds, settings.min_rounds - 1, -1):
        if seconds(fewer, 0.0, calls=1) <= available_s:
            return plan(fewer, 0.0, calls=1)
    return plan(settings.min_rounds, 0.0, calls=1, fits=False)
