"""The backend registry and discovery: which artifact runs on which runner here.

Built-in backends are the modules named in :data:`BUILTIN`, each exposing ``BACKEND``; adding one is
a new module and one entry there, knobs included (:class:`~.base.BackendOption`). :func:`register` adds
others at run time (tests use it). ``verify``, ``bench``, ``serve`` and ``pipeline`` loop over
:func:`discover_runners`, ``pipeline`` and ``triton-repo`` over :func:`backends`, and know nothing else about
backends.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..artifacts import ONNX_FILES, PRECISIONS, Manifest
from ..errors import BackendUnavailableError, BadInputError
from .base import ArtifactSet, Backend, Candidate, OptionValue, Runner, SkipRecord

if TYPE_CHECKING:  # the CLI reads the registry to make its flags: it must not import torch
    from ..source import ModelSource

# Modules under resnext_deploy.backends, each with a module-level BACKEND, in the order rows are shown.
BUILTIN = ("torch", "onnxruntime", "openvino", "tensorrt")
REFERENCE = ("torch", "fp32", "cpu")
EXPORT_HINT = "run `resnext-deploy export --dir DIR` again"

_registry: dict[str, Backend] = {}


def backends() -> dict[str, Backend]:
    """Every registered backend by name: the built-in ones first, then those added with :func:`register`."""
    if not _registry:
        for module in BUILTIN:
            backend = importlib.import_module(f"{__package__}.{module}").BACKEND
            _registry[backend.name] = backend
    return dict(_registry)


def backend_names() -> tuple[str, ...]:
    return tuple(backends())


def register(backend: Backend) -> Backend:
    """Add a backend (or replace one of the same name); returns it, so it can be used as a decorator value."""
    backends()
    _registry[backend.name] = backend
    return backend


def unregister(name: str) -> None:
    _registry.pop(name, None)


def check_options(given: Mapping[str, Mapping[str, object]]) -> dict[str, dict[str, OptionValue]]:
    """Knob values by backend name, each checked against its backend's declaration, defaults filled in."""
    return {name: get_backend(name).option_values(values) for name, values in given.items()}


def check_build_options(given: Mapping[str, object]) -> dict[str, object]:
    """Build records by backend name, one for every backend that builds: those given, the rest their defaults.

    A record for a backend that builds nothing, or of another type than its :attr:`~.base.Backend.build_options`,
    is a caller's mistake.
    """
    for name, record in given.items():
        kind = get_backend(name).build_options
        if kind is None or not isinstance(record, kind):
            raise TypeError(f"backend {name} builds with {kind.__name__ if kind else 'no options'}, got {record!r}")
    return {
        name: given[name] if name in given else backend.build_options()
        for name, backend in backends().items()
        if backend.build_options is not None
    }


def get_backend(name: str) -> Backend:
    try:
        return backends()[name]
    except KeyError:
        raise BadInputError(f"unknown backend {name!r}; use one of {', '.join(backends())}") from None


@dataclass
class Discovery:
    """Every candidate an artifact directory offers here, runnable or skipped with a reason."""

    manifest: Manifest
    source: ModelSource
    candidates: list[Candidate]

    @property
    def runnable(self) -> list[Candidate]:
        return [c for c in self.candidates if c.skipped is None]

    @property
    def skipped(self) -> list[Candidate]:
        return [c for c in self.candidates if c.skipped is not None]

    def hashes(self, candidates: Sequence[Candidate]) -> dict[str, str]:
        """sha256 of each artifact these candidates used, so that a report can tell stale results from current ones."""
        entries = {c.artifact: self.manifest.entry(c.artifact) for c in candidates if c.artifact}
        return {name: entry.sha256 for name, entry in entries.items() if entry is not None}


def discover_runners(
    directory: Any,
    names: Sequence[str] | None = None,
    precisions: Sequence[str] = PRECISIONS,
    threads: int | None = None,
    required: Sequence[str] = (),
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Discovery:
    """Every artifact in DIR times every runner of the chosen backends, each artifact checked against its sha256.

    A changed artifact is refused (BadInputError) rather than measured; a file that exists but cannot
    run here (an engine without TensorRT or a GPU, a file missing from the manifest) becomes a
    candidate with a ``skipped`` reason, never a silent omission. A backend named in ``required``
    (the user asked for it by name) that cannot run here is an error naming its pip extra.
    ``options`` holds knob values by backend name (OpenVINO's performance hint), checked against each
    backend's declared :attr:`~.base.Backend.options` and recorded on its candidates; the rest take their
    defaults, so options of one backend need no change to the others.
    """
    from ..source import artifact_dir, recorded_source

    directory = artifact_dir(directory)
    manifest = Manifest(directory)
    manifest.require(ONNX_FILES["fp32"], EXPORT_HINT)
    artifacts = ArtifactSet(manifest, recorded_source(manifest))
    given = check_options(options or {})
    candidates: list[Candidate] = []
    for name in names if names is not None else backend_names():
        backend = get_backend(name)
        if name in required and (reason := backend.unavailable()) is not None:
            raise BackendUnavailableError(f"backend {name} cannot run here: {reason}")
        values = given.get(name) or backend.option_values()
        found = backend.candidates(artifacts, precisions, threads, **values)
        candidates += [replace(candidate, options=values) for candidate in found]
    return Discovery(manifest, artifacts.source, candidates)


def open_runners(
    candidates: Sequence[Candidate],
) -> tuple[list[tuple[Candidate, Runner]], list[SkipRecord], list[tuple[Candidate, str]]]:
    """Open each candidate's runner: the opened ones, skip records, and (candidate, error) for files that fail to load.

    A backend missing here is skipped, and so is an engine TensorRT refuses here (built for another
    GPU or TensorRT version): neither says anything about the artifact. An ONNX file that a present
    backend cannot load is broken, and is returned as a failure.
    """
    opened, skipped, failed = [], [], []
    for candidate in candidates:
        if candidate.open is None:
            skipped.append(candidate.skip_record())
            continue
        try:
            opened.append((candidate, candidate.open()))
        except BackendUnavailableError as exc:
            skipped.append(candidate.skip_record(str(exc)))
        except BadInputError as exc:
            if candidate.artifact is not None and candidate.artifact.endswith(".engine"):
                skipped.append(candidate.skip_record(str(exc)))
            else:
                failed.append((candidate, str(exc)))
        except BaseException:
            for _, runner in opened:
                runner.close()
            raise
    return opened, skipped, failed
