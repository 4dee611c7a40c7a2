"""One runner interface over every backend, and what a backend declares to the registry.

A runner is opened on an artifact, takes a float32 NCHW batch and returns float32 logits. A backend
says whether it can run here (and, if not, which pip extra fixes that), which (artifact, device)
pairs of an artifact directory it runs, its own knobs (:class:`BackendOption`, which become CLI flags),
why its INT8 may not be faster, and optionally what it builds and which Triton models it offers;
:mod:`resnext_deploy.backends.registry` loops over them. Heavy or optional imports happen inside the
runners that need them, so declaring a backend costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from ..artifacts import ONNX_FILES, RUNTIME_FILES, Manifest
from ..errors import BadInputError
from ..serde import decode, encode

if TYPE_CHECKING:  # the CLI reads the registry to make its flags: declaring a backend must not import torch
    from ..source import ModelSource

OptionValue = str | int | float | bool
# What a runner says it runs with (OpenVINO's hint, streams, per-layer precisions): backend-specific JSON values,
# recorded in bench rows as the runtime reports them and never read back by the code.
RunnerOptions = dict[str, Any]
# The largest batch any command accepts: a static export, an engine profile, bench, Triton's max_batch_size.
BATCH_LIMIT = 4096


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
    options: RunnerOptions | None = None
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
    options: Mapping[str, OptionValue] = field(default_factory=dict)  # its backend's knobs, recorded in bench rows

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.backend, self.precision, self.device)

    @property
    def label(self) -> str:
        where = f"{self.backend}-{self.device}:{self.precision}"
        return f"{where} ({self.artifact})" if self.artifact else where

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
        """As verify.json and bench.json list it (``serde.encode``)."""
        return encode(self)

    @classmethod
    def from_dict(cls, data: object) -> SkipRecord:
        """A listed skip read back (``serde.decode``); a ``RecordError`` names a bad field."""
        return decode(cls, data)


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

    def runtime_file(self, precision: str, family: str) -> str | None:
        """The file runtime ``family`` runs for ``precision``: its variant where DIR has one, else the precision's.

        A directory made before the variant existed, or where it failed its check, has only the precision's
        own file (``model.int8.onnx``), which every runtime runs too.
        """
        variant = RUNTIME_FILES.get((precision, family))
        if variant is not None and self.present(variant):
            return variant
        return ONNX_FILES.get(precision)

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


def usable_runtime_files(family: str, usable: Callable[[str], bool]) -> list[tuple[str, str]]:
    """(precision, file) per precision ``family`` can serve: its variant where usable, else the precision's file."""
    chosen = []
    for precision, name in ONNX_FILES.items():
        variant = RUNTIME_FILES.get((precision, family))
        name = variant if variant is not None and usable(variant) else name
        if usable(name):
            chosen.append((precision, name))
    return chosen


@dataclass(frozen=True)
class BackendOption:
    """One knob of one backend: a keyword of its ``candidates`` and, with a ``flag``, a CLI flag.

    The CLI makes the flag on every command that opens runners (verify, bench, pipeline) and on
    triton-repo, from the registry alone, so a new backend's knob needs no CLI edit. ``flag`` None keeps a
    knob for the library (bench's isolation settings).
    """

    name: str
    default: OptionValue
    help: str
    flag: str | None = None
    choices: tuple[str, ...] = ()

    def check(self, value: Any, backend: str) -> OptionValue:
        """``value`` as this knob's type, or one line naming the flag and what it takes."""
        where = self.flag or f"{backend} option {self.name}"
        kind = type(self.default)
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, (kind, int) if kind is float else kind):
            raise BadInputError(f"{where} takes a {kind.__name__}, got {value!r}")
        if self.choices and value not in self.choices:
            raise BadInputError(f"{where} must be one of {', '.join(self.choices)}, got {value!r}")
        return kind(value)


@dataclass(frozen=True)
class TritonModel:
    """A Triton model a backend offers for one artifact of DIR; ``serving.triton_repo`` writes its config.

    ``platform`` is Triton's platform (``onnxruntime_onnx``, ``tensorrt_plan``), or with ``triton_backend``
    the name of a Triton backend (``openvino``). ``instance_kind`` None leaves it to ``--onnx-kind``.
    An artifact that is not an ONNX file (an engine) names the ONNX file whose inputs and outputs it has
    (``io_from``), the batches it accepts (``batch_profile``: min, opt, max) and what built it.
    """

    artifact: str
    precision: str
    kind: str  # the <kind> in the model name <arch>_<kind>_<precision>
    platform: str
    triton_backend: bool = False
    instance_kind: str | None = None
    parameters: Mapping[str, str] = field(default_factory=dict)
    io_from: str | None = None
    profile_input: str | None = None  # the input the batch profile is for
    batch_profile: tuple[int, int, int] | None = None
    built_with: str | None = None
    version_compatible: bool = False
    rebuild: str = ""  # the command that rebuilds the artifact, for a profile Triton cannot batch into


class Backend:
    """What a backend declares: its name, the pip extra that installs it, the candidates it runs, its knobs.

    Subclasses override :meth:`unavailable` (a cheap probe, no heavy import when the answer is "not
    installed") and :meth:`candidates`, which takes each of :attr:`options` as a keyword. ``int8_note``
    says, per device, why INT8 may not beat FP16 there (bench's warning). :meth:`build` and
    :meth:`triton_models` are optional: ``pipeline`` and ``triton-repo`` call them on every backend.
    A backend that builds declares the record its :meth:`build` takes as :attr:`build_options` (TensorRT's
    profile and builder settings); the caller makes it, from its own flags or the record's defaults.
    """

    name: str = ""
    extra: str | None = None
    description: str = ""
    options: tuple[BackendOption, ...] = ()
    int8_note: Mapping[str, str] = MappingProxyType({})
    build_options: type | None = None

    def option_values(self, given: Mapping[str, object] | None = None) -> dict[str, OptionValue]:
        """Every knob's value: ``given`` ones checked, the rest their defaults; an unknown name is bad input."""
        known = {option.name: option for option in self.options}
        unknown = sorted(set(given or {}) - set(known))
        if unknown:
            has = ", ".join(known) or "none"
            raise BadInputError(f"backend {self.name} has no option {', '.join(unknown)}; its options: {has}")
        return {
            name: option.check((given or {}).get(name, option.default), self.name) for name, option in known.items()
        }

    def unavailable(self) -> str | None:
        """None when this backend can run here; otherwise why not, naming what to install."""
        return None

    def candidates(self, artifacts: ArtifactSet, precisions: Sequence[str], threads: int | None) -> list[Candidate]:
        """The (artifact, device) pairs this backend runs here; a backend with knobs takes each as a keyword
        argument defaulting to its :class:`BackendOption`'s default."""
        raise NotImplementedError

    def build(self, directory: Path, options: Any, log: Callable[[str], None]) -> dict[str, str]:
        """Build this backend's own artifacts from the typed ONNX files; returns the steps skipped, with why.

        ``options`` is an instance of :attr:`build_options` (None for a backend that builds nothing).
        """
        return {}

    def triton_models(
        self, directory: Path, options: Mapping[str, Any], usable: Callable[[str], bool]
    ) -> list[TritonModel]:
        """The Triton models this backend serves from DIR's files; ``options`` are its knobs' values.

        ``usable(name)`` says whether a file of DIR is there, recorded and current (``triton-repo`` skips a
        stale one with a warning).
        """
        return []

    def install_hint(self) -> str:
        return f"pip install 'resnext-deploy[{self.extra}]'" if self.extra else "it ships with resnext-deploy"
