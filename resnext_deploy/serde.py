"""One encode/decode for every JSON record the tool writes: typed dataclasses in the code, JSON values in the files.

Each file in DIR is a dataclass owned by the module that writes it; this module turns one into plain JSON values
(``encode``) and back (``decode``), with cattrs doing the walking. Decoding is strict about types, because a file
read back may have been edited by hand: a string where a number belongs, or a bool where an int belongs, is an
error naming the field (``$.tensors['x'].min``), never a silent conversion. Keys a record does not declare are
ignored, so a newer tool's extra fields do not break an older reader. A field whose JSON key is not a Python
name (``"cpu flags"``) says so in its metadata (``field(metadata={JSON_KEY: "cpu flags"})``); a union of JSON
scalars (``int | str``) keeps the value's own type, which must be one of the union's.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from enum import Enum
from typing import Any, TypeVar

import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

T = TypeVar("T")
JSON_KEY = "json_key"  # a dataclass field's metadata key: the name it has in the JSON file
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


def _strict_str(value: Any, kind: type) -> str:
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


def _renamed(kind: Any) -> dict[str, Any]:
    return {f.name: override(rename=f.metadata[JSON_KEY]) for f in dataclasses.fields(kind) if JSON_KEY in f.metadata}


def _has_json_keys(kind: Any) -> bool:
    return dataclasses.is_dataclass(kind) and isinstance(kind, type) and bool(_renamed(kind))


def _is_record(kind: Any) -> bool:
    return dataclasses.is_dataclass(kind) and isinstance(kind, type)


def _structure_record(kind: Any) -> Any:
    """A dataclass from a JSON object (its renamed keys too); anything but an object is refused by name."""
    build = make_dict_structure_fn(kind, _converter, **_renamed(kind))

    def structure(value: Any, _: type) -> Any:
        if not isinstance(value, dict):
            raise TypeError(f"expected an object for {kind.__name__}, got {type(value).__name__}")
        return build(value, kind)

    return structure


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


_converter = cattrs.Converter(detailed_validation=True)
for _kind, _hook in ((float, _strict_float), (int, _strict_int), (str, _strict_str), (bool, _strict_bool)):
    _converter.register_structure_hook(_kind, _hook)
_converter.register_structure_hook(Enum, _enum_member)
_converter.register_unstructure_hook(Enum, _plain)
_converter.register_unstructure_hook(str, _plain)
_converter.register_structure_hook_func(_is_scalar_union, _scalar_union)
_converter.register_structure_hook_factory(_is_record, _structure_record)
_converter.register_unstructure_hook_factory(
    _has_json_keys, lambda kind: make_dict_unstructure_fn(kind, _converter, **_renamed(kind))
)


def encode(record: Any) -> Any:
    """``record`` (a dataclass, or containers of them) as JSON values: dicts, lists, strings, numbers, None."""
    return _converter.unstructure(record)


def decode(cls: type[T], data: Any) -> T:
    """``data`` (parsed JSON) as a ``cls``; raises :class:`RecordError` saying which field is wrong and how."""
    if dataclasses.is_dataclass(cls) and not isinstance(data, dict):
        raise RecordError(f"expected an object for {cls.__name__}, got {type(data).__name__}")
    try:
        return _converter.structure(data, cls)
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError) as exc:
        raise RecordError(_first_problem(exc, cls)) from None


def _first_problem(exc: Exception, cls: type) -> str:
    name = getattr(cls, "__name__", str(cls))
    if isinstance(exc, cattrs.BaseValidationError):
        problems = cattrs.transform_error(exc, path=name, format_exception=_problem_text)
        if problems:
            text, _, where = problems[0].rpartition(" @ ")
            return f"{where}: {text}"
        return f"not a valid {name}"
    return f"not a valid {name}: {exc}"


def _problem_text(exc: BaseException, kind: type | None) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, (TypeError, ValueError)) and str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, kind)
