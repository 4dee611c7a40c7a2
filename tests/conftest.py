"""Shared fixtures: the tiny model exported, and with FP16/INT8 files beside it, each made once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tiny_artifacts import with_low_precision

from resnext_deploy.export import export_onnx
from resnext_deploy.source import SourceOptions, resolve_source


@pytest.fixture(scope="session")
def tiny_export_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-template")
    export_onnx(resolve_source(SourceOptions("resnext_tiny")), directory, log=lambda _m: None)
    return directory


@pytest.fixture
def tiny_dir(tiny_export_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of an artifact directory holding the tiny model's model.onnx and manifest."""
    directory = tmp_path / "tiny"
    shutil.copytree(tiny_export_template, directory)
    return directory


@pytest.fixture(scope="session")
def low_precision_template(tiny_export_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny export plus model.fp16.onnx and model.int8.onnx; read-only for tests: copy it before writing."""
    return with_low_precision(tiny_export_template, tmp_path_factory.mktemp("low-precision-template") / "tiny")
