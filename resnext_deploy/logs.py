"""The project's logging: everything that is not a result goes to stderr, library chatter only with ``--verbose``.

Results (tables, the trtexec line, JSON) are printed to stdout by the CLI itself. Progress messages
of this package use :func:`log`; warnings of the ``warnings`` module and the log records of torch,
onnx, onnxruntime, PyTriton and OpenVINO go through Python's :mod:`logging` to one stderr handler,
quiet unless the user asked for them, so that a one-line error is not buried under library noise.
"""

from __future__ import annotations

import logging
import sys
import warnings

# ONNX Runtime severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal.
ORT_QUIET, ORT_VERBOSE = 3, 1

_state = {"verbose": False}


def setup(verbose: bool = False) -> None:
    """Route library warnings and log records through one stderr handler; quiet unless ``verbose``.

    Called once by the CLI before any command runs; calling it again replaces the earlier setting.
    """
    _state["verbose"] = verbose
    handler = _stderr_handler()
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_resnext_deploy", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.CRITICAL)
    logging.captureWarnings(False)  # re-hook: something (a test harness) may have restored warnings.showwarning
    logging.captureWarnings(True)
    warnings.simplefilter("default" if verbose else "ignore")
    try:
        import onnxruntime

        onnxruntime.set_default_logger_severity(ort_severity())
    except ImportError:  # pragma: no cover - onnxruntime is a dependency; the gpu extra replaces it
        pass


def _stderr_handler() -> logging.Handler:
    """A Rich handler in a terminal, plain lines otherwise (a CI log or a file)."""
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler._resnext_deploy = True  # type: ignore[attr-defined]
    return handler


def verbose() -> bool:
    """Whether the user asked for library logs (``--verbose``)."""
    return _state["verbose"]


def ort_severity() -> int:
    """The log severity for ONNX Runtime sessions: errors only, or info lines with ``--verbose``."""
    return ORT_VERBOSE if _state["verbose"] else ORT_QUIET


def log(message: str) -> None:
    """A progress or status line of this tool: always on stderr, so stdout holds only results."""
    print(message, file=sys.stderr, flush=True)
