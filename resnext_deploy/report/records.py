"""The report trusts only what it has checked: every field of a typed record read back has its declared type.

A hand-edited or broken ``verify.json`` or ``bench.json`` (a string where a number belongs, ``machine`` as a
list) becomes one line naming the file and the key, exit 3, never a Python error while the report renders.
The check walks the dataclass records by their annotations, so a field a command adds is checked too.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any, Union

from ..errors import BadInputError

# Record fields whose JSON key differs: the rows are ``results`` in the files, a parity's fields sit in its row.
_JSON_KEYS = {"rows": "results", "parity": None}
# bench's settings the report reads, each a number.
SETTINGS_NUMBERS = ("warmup_ms", "rounds", "min_iterations", "slice_s", "wall_s", "budget_s")


class _Mismatch(Exception):
    def __init__(self, where: str, expected: str, value: Any) -> None:
        super().__init__(where)
        self.where, self.expected, self.value = where, expected, value


def check_record(record: Any, file: str, command: str) -> None:
    """Raise ``BadInputError`` naming ``file`` and the key when a field of ``record`` is not of its declared type."""
    try:
        _check(record, type(record), "")
    except _Mismatch as exc:
        shown = repr(exc.value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise BadInputError(
            f"{file}: {exc.where or 'the file'} is {_kind(exc.value)} {shown}, not {exc.expected}; "
            f"run {command} again (or restore the file)"
        ) from None


def check_settings(settings: Mapping[str, Any], file: str) -> None:
    """bench's ``settings`` record: the keys the report reads are there and are numbers."""
    for key in SETTINGS_NUMBERS:
        if key not in settings:
            raise BadInputError(f"{file}: settings.{key} is missing; run bench again (or restore the file)")
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadInputError(
                f"{file}: settings.{key} is {_kind(value)} {str(value)[:40]!r}, not a number; run bench again"
            )


def _kind(value: Any) -> str:
    return "null" if value is None else f"a {type(value).__name__}"


def _join(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def _check(value: Any, hint: Any, where: str) -> None:
    """``value`` against ``hint`` (a resolved annotation); unknown kinds of hints are not checked."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return
    if origin in (Union, types.UnionType):
        found: list[_Mismatch] = []
        for option in args:
            try:
                _check(value, option, where)
                return
            except _Mismatch as exc:
                found.append(exc)
        deepest = max(found, key=lambda exc: len(exc.where))
        if deepest.where != where:  # the value is of the right kind, a field inside it is not
            raise deepest
        raise _Mismatch(where, " or ".join(_name(a) for a in args), value)
    if hint is type(None):
        if value is not None:
            raise _Mismatch(where, "null", value)
        return
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Mismatch(where, "a number", value)
        return
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Mismatch(where, "an integer", value)
        return
    if hint in (str, bool):
        if not isinstance(value, hint):
            raise _Mismatch(where, f"a {hint.__name__}", value)
        return
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, hint):
            raise _Mismatch(where, "an object", value)
        _check_dataclass(value, where)
        return
    if isinstance(hint, type) and issubclass(hint, Enum):
        if not isinstance(value, hint):
            raise _Mismatch(where, _name(hint), value)
        return
    container = origin or hint
    if container in (list, tuple, Sequence, typing.Sequence):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch(where, "a list", value)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise _Mismatch(where, f"a list of {len(args)}", value)
            for i, (item, item_hint) in enumerate(zip(value, args, strict=True)):
                _check(item, item_hint, _join(where, i))
        elif args:
            for i, item in enumerate(value):
                _check(item, args[0], _join(where, i))
        return
    if container in (dict, Mapping, typing.Mapping):
        if not isinstance(value, Mapping):
            raise _Mismatch(where, "an object", value)
        if len(args) == 2:
            for key, item in value.items():
                _check(item, args[1], _join(where, str(key)))
        return


def _check_dataclass(value: Any, where: str) -> None:
    try:
        hints = typing.get_type_hints(type(value))
    except (NameError, TypeError):  # an annotation only a type checker resolves: the record is not walked
        return
    for f in dataclasses.fields(value):
        if f.name not in hints or f.name.startswith("_"):
            continue
        key = _JSON_KEYS.get(f.name, f.name)
        _check(getattr(value, f.name), hints[f.name], where if key is None else _join(where, key))


def _name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    return {float: "a number", int: "an integer", str: "a string", bool: "a bool"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )
