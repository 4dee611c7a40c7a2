"""Typed errors, each with its exit code. The CLI turns them into one-line messages in one place."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    VERIFY_FAILED = 1
    USAGE = 2
    BAD_INPUT = 3
    BACKEND_UNAVAILABLE = 4
    BUSY = 5
    INTERNAL = 70
    INTERRUPTED = 130


class DeployError(Exception):
    """An expected failure with a message that says what is wrong and how to fix it."""

    exit_code: ExitCode = ExitCode.INTERNAL


class UsageError(DeployError):
    """A command line that cannot mean anything: an invalid choice, or an option that needs another."""

    exit_code = ExitCode.USAGE


class BadInputError(DeployError):
    """A file, directory, option value or data set that cannot be used as given."""

    exit_code = ExitCode.BAD_INPUT


class VerificationError(DeployError):
    """An artifact computed something other than its reference."""

    exit_code = ExitCode.VERIFY_FAILED


class BackendUnavailableError(DeployError):
    """An optional backend (TensorRT, CUDA, onnxruntime-gpu) is not installed or has no device."""

    exit_code = ExitCode.BACKEND_UNAVAILABLE


class BusyError(DeployError):
    """Another run holds the artifact directory's lock."""

    exit_code = ExitCode.BUSY


def one_line(exc: BaseException, limit: int = 300) -> str:
    """A library's exception text on one line, capped, for the one-line messages this tool prints."""
    text = " ".join(str(exc).split())
    return text[:limit] if text else type(exc).__name__
