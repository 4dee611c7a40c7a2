"""The INT8 search record: written to the manifest as JSON, read back as the same typed object."""

from __future__ import annotations

import json

import pytest

from resnext_deploy.errors import BadInputError
from resnext_deploy.precision.search import (
    RANKING_SHOWN,
    BiasCorrectionTrial,
    EqualizationTrial,
    SearchRecord,
    TrialSummary,
)
from resnext_deploy.report.render import _search_lines
from resnext_deploy.serde import decode, encode

PASS = TrialSummary(True, 0.9991, 0.99, 1.0, 120, True, 0.031, 99.0)
FAIL = TrialSummary(False, 0.95, 0.9, 0.8, 100, True, 0.2, None, ("cosine min 0.95 < 0.99",))


def _record() -> SearchRecord:
    return SearchRecord(
        methods={"entropy": FAIL, "entropy + equalization": PASS},
        method="entropy",
        ranking=[("/layer2/layer2.0/Add", 0.5), ("/fc/Gemm", 0.01)],
        layers=18,
        kept=["/layer2/layer2.0/Add"],
        budget=4,
        passed=True,
        seconds=12.5,
        equalization=EqualizationTrial.made(6, PASS, True),
        bias_correction=BiasCorrectionTrial.made(14, FAIL, False),
    )


def test_the_record_round_trips_through_its_json_and_keeps_the_format() -> None:
    record = _record()
    data = json.loads(json.dumps(record.to_dict()))
    assert data["equalization"]["pairs"] == 6 and data["equalization"]["chosen"] is True
    assert data["bias_correction"]["layers"] == 14 and data["remedies"] == ["equalization", "exclusion"]
    assert data["methods"]["entropy"]["failures"] == ["cosine min 0.95 < 0.99"]
    assert SearchRecord.from_dict(data) == record
    assert decode(SearchRecord, encode(record)) == record  # one mechanism both ways (serde)
    assert set(data["equalization"]) == {*TrialSummary.__dataclass_fields__, "pairs", "chosen"}  # the layout kept
    assert data["ranking"] == [["/layer2/layer2.0/Add", 0.5], ["/fc/Gemm", 0.01]]
    assert record.equalization.size == 6 and record.equalization.summary == PASS


def test_the_record_keeps_the_top_of_the_ranking_only() -> None:
    record = _record()
    record.ranking = [(f"site{i}", 1.0 / (i + 1)) for i in range(30)]
    data = json.loads(json.dumps(record.to_dict()))
    assert len(data["ranking"]) == RANKING_SHOWN and data["ranking"][0] == ["site0", 1.0]


def test_a_record_written_before_the_remedies_still_reads() -> None:
    data = _record().to_dict()
    for key in ("equalization", "bias_correction", "remedies", "needed", "time_limited"):
        del data[key]
    record = SearchRecord.from_dict(data)
    assert record.equalization is None and record.remedies == ["exclusion"]


@pytest.mark.parametrize(
    "broken",
    [{"methods": {"entropy": {}}}, {"ranking": [["a"]]}, {"equalization": {"pairs": 1}}, {"budget": "4"}],
)
def test_a_malformed_record_is_one_line_of_bad_input(broken: dict) -> None:
    data = {**_record().to_dict(), **broken}
    with pytest.raises(BadInputError, match="search record in manifest.json is malformed"):
        SearchRecord.from_dict(data)


def test_the_report_lines_come_from_the_typed_record() -> None:
    text = "\n".join(_search_lines(_record()))
    assert "equalization (Nagel et al.) of 6 Conv -> ReLU -> Conv pairs" in text and "used in the file" in text
    assert "Bias correction of 14 Conv/Gemm layers" in text and "not used" in text
    assert "Remedies the file uses: equalization, exclusion." in text
    assert "Kept out of INT8: `/layer2/layer2.0/Add` (1 of 18 Q/DQ sites, budget 4); the file passes" in text


def test_a_remedy_is_used_only_as_the_file_records_it_with_the_figures_that_decided() -> None:
    """Chosen for its smaller relative error with a lower cosine (issue 26): both graphs' figures are shown; a
    remedy the file's manifest entry does not list is never called used."""
    plain = TrialSummary(False, 0.9529, rel_error=0.131)
    equalized = TrialSummary(False, 0.9421, rel_error=0.123)
    record = SearchRecord(
        methods={"entropy": plain, "entropy + equalization": equalized},
        method="entropy",
        layers=18,
        equalization=EqualizationTrial.made(6, equalized, True),
    )
    [line] = [line for line in _search_lines(record, ["equalization"]) if "Cross-layer" in line]
    assert "fail, cosine min 0.9421, relative error 0.123 (the graph without it: fail, cosine min 0.9529" in line
    verdict = "used in the file: it ranked above the graph without it (pass, accuracy, top-1, relative error)."
    assert line.endswith(f"; {verdict}")
    text = "\n".join(_search_lines(record, []))
    assert "used in the file" not in text and "does not list it: not used" in text
    assert "Remedies the file uses: none." in text
