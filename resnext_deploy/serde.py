"""One encode/decode for every JSON record the tool writes: typed dataclasses in the code, JSON values in the files.

Each file in DIR is a dataclass owned by the module that writes it; this module turns one into plain JSON values
(``encode``) and back (``decode``), with cattrs doing the walking. Decoding is strict about types, because a file
read back may have been edited by hand: a string where a number belongs, or a bool where an int belongs, is an
error naming the field (``$.tensors['x'].min``), never a silent conversion. Keys a record does not declare are
ignored, so a newer tool's extra fields do not break an older reader. A union of JSON scalars (``int | str``) keeps
the value's own type, which must be one of the union's.

Two field markers keep a file's layout where it is not the record's shape:
``field(metadata={JSON_KEY: "cpu flags"})`` writes a field under another key (one that is not a Python name),
and ``field(metadata=INLINE)`` writes a nested record's fields inline in its parent's object (nulls for a
``None`` one). Strict JSON has no NaN: ``nan_as_null=True`` writes a non-finite float as null and reads null in
a float field back as NaN.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from enum import Enum
from typing import Any, TypeVar

import cattrs
from cattrs.errors import AttributeValidationNote
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

T = TypeVar("T")

JSON_KEY = "json_key"  # a dataclass field's metadata key: the name it has in the JSON file
INLINE = {"serde_inline": True}  # field metadata: the nested record's fields sit in its parent's object
_SCALARS = (str, int, float, bool, type(None))


class RecordError(ValueError):
    """A JSON value that does not decode into its record; the message says where, in one line."""


def _strict_float(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _strict_int(value: Any, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _strict_str(value: Any, kind: type) -> str | Enum:
    if _is_enum(kind):  # a str-valued Enum dispatches here (str comes first in its MRO)
        return _enum_member(value, kind)
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strict_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {type(value).__name__}")
    return value


def _is_enum(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, Enum)


def _enum_member(value: Any, kind: type[Enum]) -> Enum:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(repr(member.value) for member in kind)
        raise ValueError(f"expected one of {choices}, got {value!r}") from None


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def _nan_from_null(value: Any, kind: type) -> float:
    return math.nan if value is None else _strict_float(value, kind)


def _is_scalar_union(kind: Any) -> bool:
    """``int | str``, ``str | int | float | bool``: a union of two or more JSON scalar types besides null."""
    if typing.get_origin(kind) not in (typing.Union, types.UnionType):
        return False
    args = typing.get_args(kind)
    return all(arg in _SCALARS for arg in args) and sum(arg is not type(None) for arg in args) >= 2


def _scalar_union(value: Any, kind: Any) -> Any:
    """The value as it is, when its own JSON type is one of the union's (an integer also fits a float)."""
    args = typing.get_args(kind)
    own = type(value)
    if own in args:
        return value
    if own is int and float in args:
        return float(value)
    names = " or ".join("null" if arg is type(None) else arg.__name__ for arg in args)
    raise TypeError(f"expected {names}, got {own.__name__}")


def _is_record(kind: Any) -> bool:
    return dataclasses.is_dataclass(kind) and isinstance(kind, type)


def _has_layout(kind: Any) -> bool:
    return _is_record(kind) and any(
        JSON_KEY in f.metadata or "serde_inline" in f.metadata for f in dataclasses.fields(kind)
    )


def _renamed(kind: type) -> dict[str, str]:
    return {f.name: f.metadata[JSON_KEY] for f in dataclasses.fields(kind) if JSON_KEY in f.metadata}


def _inline_record(hint: Any) -> tuple[type, bool]:
    """The record type of an inline field (``R`` or ``R | None``) and whether it may be None."""
    options = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return options[0], len(options) < len(typing.get_args(hint))


def _own_keys(kind: type) -> set[str]:
    return {f.metadata.get(JSON_KEY, f.name) for f in dataclasses.fields(kind) if "serde_inline" not in f.metadata}


def _structure_record(kind: type, converter: cattrs.Converter) -> Callable[[Any, type], Any]:
    """A dataclass from a JSON object (renamed keys and inline records too); anything else is refused by name."""
    fields = dataclasses.fields(kind)
    hints = typing.get_type_hints(kind) if any("serde_inline" in f.metadata for f in fields) else {}
    inline = {f.name: _inline_record(hints[f.name]) for f in fields if "serde_inline" in f.metadata}
    renamed = _renamed(kind)
    overrides: dict[str, Any] = {name: override(rename=key) for name, key in renamed.items()}
    overrides.update({name: override(struct_hook=lambda value, _: value) for name in inline})
    generated: Callable[[Any, type], Any] = make_dict_structure_fn(kind, converter, **overrides)
    own = _own_keys(kind)

    def structure(data: Any, _: type) -> Any:
        if not isinstance(data, dict):
            raise TypeError(f"expected an object for {kind.__name__}, got {type(data).__name__}")
        records: dict[str, Any] = {}
        for name, (record, optional) in inline.items():
            keys = [f.name for f in dataclasses.fields(record) if f.name not in own]
            absent = optional and all(data.get(key) is None for key in keys)
            records[name] = None if absent else converter.structure(data, record)
        try:
            return generated({**data, **records}, kind)
        except cattrs.ClassValidationError as exc:
            _rename_notes(exc, renamed)
            raise

    return structure


def _rename_notes(exc: cattrs.ClassValidationError, renamed: dict[str, str]) -> None:
    """Errors name a renamed field by its key in the file, where the reader can find it."""
    for inner in exc.exceptions:
        notes = getattr(inner, "__notes__", [])
        for i, note in enumerate(notes):
            if isinstance(note, AttributeValidationNote) and note.name in renamed:
                notes[i] = AttributeValidationNote(note, renamed[note.name], note.type)


def _unstructure_layout(kind: type, converter: cattrs.Converter) -> Callable[[Any], Any]:
    fields = dataclasses.fields(kind)
    hints = typing.get_type_hints(kind)
    inline = {f.name: _inline_record(hints[f.name])[0] for f in fields if "serde_inline" in f.metadata}
    overrides: dict[str, Any] = {name: override(rename=key) for name, key in _renamed(kind).items()}
    generated: Callable[[Any], dict[str, Any]] = make_dict_unstructure_fn(kind, converter, **overrides)
    own = _own_keys(kind)

    def unstructure(record: Any) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for key, value in generated(record).items():
            if key not in inline:
                data[key] = value
                continue
            nested = dict.fromkeys(f.name for f in dataclasses.fields(inline[key])) if value is None else value
            data.update({k: v for k, v in nested.items() if k not in own})
        return data

    return unstructure


def _make_converter(nan_as_null: bool) -> cattrs.Converter:
    converter = cattrs.Converter(detailed_validation=True)
    floats = _nan_from_null if nan_as_null else _strict_float
    for kind, hook in ((float, floats), (int, _strict_int), (str, _strict_str), (bool, _strict_bool)):
        converter.register_structure_hook(kind, hook)
    converter.register_structure_hook(Enum, _enum_member)
    converter.register_unstructure_hook(Enum, _plain)
    converter.register_unstructure_hook(str, _plain)
    converter.register_structure_hook_func(_is_scalar_union, _scalar_union)
    converter.register_structure_hook_factory(_is_record, lambda kind: _structure_record(kind, converter))
    converter.register_unstructure_hook_factory(_has_layout, lambda kind: _unstructure_layout(kind, converter))
    return converter


_converter = _make_converter(nan_as_null=False)
_nan_converter = _make_converter(nan_as_null=True)


def _json_values(value: Any, nan_as_null: bool) -> Any:
    """Tuples as lists (what JSON reads back), and with ``nan_as_null`` non-finite floats as null."""
    if isinstance(value, float):
        return None if nan_as_null and not math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: _json_values(v, nan_as_null) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_values(v, nan_as_null) for v in value]
    return value


def encode(record: Any, *, nan_as_null: bool = False) -> Any:
    """``record`` (a dataclass, or containers of them) as JSON values: dicts, lists, strings, numbers, None.

    ``nan_as_null``: a non-finite float is written as null, for files that are strict JSON.
    """
    return _json_values(_converter.unstructure(record), nan_as_null)


def decode(cls: type[T], data: Any, *, nan_as_null: bool = False) -> T:
    """``data`` (parsed JSON) as a ``cls``; raises :class:`RecordError` saying which field is wrong and how.

    ``nan_as_null``: null in a float field (not an optional one) is read as NaN, as ``encode`` wrote it.
    """
    if dataclasses.is_dataclass(cls) and not isinstance(data, dict):
        raise RecordError(f"expected an object for {cls.__name__}, got {type(data).__name__}")
    try:
        return (_nan_converter if nan_as_null else _converter).structure(data, cls)
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise RecordError(_first_problem(exc, cls)) from None


def _first_problem(exc: Exception, cls: type) -> str:
    name = getattr(cls, "__name__", str(cls))
    if isinstance(exc, cattrs.BaseValidationError):
        problems = cattrs.transform_error(exc, path=name, format_exception=_problem_text)
        if problems:
            text, _, where = problems[0].rpartition(" @ ")
            return f"{where}: {text}"
        return f"not a valid {name}"
    if isinstance(exc, AttributeError):  # a mapping given something without .items()
        return f"not a valid {name}: expected an object"
    return f"not a valid {name}: {exc}"


def _problem_text(exc: BaseException, kind: type | None) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, (TypeError, ValueError)) and str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, kind)
