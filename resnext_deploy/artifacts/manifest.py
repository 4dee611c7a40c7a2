"""``DIR/manifest.json``: one entry per artifact with its sha256, parent, options and tool versions."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from ..errors import BadInputError, VerificationError
from ..serde import RecordError, decode, encode
from .precisions import ONNX_FILES
from .store import CALIBRATION_NAME, LOCK_NAME, engine_file, now_iso, read_json, sha256_file, write_json

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")
T = TypeVar("T")


# Files this tool writes in an artifact directory besides those its manifest records (which every command reads).
TOOL_FILES = frozenset(
    {
        MANIFEST_NAME,
        CALIBRATION_NAME,
        "int8_search.json",
        "verify.json",
        "bench.json",
        "bench.csv",
        "bench.md",
        "bench.png",
        "bench_triton.json",
        "bench_triton.md",
        "report.md",
        "report.json",
        "triton_server.log",
        LOCK_NAME,
    }
)


def refuse_owned(path: str | Path, directory: str | Path) -> None:
    """Refuse a user-named output (``--json``) that would replace a file this tool owns in ``directory``.

    Owned: the manifest and every file it records, any ``model.*`` file (models, engines and their
    manifests), and the reports and caches in :data:`TOOL_FILES`. Replacing one would break later commands.
    """
    target, home = Path(path).absolute(), Path(directory).absolute()
    with contextlib.suppress(OSError):
        target, home = target.parent.resolve() / target.name, home.resolve()
    if target.parent != home:
        return
    recorded = set()
    with contextlib.suppress(BadInputError):
        recorded = set(Manifest(home).artifacts) if (home / MANIFEST_NAME).is_file() else set()
    if target.name in TOOL_FILES or target.name in recorded or target.name.startswith("model."):
        raise BadInputError(
            f"{path} is a file resnext-deploy owns in --dir {directory}; write the JSON to another name"
        )


def tool_versions() -> dict[str, str]:
    """Versions of the libraries that shape an artifact (imported lazily, all light here)."""
    import numpy
    import onnx
    import onnxruntime
    import torch

    from .. import __version__

    return {
        "resnext_deploy": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
    }


# A record owned by a later layer (the model source, a parity check, the INT8 search, a step's options), as its
# owner encoded it with serde: the manifest keeps it whole, and only its owner decodes it (ArtifactEntry.options_as).
JsonObject = dict[str, Any]


@dataclass(frozen=True)
class CalibrationRef:
    """Which calibration a typed file's ranges came from; the engine step copies its fingerprint into its manifest.

    Written by the typed-file step (``precision/typed.py``) into :attr:`ArtifactEntry.calibration`, so the key the
    writer sets is the key every reader finds.
    """

    fingerprint: str  # the calibration images' content fingerprint (``Dataset.fingerprint``)
    description: str
    count: int
    method: str
    percentile: float


@dataclass(frozen=True)
class EngineProfile:
    """The optimization profile an engine was built with: its image input and the min/opt/max NCHW shapes."""

    input: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @property
    def batches(self) -> tuple[int, int, int]:
        """The min, opt and max batch sizes (what Triton's batching and the bench stay within)."""
        return self.min[0], self.opt[0], self.max[0]


@dataclass(frozen=True)
class ArtifactEntry:
    """What ``manifest.json`` records about one artifact (the file ``path`` names, in the directory).

    The fields every artifact has come first, then those of typed files and of engines (None or empty on others).
    ``options``, ``parity`` and ``search`` are records of later layers, kept as their owners encoded them.
    """

    path: str
    sha256: str
    size_bytes: int | None = None
    precision: str | None = None
    parent_sha256: str | None = None
    options: JsonObject = field(default_factory=dict)  # what the file depends on besides its parent (options_as)
    versions: dict[str, str] = field(default_factory=dict)
    created: str | None = None
    stale: str | None = None  # why it was made from an input that has changed since, as the last save found it
    weights_warning: str | None = None
    parity: JsonObject | None = None  # the check made with the file (``Parity.to_dict``; by batch for model.onnx)
    # Typed files (model.fp16.onnx, model.int8.onnx, model.int8.ort.onnx):
    heldout: str | None = None  # the held-out data the file was checked on when it was made
    heldout_synthetic: bool = False
    calibration: CalibrationRef | None = None
    search: JsonObject | None = None  # the INT8 search record (``SearchRecord.to_dict``)
    fp32_nodes: tuple[str, ...] = ()
    quantized_nodes: tuple[str, ...] | None = None  # None: not recorded (a file made by another tool)
    quantized_tensors: tuple[str, ...] | None = None
    remedies: tuple[str, ...] = ()  # what an INT8 file applied before keeping sites in float
    placement: str | None = None  # the runtime a variant of the precision's file was placed for (onnxruntime)
    # Engines (model.<precision>.engine):
    engine_manifest: str | None = None
    tensorrt_version: str | None = None
    gpu: str | None = None
    profile: EngineProfile | None = None

    @property
    def name(self) -> str:
        return self.path

    @property
    def source(self) -> object:
        """The model source recorded with ``model.onnx`` (JSON; ``source.recorded_source`` decodes and checks it)."""
        return self.options.get("source")

    @property
    def calibration_fingerprint(self) -> str | None:
        """The calibration set's fingerprint of a typed file, or None for a file made without calibration."""
        return None if self.calibration is None else self.calibration.fingerprint

    def options_as(self, kind: type[T]) -> T:
        """The recorded options as the making step's own record; a :class:`RecordError` when they are not one."""
        return decode(kind, self.options)


@dataclass
class ManifestRecord:
    """The whole of ``manifest.json``: the artifacts by file name, in the order recorded, and the skipped steps."""

    format: int = MANIFEST_FORMAT
    artifacts: dict[str, ArtifactEntry] = field(default_factory=dict)
    skipped: dict[str, str] | None = None  # step -> why it did not run or failed; absent when none


# A recorded failure's reason starts with one of these: on bad input (exit 3), or a failed check (exit 1).
FAILED_BAD_INPUT = "failed on bad input: "
FAILED = "failed: "


@dataclass(frozen=True)
class SkippedStep:
    """A step that did not run, or failed (its reason starts with ``failed``): what ``report`` lists."""

    step: str
    reason: str

    @property
    def failed(self) -> bool:
        return self.reason.startswith("failed")

    @property
    def bad_input(self) -> bool:
        """The step failed on its input (too few images, a full disk), not on a check: exit 3, as pipeline's."""
        return self.reason.startswith(FAILED_BAD_INPUT)

    @property
    def artifact(self) -> str | None:
        """The artifact the step makes (``int8 ONNX``: ``model.int8.onnx``), which its failure left unmade."""
        precision, _, kind = self.step.partition(" ")
        if precision not in ONNX_FILES:
            return None
        return {"ONNX": ONNX_FILES[precision], "engine": engine_file(precision)}.get(kind)


class Manifest:
    """``DIR/manifest.json``: one entry per artifact, keyed by file name, and the steps skipped there."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / MANIFEST_NAME
        self._record = ManifestRecord()
        if self.path.exists():
            self._record = _read(self.path)

    @property
    def _entries(self) -> dict[str, ArtifactEntry]:
        return self._record.artifacts

    @property
    def artifacts(self) -> dict[str, ArtifactEntry]:
        """Every recorded artifact by file name, in the order they were recorded."""
        return dict(self._entries)

    def entry(self, name: str) -> ArtifactEntry | None:
        return self._entries.get(name)

    def require(self, name: str, hint: str) -> ArtifactEntry:
        """The entry of an artifact that exists and still has the recorded sha256."""
        entry = self.entry(name)
        path = self.directory / name
        if entry is None or not path.exists():
            raise BadInputError(f"{path} is missing; {hint}")
        if sha256_file(path) != entry.sha256:
            raise BadInputError(f"{path} was changed after it was made (sha256 differs from the manifest); {hint}")
        return entry

    def is_current(self, name: str, parent_sha256: str | None, options: object) -> bool:
        """True when the artifact exists unchanged and was made from the same parent with the same options.

        ``options`` is the making step's record; the recorded one is decoded as its type and compared field by
        field, so a field the step adds with its default, or options an older tool spelled otherwise, compare
        as what they mean. Options that do not decode as that record are not current (the step makes it again).
        """
        entry = self.entry(name)
        path = self.directory / name
        if entry is None or not path.exists() or entry.parent_sha256 != parent_sha256:
            return False
        try:
            recorded = entry.options_as(type(options))
        except RecordError:
            return False
        return recorded == options and sha256_file(path) == entry.sha256

    def record(
        self,
        name: str,
        precision: str,
        parent_sha256: str | None = None,
        options: object = None,
        **fields: Any,
    ) -> ArtifactEntry:
        """Record ``name`` as it is now on disk: ``options`` is the making step's record, ``fields`` entry fields."""
        path = self.directory / name
        entry = ArtifactEntry(
            path=name,
            sha256=sha256_file(path),
            size_bytes=path.stat().st_size,
            precision=precision,
            parent_sha256=parent_sha256,
            options={} if options is None else encode(options),
            versions=tool_versions(),
            created=now_iso(),
            **fields,
        )
        # As a later read finds it (JSON lists, not tuples, inside the owners' records); a field of the wrong type
        # fails here, unwritten.
        self._entries[name] = decode(ArtifactEntry, json.loads(json.dumps(encode(entry))))
        self.save()
        return self._entries[name]

    def update(self, name: str, **fields: Any) -> None:
        self._entries[name] = replace(self._entries[name], **fields)
        self.save()

    @property
    def skipped(self) -> list[SkippedStep]:
        """Steps that did not run or failed, and why: what ``report`` lists, whichever commands ran."""
        return [SkippedStep(step, reason) for step, reason in (self._record.skipped or {}).items()]

    def record_skipped(self, step: str, reason: str | None) -> None:
        """Record why ``step`` did not run or failed, or with None that it has run since (written on a change only)."""
        steps = dict(self._record.skipped or {})
        if steps.get(step) == reason:
            return
        if reason is None:
            del steps[step]
        else:
            steps[step] = reason
        self._record.skipped = steps or None
        self.save()

    def forget(self, name: str) -> None:
        if self._entries.pop(name, None) is not None:
            self.save()

    def stale_reason(self, name: str, seen: frozenset[str] = frozenset()) -> str | None:
        """Why an artifact was made from an input that has changed since, following parents up to model.onnx.

        ``model.onnx`` is the root (its parent is a checkpoint); every other artifact's parent is the
        artifact in this manifest whose sha256 is its ``parent_sha256``. A parent that is gone (a
        re-export replaced model.onnx) or is itself stale makes the child stale; one recorded without
        a parent has no lineage to check. A hand-edited manifest whose parents form a cycle is refused.
        """
        if name in seen:
            raise BadInputError(
                f"{self.path}: the parents of {name} form a cycle; delete the manifest and run export again"
            )
        entry = self.entry(name)
        if entry is None or name == ONNX_FILES["fp32"] or entry.parent_sha256 is None:
            return None
        parents = {e.sha256: n for n, e in self.artifacts.items() if n != name}
        parent = parents.get(entry.parent_sha256)
        if parent is None:
            return "made from an earlier model.onnx (its parent's sha256 is no longer in the directory)"
        reason = self.stale_reason(parent, seen | {name})
        return None if reason is None else f"made from {parent}, which is stale ({reason})"

    def stale(self) -> dict[str, str]:
        """Every stale artifact and why."""
        return {name: reason for name in self.artifacts if (reason := self.stale_reason(name)) is not None}

    def save(self) -> None:
        """Write manifest.json, with each artifact's ``stale`` reason brought up to date first."""
        for name, entry in self._entries.items():
            self._entries[name] = replace(entry, stale=self.stale_reason(name))
        data = encode(self._record)
        if self._record.skipped is None:
            del data["skipped"]  # as manifests without skipped steps have always been written
        write_json(self.path, data)


@contextmanager
def recorded_step(directory: str | Path, step: str) -> Iterator[None]:
    """Run a step; record its failure (bad input, a failed check) in the manifest, or clear an earlier one.

    Every command records it, single ones as ``pipeline`` does, so that ``verify``, ``report`` and ``pipeline``
    derive one status from the directory whichever commands ran. The failure still goes on up (the exit code).
    """
    try:
        yield
    except (BadInputError, VerificationError) as exc:
        prefix = FAILED_BAD_INPUT if isinstance(exc, BadInputError) else FAILED
        # The step's own error is what the user must see: a manifest that cannot take the record (a full disk,
        # a malformed manifest) does not replace it.
        with contextlib.suppress(BadInputError, OSError):
            if (Path(directory) / MANIFEST_NAME).is_file():
                Manifest(directory).record_skipped(step, f"{prefix}{exc}")
        raise
    if (Path(directory) / MANIFEST_NAME).is_file():
        Manifest(directory).record_skipped(step, None)


def _read(path: Path) -> ManifestRecord:
    """The manifest at ``path``, every entry checked, so a hand-edited manifest fails here, once, in one line."""
    loaded = read_json(path)
    if not isinstance(loaded, dict) or not isinstance(loaded.get("artifacts"), dict):
        raise BadInputError(f"{path} is not a resnext-deploy manifest; delete it or use another --dir")
    if loaded.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
        raise BadInputError(
            f"{path}: format {str(loaded.get('format'))[:40]} is not one this resnext-deploy reads "
            f"({MANIFEST_FORMAT}); use the version that wrote it, or another --dir"
        )
    entries = {name: _entry(name, data, path) for name, data in loaded["artifacts"].items()}
    return ManifestRecord(MANIFEST_FORMAT, entries, _skipped(loaded.get("skipped"), path))


def _entry(name: str, data: object, path: Path) -> ArtifactEntry:
    """One entry as its record, with the fields later steps read of the right types.

    The model source's own fields are checked where it is read (``source.recorded_source``).
    """
    problem = None
    entry = None
    if not isinstance(data, dict):
        problem = f"is a {type(data).__name__}, not an object"
    elif not isinstance(data.get("sha256"), str) or not _SHA256.fullmatch(data["sha256"]):
        problem = "has no valid sha256"
    elif not isinstance(data.get("options", {}), dict):
        problem = "has options that are not an object"
    else:
        try:
            entry = decode(ArtifactEntry, {"path": name, **data})
        except RecordError as exc:
            where, _, what = str(exc).partition(": ")
            problem = f"has {where.removeprefix(ArtifactEntry.__name__ + '.')}: {what}"
    if entry is not None and name == ONNX_FILES["fp32"] and not isinstance(entry.source, dict):
        problem = "has no model source object in its options"
    if problem is not None or entry is None:
        raise BadInputError(f"{path}: the entry {str(name)[:80]!r} {problem}; delete the manifest and run export again")
    return entry


def _skipped(skipped: object, path: Path) -> dict[str, str] | None:
    """The skipped steps are an object of step -> reason strings (absent when none)."""
    if skipped is None:
        return None
    with contextlib.suppress(RecordError):
        if isinstance(skipped, dict):  # decode takes a mapping type's value as a mapping
            return decode(dict[str, str], skipped)
    raise BadInputError(
        f"{path}: 'skipped' is not an object of step names and reasons; delete the manifest and run export again"
    )
