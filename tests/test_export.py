"""ONNX export: checker, metadata, dynamic batch, parity with PyTorch, manifest, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from resnext_deploy.artifacts import Manifest, sha256_file
from resnext_deploy.backends.onnxruntime import OnnxRuntimeRunner
from resnext_deploy.backends.torch import TorchRunner
from resnext_deploy.export import export_onnx
from resnext_deploy.models import ARCHS
from resnext_deploy.source import SourceOptions, resolve_source

QUIET = {"log": lambda _m: None}


def test_tiny_export_metadata_and_manifest(tiny_dir: Path):
    path = tiny_dir / "model.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["resnext_deploy.arch"] == "resnext_tiny"
    assert meta["resnext_deploy.num_classes"] == "10"
    assert json.loads(meta["resnext_deploy.preprocessing"])["crop_size"] == 32
    assert meta["resnext_deploy.checkpoint_sha256"] == "random-init"
    assert "torch" in json.loads(meta["resnext_deploy.versions"])
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    entry = Manifest(tiny_dir).entry("model.onnx")
    assert entry.sha256 == sha256_file(path)
    assert entry.precision == "fp32"
    assert set(entry.parity) == {"1", "4"}


def test_second_export_reuses_the_file(tiny_dir: Path):
    before = sha256_file(tiny_dir / "model.onnx")
    result = export_onnx(resolve_source(SourceOptions("resnext_tiny")), tiny_dir, **QUIET)
    assert result.reused
    assert sha256_file(tiny_dir / "model.onnx") == before


def test_static_batch(tmp_path: Path):
    export_onnx(resolve_source(SourceOptions("resnext_tiny")), tmp_path, static_batch=3, **QUIET)
    model = onnx.load(str(tmp_path / "model.onnx"))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3
    runner = OnnxRuntimeRunner(tmp_path / "model.onnx")
    assert runner(np.zeros((5, 3, 32, 32), np.float32)).shape == (5, 10)  # chunked and padded


@pytest.mark.slow  # ResNeXt-29 and -101 exports
@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "resnext50_32x4d"])
def test_every_architecture_exports_and_agrees(tmp_path: Path, arch: str):
    size = 32 if ARCHS[arch].stem == "cifar" else 64
    result = export_onnx(resolve_source(SourceOptions(arch, image_size=size, num_classes=5)), tmp_path, **QUIET)
    for parity in result.parity.values():
        assert parity, parity.failures
        assert parity.cosine_min > 0.99999


@pytest.mark.slow
def test_resnext50_at_224_batch_1_and_4(tmp_path: Path):
    source = resolve_source(SourceOptions("resnext50_32x4d"))
    result = export_onnx(source, tmp_path, **QUIET)
    assert set(result.parity) == {1, 4}
    onnx.checker.check_model(str(tmp_path / "model.onnx"), full_check=True)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3, 224, 224), dtype=np.float32)
    reference = TorchRunner(source.build())(x)
    candidate = OnnxRuntimeRunner(tmp_path / "model.onnx")(x)
    assert np.abs(reference - candidate).max() <= 1e-4 * np.abs(reference).max()
    for parity in result.parity.values():
        assert parity.cosine_min > 0.99999
