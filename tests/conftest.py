"""Shared fixtures: the tiny model and the demo model exported, and FP16/INT8 files beside the tiny one, each made
once per session; tests get fresh copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import quiet_export, with_low_precision

from resnext_deploy.demo import DEMO_WEIGHTS
from resnext_deploy.source import SourceOptions, resolve_source


@pytest.fixture(scope="session")
def tiny_export_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quiet_export(resolve_source(SourceOptions("resnext_tiny")), tmp_path_factory.mktemp("tiny-template"))


@pytest.fixture
def tiny_dir(tiny_export_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of an artifact directory holding the tiny model's model.onnx and manifest."""
    return Path(shutil.copytree(tiny_export_template, tmp_path / "tiny"))


@pytest.fixture(scope="session")
def low_precision_template(tiny_export_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny export plus model.fp16.onnx and model.int8.onnx; read-only for tests: copy it before writing."""
    return with_low_precision(tiny_export_template, tmp_path_factory.mktemp("low-precision-template") / "tiny")


@pytest.fixture(scope="session")
def demo_export_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not DEMO_WEIGHTS.exists():
        pytest.skip("the demo model's weights are not in this checkout")
    return quiet_export(resolve_source(), tmp_path_factory.mktemp("demo-template") / "demo")


@pytest.fixture
def demo_dir(demo_export_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of an artifact directory holding the bundled demo model's model.onnx and manifest (trained
    weights: where INT8 must pass its parity check)."""
    return Path(shutil.copytree(demo_export_template, tmp_path / "demo"))
