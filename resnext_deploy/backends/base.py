"""One runner interface over every backend, and what a backend declares to the registry.

A runner is opened on an artifact, takes a float32 NCHW batch and returns float32 logits. A backend
says whether it can run here (and, if not, which pip extra fixes that) and which (artifact, device)
pairs of an artifact directory it runs; :mod:`resnext_deploy.backends.registry` loops over them.
Heavy or optional imports happen inside the runners that need them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import Manifest
from ..source import ModelSource


class Runner:
    """Base class. ``last_device_ms`` is the device compute time of the last call where measurable.

    ``options`` are the backend settings that shape its numbers (OpenVINO's hint, precision, streams),
    recorded in bench rows.
    """

    backend: str = ""
    precision: str = "fp32"
    device: str = "cpu"
    artifact: str | None = None
    last_device_ms: float | None = None
    options: dict[str, Any] | None = None
    # What the runtime really computes in, where it says (OpenVINO may run an fp16 file in f32); None: as typed.
    compute_precision: str | None = None

    def infer(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.infer(np.ascontiguousarray(batch, dtype=np.float32))

    def close(self) -> None:
        """Release sessions and device memory, and restore any global setting the runner changed."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_in_chunks(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, size: int, pad_to: int = 1) -> np.ndarray:
    """Run ``batch`` in chunks of at most ``size``; a last chunk shorter than ``pad_to`` is zero-padded up to it.

    ``pad_to`` is the smallest batch the model accepts: ``size`` for a fixed batch, a TensorRT profile's minimum
    (profile 4..8 and 9 images: chunks of 8 and 1, the 1 padded to 4).
    """
    outputs = []
    for start in range(0, len(batch), size):
        chunk = batch[start : start + size]
        real = len(chunk)
        if real < pad_to:
            chunk = np.concatenate([chunk, np.zeros((pad_to - real, *batch.shape[1:]), dtype=batch.dtype)])
        outputs.append(run(chunk)[:real])
    return np.concatenate(outputs)


@dataclass
class Candidate:
    """One artifact on one runner. ``skipped`` says why it cannot run here; otherwise ``open`` makes the runner."""

    backend: str
    precision: str
    device: str
    artifact: str | None
    open: Callable[[], Runner] | None = None
    skipped: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.backend, self.precision, self.device)

    @property
    def label(self) -> str:
        where = f"{self.backend}-{self.device}:{self.precision}"
        return f"{where} ({self.artifact})" if self.artifact else where

    def identity(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "device": self.device, "artifact": self.artifact}

    def skip_record(self, reason: str | None = None) -> SkipRecord:
        return SkipRecord(self.backend, self.precision, self.device, self.artifact, reason or self.skipped or "")


@dataclass(frozen=True)
class SkipRecord:
    """A candidate that was not run, and why: what verify, bench and the report list under "skipped"."""

    backend: str
    precision: str
    device: str
    artifact: str | None
    reason: str

    @property
    def label(self) -> str:
        return f"{self.backend}-{self.device}:{self.precision}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SkipRecord:
        return cls(data["backend"], data["precision"], data["device"], data.get("artifact"), data["reason"])


@dataclass(frozen=True)
class ArtifactSet:
    """An exported artifact directory as backends see it: its files, its manifest, and the model behind it."""

    manifest: Manifest
    source: ModelSource

    @property
    def directory(self) -> Path:
        return self.manifest.directory

    def path(self, name: str) -> Path:
        return self.directory / name

    def present(self, name: str) -> bool:
        return self.manifest.entry(name) is not None or self.path(name).exists()

    def unusable(self, name: str) -> str | None:
        """Why a present artifact is not used (not in the manifest, or stale), or None; a changed one is an error."""
        if self.manifest.entry(name) is None:
            return (
                f"{name} is not recorded in manifest.json (not made by resnext-deploy, or made by an interrupted run)"
            )
        self.manifest.require(
            name, f"make it again with resnext-deploy (its sha256 no longer matches {self.manifest.path.name})"
        )
        stale = self.manifest.stale_reason(name)
        if stale is not None:
            return f"{name} is stale: {stale}; build-trt or pipeline makes it again"
        return None


class Backend:
    """What a backend declares: its name, the pip extra that installs it, and the candidates it runs.

    Subclasses override :meth:`unavailable` (a cheap probe, no heavy import when the answer is "not
    installed") and :meth:`candidates`.
    """

    name: str = ""
    extra: str | None = None
    description: str = ""

    def unavailable(self) -> str | None:
        """None when this backend can run here; otherwise why not, naming what to install."""
        return None

    def candidates(self, artifacts: ArtifactSet, precisions: Sequence[str], threads: int | None) -> list[Candidate]:
        raise NotImplementedError

    def install_hint(self) -> str:
        return f"pip install 'resnext-deploy[{self.extra}]'" if self.extra else "it ships with resnext-deploy"
