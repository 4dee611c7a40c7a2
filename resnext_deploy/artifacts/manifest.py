"""``DIR/manifest.json``: one entry per artifact with its sha256, parent, options and tool versions."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInputError, VerificationError
from .precisions import ONNX_FILES
from .store import CALIBRATION_NAME, LOCK_NAME, engine_file, now_iso, read_json, sha256_file, write_json

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")


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


@dataclass(frozen=True)
class CalibrationRef:
    """Which calibration a typed file's ranges came from; the engine step copies its fingerprint into its manifest.

    Written by the typed-file step (``precision/typed.py``) and read back only through
    :attr:`ArtifactEntry.calibration`, so the key the writer sets is the key every reader finds.
    """

    fingerprint: str  # the calibration images' content fingerprint (``Dataset.fingerprint``)
    description: str
    count: int
    method: str
    percentile: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> CalibrationRef:
        """The recorded object; a missing or mistyped field is a ``ValueError`` (the manifest check names the file)."""
        if not isinstance(data, Mapping):
            raise ValueError("is not an object")
        types = {"fingerprint": str, "description": str, "count": int, "method": str, "percentile": (int, float)}
        for key, kind in types.items():
            if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
                raise ValueError(f"has no valid {key}")
        return cls(**{key: data[key] for key in types})


@dataclass(frozen=True)
class ArtifactEntry:
    """What ``manifest.json`` records about one artifact: the only reader of an entry's keys.

    A view over the recorded JSON object, so fields a newer step wrote pass through a rewrite unchanged.
    ``options`` and the records a step keeps (``parity``, ``search``, ``calibration``) stay JSON objects:
    each is written and read back by the one step that owns its shape.
    """

    name: str
    _record: Mapping[str, Any]

    @property
    def sha256(self) -> str:
        return str(self._record["sha256"])

    @property
    def precision(self) -> str | None:
        return self._record.get("precision")

    @property
    def size_bytes(self) -> int | None:
        return self._record.get("size_bytes")

    @property
    def parent_sha256(self) -> str | None:
        return self._record.get("parent_sha256")

    @property
    def created(self) -> str | None:
        return self._record.get("created")

    @property
    def stale(self) -> str | None:
        """Why the artifact was made from an input that has changed since, as the last save found it."""
        return self._record.get("stale")

    @property
    def options(self) -> Mapping[str, Any]:
        return self._record.get("options") or {}

    @property
    def source(self) -> object:
        """The model source recorded with ``model.onnx`` (JSON; ``source.recorded_source`` parses and checks it)."""
        return self.options.get("source")

    @property
    def weights_warning(self) -> str | None:
        return self._record.get("weights_warning")

    @property
    def heldout(self) -> str | None:
        """The held-out data a typed file was checked on when it was made (None for other artifacts)."""
        return self._record.get("heldout")

    @property
    def heldout_synthetic(self) -> bool:
        return bool(self._record.get("heldout_synthetic"))

    @property
    def parity(self) -> Any:
        """The parity record of the check made with the file (its maker's ``Parity.to_dict``), or None."""
        return self._record.get("parity")

    @property
    def calibration(self) -> CalibrationRef | None:
        """The calibration a typed file was made with (checked when the manifest was read), or None."""
        recorded = self._record.get("calibration")
        return None if recorded is None else CalibrationRef.from_dict(recorded)

    @property
    def calibration_fingerprint(self) -> str | None:
        """The calibration set's fingerprint of a typed file, or None for a file made without calibration."""
        return None if self.calibration is None else self.calibration.fingerprint

    @property
    def search(self) -> Mapping[str, Any] | None:
        """The INT8 search record (``SearchRecord.to_dict``), or None."""
        return self._record.get("search")

    @property
    def fp32_nodes(self) -> tuple[str, ...]:
        return tuple(self._record.get("fp32_nodes") or ())

    @property
    def quantized_nodes(self) -> list[str] | None:
        """The nodes an INT8 file quantizes, as recorded; None when the entry records none (not an INT8 file)."""
        return self._record.get("quantized_nodes")

    @property
    def quantized_tensors(self) -> list[str] | None:
        return self._record.get("quantized_tensors")

    @property
    def remedies(self) -> tuple[str, ...]:
        """What an INT8 file applied before keeping sites in float (equalization, bias correction)."""
        return tuple(self._record.get("remedies") or ())


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
        self._data: dict[str, Any] = {"format": MANIFEST_FORMAT, "artifacts": {}}
        if self.path.exists():
            loaded = read_json(self.path)
            if not isinstance(loaded, dict) or not isinstance(loaded.get("artifacts"), dict):
                raise BadInputError(f"{self.path} is not a resnext-deploy manifest; delete it or use another --dir")
            if loaded.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
                raise BadInputError(
                    f"{self.path}: format {str(loaded.get('format'))[:40]} is not one this resnext-deploy reads "
                    f"({MANIFEST_FORMAT}); use the version that wrote it, or another --dir"
                )
            _check_entries(loaded["artifacts"], self.path)
            _check_skipped(loaded.get("skipped"), self.path)
            self._data = loaded

    @property
    def _entries(self) -> dict[str, dict[str, Any]]:
        return self._data["artifacts"]

    @property
    def artifacts(self) -> dict[str, ArtifactEntry]:
        """Every recorded artifact by file name, in the order they were recorded."""
        return {name: ArtifactEntry(name, record) for name, record in self._entries.items()}

    def entry(self, name: str) -> ArtifactEntry | None:
        record = self._entries.get(name)
        return None if record is None else ArtifactEntry(name, record)

    def require(self, name: str, hint: str) -> ArtifactEntry:
        """The entry of an artifact that exists and still has the recorded sha256."""
        entry = self.entry(name)
        path = self.directory / name
        if entry is None or not path.exists():
            raise BadInputError(f"{path} is missing; {hint}")
        if sha256_file(path) != entry.sha256:
            raise BadInputError(f"{path} was changed after it was made (sha256 differs from the manifest); {hint}")
        return entry

    def is_current(self, name: str, parent_sha256: str | None, options: dict[str, Any]) -> bool:
        """True when the artifact exists unchanged and was made from the same parent with the same options."""
        entry = self.entry(name)
        path = self.directory / name
        if entry is None or not path.exists():
            return False
        return (
            entry.parent_sha256 == parent_sha256
            and entry.options == json.loads(json.dumps(options, default=str))
            and sha256_file(path) == entry.sha256
        )

    def record(
        self,
        name: str,
        precision: str,
        parent_sha256: str | None = None,
        options: dict[str, Any] | None = None,
        calibration: CalibrationRef | None = None,
        **extra: Any,
    ) -> ArtifactEntry:
        """Record ``name`` as it is now on disk; ``extra`` holds the making step's own fields (JSON values)."""
        path = self.directory / name
        if calibration is not None:
            extra["calibration"] = calibration.to_dict()
        self._entries[name] = {
            "path": name,
            "sha256": sha256_file(path),
            "size_bytes": path.stat().st_size,
            "precision": precision,
            "parent_sha256": parent_sha256,
            "options": json.loads(json.dumps(options or {}, default=str)),
            "versions": tool_versions(),
            "created": now_iso(),
            **extra,
        }
        self.save()
        return ArtifactEntry(name, self._entries[name])

    def update(self, name: str, **fields: Any) -> None:
        self._entries[name].update(json.loads(json.dumps(fields, default=str)))
        self.save()

    @property
    def skipped(self) -> list[SkippedStep]:
        """Steps that did not run or failed, and why: what ``report`` lists, whichever commands ran."""
        return [SkippedStep(step, reason) for step, reason in (self._data.get("skipped") or {}).items()]

    def record_skipped(self, step: str, reason: str | None) -> None:
        """Record why ``step`` did not run or failed, or with None that it has run since (written on a change only)."""
        steps = dict(self._data.get("skipped") or {})
        if steps.get(step) == reason:
            return
        if reason is None:
            del steps[step]
        else:
            steps[step] = reason
        self._data["skipped"] = steps
        if not steps:
            del self._data["skipped"]
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
        for name, record in self._entries.items():
            reason = self.stale_reason(name)
            if reason is None:
                record.pop("stale", None)
            else:
                record["stale"] = reason
        write_json(self.path, self._data)


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


def _check_entries(artifacts: dict[str, Any], path: Path) -> None:
    """Every entry is an object with the fields later steps read, so a hand-edited manifest fails here, once.

    The model source's own fields are checked where it is read (``ModelSource.from_dict``).
    """
    for name, entry in artifacts.items():
        problem = None
        if not isinstance(entry, dict):
            problem = f"is a {type(entry).__name__}, not an object"
        elif not isinstance(entry.get("sha256"), str) or not _SHA256.fullmatch(entry["sha256"]):
            problem = "has no valid sha256"
        elif not isinstance(entry.get("options", {}), dict):
            problem = "has options that are not an object"
        elif entry.get("parent_sha256") is not None and not isinstance(entry["parent_sha256"], str):
            problem = "has a parent_sha256 that is not a string"
        elif name == ONNX_FILES["fp32"] and not isinstance(entry.get("options", {}).get("source"), dict):
            problem = "has no model source object in its options"
        elif entry.get("calibration") is not None:
            try:
                CalibrationRef.from_dict(entry["calibration"])
            except ValueError as exc:
                problem = f"has a calibration record that {exc}"
        if problem is None:
            problem = _wrong_type(entry)
        if problem:
            raise BadInputError(
                f"{path}: the entry {str(name)[:80]!r} {problem}; delete the manifest and run export again"
            )


# Fields later steps and the report read, and the JSON types each may have (None: absent or null).
_ENTRY_TYPES: dict[str, tuple[type, ...]] = {
    "size_bytes": (int,),
    "precision": (str,),
    "created": (str,),
    "heldout": (str,),
    "weights_warning": (str,),
    "stale": (str,),
    "remedies": (list,),
    "fp32_nodes": (list,),
    "quantized_nodes": (list,),
    "quantized_tensors": (list,),
    "search": (dict,),
    "parity": (dict,),
    "calibration": (dict,),
}


def _wrong_type(entry: Mapping[str, Any]) -> str | None:
    """Which field of an entry is not of its type (a string size, a list where an object belongs), or None."""
    for key, kinds in _ENTRY_TYPES.items():
        value = entry.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, kinds):
            return f"has {key} {str(value)[:40]!r}, a {type(value).__name__}, not a {kinds[0].__name__}"
        if kinds == (list,) and not all(isinstance(item, str) for item in value):
            return f"has {key} with items that are not strings"
    return None


def _check_skipped(skipped: object, path: Path) -> None:
    """The skipped steps are an object of step -> reason strings (absent when none)."""
    if skipped is None:
        return
    if not isinstance(skipped, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in skipped.items()):
        raise BadInputError(
            f"{path}: 'skipped' is not an object of step names and reasons; delete the manifest and run export again"
        )
