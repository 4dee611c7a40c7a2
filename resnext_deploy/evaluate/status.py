"""One status of a run, derived from what the artifact directory records, whichever commands made it.

``verify``, ``report`` and ``pipeline`` all call :func:`run_status`, so a CI gate on any of them gives the
same verdict: a step that failed (recorded in the manifest before it exited), a candidate that failed
verify, or a verified file changed since (its sha256 on disk no longer what verify recorded).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

from ..artifacts import Manifest, SkippedStep, sha256_file
from ..errors import ExitCode


class Verdict(str, Enum):
    """What a directory's records say about the run as a whole."""

    PASSED = "passed"
    FAILED = "FAILED"
    NOT_VERIFIED = "NOT VERIFIED"


@dataclass(frozen=True)
class Problem:
    """One reason the run is not passed: the step (or candidate) and why."""

    step: str
    reason: str
    bad_input: bool = False

    def __str__(self) -> str:
        return f"{self.step}: {self.reason}"


@dataclass(frozen=True)
class RunStatus:
    """The verdict and every problem behind it; its exit code gates CI (0 passed, 1 failed or not verified, 3)."""

    verdict: Verdict
    problems: tuple[Problem, ...] = ()

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.PASSED

    @property
    def exit_code(self) -> ExitCode:
        """As ``pipeline`` exits: 3 when a step met bad input, 1 for any other problem, 0 when passed."""
        if self.passed:
            return ExitCode.OK
        return ExitCode.BAD_INPUT if any(p.bad_input for p in self.problems) else ExitCode.VERIFY_FAILED

    def summary(self) -> str:
        """One line: the verdict and its problems, for the first line of a report or an error message."""
        if not self.problems:
            return self.verdict.value
        count = len(self.problems)
        return f"{self.verdict.value} ({count} problem{'s' if count > 1 else ''}): " + "; ".join(
            str(p) for p in self.problems
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "verdict": self.verdict.value,
            "exit_code": int(self.exit_code),
            "problems": [{"step": p.step, "reason": p.reason, "bad_input": p.bad_input} for p in self.problems],
        }


def failed_steps(manifest: Manifest) -> list[SkippedStep]:
    """The steps the manifest records as failed (a later successful run of the step clears them)."""
    return [step for step in manifest.skipped if step.failed]


def step_problem(step: SkippedStep) -> Problem:
    """A failed step as a problem, naming the artifact it did not make."""
    made = f" ({step.artifact} was not made)" if step.artifact else ""
    return Problem(f"{step.step}{made}", step.reason.split(": ", 1)[-1], step.bad_input)


def changed_since(directory: Path, hashes: Mapping[str, str]) -> list[str]:
    """The files whose content on disk is no longer what a command recorded (``verify.json``'s ``artifacts``)."""
    changed = []
    for name, sha256 in hashes.items():
        path = directory / name
        if not path.is_file() or sha256_file(path) != sha256:
            changed.append(name)
    return changed


class VerifyResult(Protocol):
    """What the status reads of verify's record (``evaluate.verify.VerifyRecord``): verify builds on this module."""

    @property
    def artifacts(self) -> Mapping[str, str]: ...  # file name -> sha256 verify ran

    def problems(self) -> list[Problem]: ...  # the reference's problems and each failing candidate


def run_status(manifest: Manifest, verify: VerifyResult | None, changed: list[str] | None = None) -> RunStatus:
    """The run's status from the manifest's failed steps and verify's record (None: verify did not run).

    The files verify ran are checked against the disk now (``changed``, when the caller has hashed them
    already): one changed since is not verified.
    """
    problems = [step_problem(step) for step in failed_steps(manifest)]
    if verify is not None:
        problems += verify.problems()
    if problems:
        return RunStatus(Verdict.FAILED, tuple(problems))
    if verify is None:
        return RunStatus(Verdict.NOT_VERIFIED, (Problem("verify", "did not run: run `resnext-deploy verify`"),))
    changed = changed_since(manifest.directory, verify.artifacts) if changed is None else changed
    if changed:
        reason = "changed since verify (its sha256 is not what verify recorded): run verify again"
        return RunStatus(Verdict.NOT_VERIFIED, tuple(Problem(name, reason) for name in changed))
    return RunStatus(Verdict.PASSED)
