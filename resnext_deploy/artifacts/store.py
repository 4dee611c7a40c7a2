"""Files in the artifact directory: names, atomic writes, sha256, JSON, the run lock."""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import math
import os
import shlex
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import BadInputError, BusyError

LOCK_NAME = ".resnext-deploy.lock"
CALIBRATION_NAME = "calibration.json"  # activation ranges (precision/calibration.py), beside the files it made
PARTIAL_PREFIX = ".resnext-deploy-partial."  # atomic writes' temporary files; only these are ever cleaned up


def engine_file(precision: str) -> str:
    """``model.<precision>.engine``; its manifest is the same name plus ``.json``."""
    return f"model.{precision}.engine"


def sha256_file(path: str | Path) -> str:
    """The file's sha256; a FIFO, device or socket (a manifest may record ``/dev/zero``) is refused, not read.

    Opened without blocking, so a FIFO with no writer does not hang the open before the check.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadInputError(f"{path} is not a regular file (a device, FIFO or socket); point at a regular file")
    os.set_blocking(fd, True)
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as handle:
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


def _refuse_special(path: Path) -> None:
    """A device, FIFO, socket or directory where a file belongs is refused, never replaced or written through.

    Links are followed: ``/dev/stdout`` is a link to a device or pipe, and replacing it would be wrong too.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _output_error(path, exc) from None
    if not stat.S_ISREG(mode):
        kind = "directory" if stat.S_ISDIR(mode) else "special file (device, FIFO or socket)"
        raise BadInputError(
            f"cannot write {path}: it exists and is a {kind}, not a regular file; remove it or choose another path"
        )


def check_writable(path: str | Path) -> None:
    """Fail now, before any work, if ``path`` could not be written atomically later."""
    path = Path(path)
    _refuse_special(path)
    parent = path.parent
    if not parent.is_dir():
        raise BadInputError(f"cannot write {path}: {parent} is not a directory; create it or choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInputError(f"cannot write {path}: permission denied; choose a writable path")


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it into place only if the block succeeds."""
    final = Path(final)
    _refuse_special(final)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f"{PARTIAL_PREFIX}{final.name}.", suffix=".partial", dir=final.parent)
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
    """UTF-8; a name that was not UTF-8 on disk (a lone surrogate) is written as a backslash escape."""
    write_bytes(path, text.encode("utf-8", "backslashreplace"))


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path} is not valid JSON ({exc}); delete it and run again") from None
    except RecursionError:
        raise BadInputError(
            f"{path} is nested too deeply to be a resnext-deploy file; delete it and run again"
        ) from None


def cache_error(path: str | Path, problem: str) -> BadInputError:
    """Exit 3 for a cache file (calibration.json, int8_search.json) whose fields are not what this tool wrote."""
    return BadInputError(f"{path} {problem}; it is a cache: delete it (rm {shlex.quote(str(path))}) and run again")


def is_number(value: Any) -> bool:
    """A finite int or float from JSON (not a bool, not NaN or Infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _open_lock(path: Path) -> int:
    """Open (or create) the lock file itself: never through a symlink, never a FIFO or device."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BadInputError(
                f"{path} is a symlink; a lock file is never followed, so remove it and run again"
            ) from None
        raise _output_error(path, exc) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadInputError(f"{path} is not a regular file; remove it and run again")
    return fd


def _remove_stale_partials(directory: Path) -> None:
    """Temporary files a killed run left (this tool's prefix only): only a lock holder writes here, none is in use."""
    for leftover in directory.glob(f"{PARTIAL_PREFIX}*.partial"):
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.lstat(leftover).st_mode):
                leftover.unlink()


@contextlib.contextmanager
def locked(directory: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the directory so two runs never write the same artifacts.

    Once held, temporary files a killed run left behind are removed.
    """
    path = Path(directory) / LOCK_NAME
    with os.fdopen(_open_lock(path), "r+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(
                f"another resnext-deploy run is using {directory}; wait for it to finish or use another --dir"
            ) from None
        _remove_stale_partials(Path(directory))
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
