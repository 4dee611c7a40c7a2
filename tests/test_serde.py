"""The one encode/decode mechanism: records round-trip through JSON, and a hand-edited value names its field."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from enum import Enum

import pytest

from resnext_deploy.serde import INLINE, JSON_KEY, RecordError, decode, encode


class Method(str, Enum):
    ENTROPY = "entropy"
    MINMAX = "minmax"


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    clip: float | None = None


@dataclass(frozen=True)
class Record:
    method: Method
    count: int
    ranges: dict[str, Range]
    names: tuple[str, ...] = ()
    done: bool = False
    note: str | None = None
    extra: list[int] = field(default_factory=list)


RECORD = Record(Method.MINMAX, 3, {"x": Range(-1.0, 2.5, 2.0), "y": Range(0.0, 1.0)}, ("a", "b"), True, None, [1])


def test_a_record_round_trips_through_json_text() -> None:
    text = json.dumps(encode(RECORD))
    assert json.loads(text)["method"] == "minmax"  # enums are written as their values
    assert decode(Record, json.loads(text)) == RECORD


def test_non_finite_floats_survive_the_round_trip() -> None:
    back = decode(Record, json.loads(json.dumps(encode(Record(Method.ENTROPY, 0, {"x": Range(math.nan, math.inf)})))))
    assert math.isnan(back.ranges["x"].low) and back.ranges["x"].high == math.inf


def test_unknown_keys_are_ignored_for_newer_files() -> None:
    assert decode(Record, {**encode(RECORD), "added_later": 1}) == RECORD


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": "kl"}, "Record.method: expected one of 'entropy', 'minmax', got 'kl'"),
        ({"count": "3"}, "Record.count: expected an integer, got str"),
        ({"count": True}, "Record.count: expected an integer, got bool"),
        ({"done": 1}, "Record.done: expected true or false, got int"),
        ({"ranges": {"x": {"low": "0", "high": 1}}}, "Record.ranges['x'].low: expected a number, got str"),
        ({"names": [1]}, "Record.names[0]: expected a string, got int"),
    ],
)
def test_a_hand_edited_value_names_its_field(change: dict, message: str) -> None:
    with pytest.raises(RecordError) as caught:
        decode(Record, {**encode(RECORD), **change})
    assert str(caught.value) == message


def test_a_missing_field_and_a_non_object_are_refused() -> None:
    data = encode(RECORD)
    del data["count"]
    with pytest.raises(RecordError, match=r"^Record.count: required field missing$"):
        decode(Record, data)
    with pytest.raises(RecordError, match="expected an object for Record, got list"):
        decode(Record, [])


@dataclass(frozen=True)
class Metrics:
    count: int
    error: float
    failures: tuple[str, ...] = ()


@dataclass(frozen=True)
class Row:
    name: str
    metrics: Metrics | None = field(metadata=INLINE)
    failures: tuple[str, ...] = ()


@dataclass(frozen=True)
class Table:
    rows: list[Row] = field(metadata={JSON_KEY: "results"})


TABLE = Table([Row("a", Metrics(2, math.inf, ("far",)), ("far",)), Row("b", None, ("never ran",))])


def test_an_inline_record_and_a_renamed_field_keep_a_flat_layout() -> None:
    data = encode(TABLE, nan_as_null=True)
    assert data == {
        "results": [
            {"name": "a", "count": 2, "error": None, "failures": ["far"]},
            {"name": "b", "count": None, "error": None, "failures": ["never ran"]},
        ]
    }
    back = decode(Table, json.loads(json.dumps(data, allow_nan=False)), nan_as_null=True)
    assert back.rows[1] == TABLE.rows[1] and back.rows[0].metrics is not None
    assert back.rows[0].metrics.count == 2 and math.isnan(back.rows[0].metrics.error)


def test_a_bad_value_in_an_inline_record_is_named_by_its_key_in_the_file() -> None:
    data = encode(TABLE, nan_as_null=True)
    data["results"][0]["count"] = "2"
    with pytest.raises(RecordError, match=r"^Table.results\[0\].count: expected an integer, got str$"):
        decode(Table, data, nan_as_null=True)
    data["results"][0] = {"name": "a", "count": 2, "error": None, "failures": ["far"]}
    with pytest.raises(RecordError, match=r"^Table.results\[0\].error: expected a number, got NoneType$"):
        decode(Table, data)  # null is NaN only where the file says so


@dataclass(frozen=True)
class Machine:
    cpu_flags: str = field(metadata={JSON_KEY: "cpu flags"})
    threads: int | str = "library defaults"
    knobs: dict[str, str | int | float | bool] = field(default_factory=dict)
    range: Range | None = None


def test_a_renamed_key_and_a_scalar_union_round_trip_keeping_their_types() -> None:
    machine = Machine("avx2 fma", 4, {"hint": "latency", "spin": True, "streams": 2, "share": 0.5})
    data = json.loads(json.dumps(encode(machine)))
    assert list(data) == ["cpu flags", "threads", "knobs", "range"]
    back = decode(Machine, data)
    assert back == machine and back.knobs["spin"] is True and type(back.knobs["streams"]) is int


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"threads": 1.5}, "Machine.threads: expected int or str, got float"),
        ({"knobs": {"x": None}}, "Machine.knobs['x']: expected str or int or float or bool, got NoneType"),
        ({"range": [0, 1]}, "Machine.range: expected an object for Range, got list"),
    ],
)
def test_a_wrong_union_member_or_a_nested_non_object_names_its_field(change: dict, message: str) -> None:
    with pytest.raises(RecordError) as caught:
        decode(Machine, {"cpu flags": "avx2", **change})
    assert str(caught.value) == message


def test_tuples_are_written_as_the_lists_json_reads_back() -> None:
    assert encode({"pair": (1, 2), "nested": [(3,)]}) == {"pair": [1, 2], "nested": [[3]]}


def test_a_mapping_given_a_list_is_a_record_error() -> None:
    with pytest.raises(RecordError, match="expected an object"):
        decode(dict[str, str], ["a"])
