"""The build's check predicts verify: it runs on every CPU runtime the file is deployed on, with verify's compare,
and judges decisive top-1 only on enough decisive samples (issue 26, item 3)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from resnext_deploy.backends.openvino import BACKEND as OPENVINO
from resnext_deploy.errors import VerificationError
from resnext_deploy.parity import BUILD_MIN_DECISIVE, BUILD_MIN_JUDGED, DEFAULT_TOLERANCES, compare
from resnext_deploy.precision.options import PrecisionOptions
from resnext_deploy.precision.typed import check_tolerance, make_typed_onnx


def quiet(_: str) -> None:
    pass


def test_a_flip_among_few_decisive_samples_fails_the_build_where_verify_excuses_it() -> None:
    """Flat logits, a small error, 30 of 48 samples decisive: verify's rule calls top-1 undecidable and lets the
    small relative error decide. The build's check, which must predict verify on a larger set (where those
    samples count), allows no flip among the decisive samples below 64 of them; near-ties that flip do not fail
    it, since on them top-1 says nothing at any set size."""
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((48, 1000)).astype(np.float32)
    candidate = reference + 0.05 * rng.standard_normal(reference.shape).astype(np.float32)
    tolerance, note = check_tolerance(DEFAULT_TOLERANCES["int8"], len(reference))
    assert tolerance.decisive_min == BUILD_MIN_DECISIVE and f"only on {BUILD_MIN_DECISIVE} decisive samples" in note
    near_ties = compare(reference, candidate, tolerance)
    assert near_ties.top1_agreement < 1.0 and near_ties.top1_decisive == 1.0 and near_ties.passed
    # The most decisive sample flipped: its candidate's two top logits swapped.
    ordered = np.argsort(reference, axis=1)
    top = ordered[:, -1:], ordered[:, -2:-1]
    margin = (np.take_along_axis(reference, top[0], 1) - np.take_along_axis(reference, top[1], 1))[:, 0]
    i = int(np.argmax(margin))
    first, second = ordered[i, -1], ordered[i, -2]
    flipped = candidate.copy()
    flipped[i, first], flipped[i, second] = candidate[i, second], candidate[i, first]
    verify = compare(reference, flipped, DEFAULT_TOLERANCES["int8"])
    build = compare(reference, flipped, tolerance)
    assert verify.passed and not verify.top1_decidable and verify.decisive == 30
    assert build.failures == (
        "top-1 agreement 96.67% on the 30 decisive samples < 98.5% (fewer than 64: the build's check allows no "
        "flip among them)",
    )
    # On fewer than BUILD_MIN_JUDGED decisive samples (random weights on noise) the build does not judge top-1.
    few = np.r_[i, [j for j in range(len(reference)) if j != i][:9]]
    sparse = compare(reference[few], flipped[few], tolerance)
    assert sparse.decisive < BUILD_MIN_JUDGED and sparse.top1_decisive < 1.0 and sparse.passed
    # The decisive count is what decides: the same tightened tolerance with verify's rule excuses the flip.
    assert compare(reference, flipped, replace(tolerance, decisive_min=None)).passed
    # On verify's set size the check applies the tolerance itself, verify's rule included.
    assert check_tolerance(DEFAULT_TOLERANCES["int8"], 500)[0].decisive_min is None


@pytest.mark.slow  # an INT8 build of the demo model
@pytest.mark.skipif(OPENVINO.unavailable() is not None, reason="OpenVINO is not installed")
def test_contract_a_file_that_fails_only_on_openvino_fails_the_build(
    demo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Contract test with a stand-in: the real OpenVINO runner with its logits scaled 1.5x (a runtime that computes
    the same file differently). ONNX Runtime alone passes the file; the check fails it, naming OpenVINO."""
    from resnext_deploy.backends import openvino

    class Skewed(openvino.OpenVINORunner):
        def infer(self, batch: np.ndarray) -> np.ndarray:
            return super().infer(batch) * 1.5

    logs: list[str] = []
    monkeypatch.setattr(openvino, "OpenVINORunner", Skewed)
    with pytest.raises(VerificationError, match="on openvino: relative logit error") as failed:
        make_typed_onnx(demo_dir, "int8", PrecisionOptions(search=False), log=logs.append)
    assert "on onnxruntime" not in str(failed.value) and not (demo_dir / "model.int8.onnx").exists()
    assert any(line.endswith("(on openvino)") and "FAILED" in line for line in logs), logs
