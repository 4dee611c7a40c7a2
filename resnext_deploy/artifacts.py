"""The artifact directory: atomic writes, sha256, the manifest and the run lock."""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import BadInputError, BusyError, one_line

MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".resnext-deploy.lock"
PRECISIONS = ("fp32", "fp16", "int8")
ONNX_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}


def engine_file(precision: str) -> str:
    """``model.<precision>.engine``; its manifest is the same name plus ``.json``."""
    return f"model.{precision}.engine"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _output_error(path: Path, exc: OSError) -> BadInputError:
    if exc.errno == errno.ENOSPC:
        return BadInputError(f"no space left on the device while writing {path}; free some space and run again")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return BadInputError(f"cannot write {path}: permission denied; choose a writable --dir")
    return BadInputError(f"cannot write {path}: {exc.strerror or exc}; choose another --dir")


def prepare_dir(directory: str | Path) -> Path:
    """Create the artifact directory if needed and check that it is a writable directory."""
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise BadInputError(f"--dir {path} is a file, not a directory; pass a directory path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _output_error(path, exc) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise BadInputError(f"cannot write to --dir {path}: permission denied; choose a writable directory")
    return path


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it into place only if the block succeeds."""
    final = Path(final)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    except OSError as exc:
        raise _output_error(final, exc) from None
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts get the mode a plain open() would give
    try:
        yield tmp
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _output_error(final, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path} is not valid JSON ({exc}); delete it and run again") from None


def _tensors(graph) -> Iterator[Any]:
    """Every TensorProto a graph holds: initializers, sparse ones, node attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def load_onnx(path: str | Path, load_external_data: bool = True) -> Any:
    """Parse an ONNX file; a file that does not parse, or external data outside its directory, is a BadInputError.

    External data (weights kept in side files) must be relative paths to files inside the model's own
    directory, symlinks resolved: a location such as ``../../etc/shadow`` is refused before anything,
    ONNX Runtime, TensorRT's parser or trtexec, would read it.
    """
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf and onnx raise their own untyped errors on bad bytes
        detail = one_line(exc)
        raise BadInputError(f"{path} is not a readable ONNX model ({detail}); delete it and make it again") from None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset > onnx.defs.onnx_opset_version():
        raise BadInputError(
            f"{path} uses ONNX opset {opset}, newer than any this onnx {onnx.__version__} knows "
            f"({onnx.defs.onnx_opset_version()}); export it again with a lower --opset"
        )
    root = path.parent.resolve()
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        target = (root / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(root):
            raise BadInputError(
                f"{path} keeps tensor {tensor.name!r} in {location!r}, outside its directory; external data "
                f"must be a file inside {root}, so this model is refused"
            )
        if not target.is_file():
            raise BadInputError(f"{path} keeps tensor {tensor.name!r} in {location!r}, which is missing")
    if load_external_data:
        try:
            onnx.load_external_data_for_model(model, str(root))
        except Exception as exc:  # noqa: BLE001 - a short or unreadable side file
            raise BadInputError(f"cannot read the external data of {path} ({one_line(exc)})") from None
    return model


def tool_versions() -> dict[str, str]:
    """Versions of the libraries that shape an artifact (imported lazily, all light here)."""
    import numpy
    import onnx
    import onnxruntime
    import torch

    from . import __version__

    return {
        "resnext_deploy": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
    }


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Manifest:
    """``DIR/manifest.json``: one entry per artifact, keyed by file name."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / MANIFEST_NAME
        self.data: dict[str, Any] = {"format": 1, "artifacts": {}}
        if self.path.exists():
            loaded = read_json(self.path)
            if not isinstance(loaded, dict) or not isinstance(loaded.get("artifacts"), dict):
                raise BadInputError(f"{self.path} is not a resnext-deploy manifest; delete it or use another --dir")
            self.data = loaded

    @property
    def artifacts(self) -> dict[str, dict[str, Any]]:
        return self.data["artifacts"]

    def entry(self, name: str) -> dict[str, Any] | None:
        return self.artifacts.get(name)

    def require(self, name: str, hint: str) -> dict[str, Any]:
        """The entry of an artifact that exists and still has the recorded sha256."""
        entry = self.entry(name)
        path = self.directory / name
        if entry is None or not path.exists():
            raise BadInputError(f"{path} is missing; {hint}")
        if sha256_file(path) != entry["sha256"]:
            raise BadInputError(f"{path} was changed after it was made (sha256 differs from the manifest); {hint}")
        return entry

    def is_current(self, name: str, parent_sha256: str | None, options: dict[str, Any]) -> bool:
        """True when the artifact exists unchanged and was made from the same parent with the same options."""
        entry = self.entry(name)
        path = self.directory / name
        if entry is None or not path.exists():
            return False
        return (
            entry.get("parent_sha256") == parent_sha256
            and entry.get("options") == json.loads(json.dumps(options, default=str))
            and sha256_file(path) == entry.get("sha256")
        )

    def record(
        self,
        name: str,
        precision: str,
        parent_sha256: str | None = None,
        options: dict[str, Any] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        path = self.directory / name
        entry = {
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
        self.artifacts[name] = entry
        self.save()
        return entry

    def update(self, name: str, **fields: Any) -> None:
        self.artifacts[name].update(json.loads(json.dumps(fields, default=str)))
        self.save()

    def forget(self, name: str) -> None:
        if self.artifacts.pop(name, None) is not None:
            self.save()

    def save(self) -> None:
        write_json(self.path, self.data)


@contextlib.contextmanager
def locked(directory: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the directory so two runs never write the same artifacts."""
    path = Path(directory) / LOCK_NAME
    try:
        handle = open(path, "a+")  # noqa: SIM115 - held open for the lock's lifetime below
    except OSError as exc:
        raise _output_error(path, exc) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(
                f"another resnext-deploy run is using {directory}; wait for it to finish or use another --dir"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
