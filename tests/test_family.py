"""timm's ResNeXt family, built through timm itself: checkpoints saved by timm export, and their FP16 and INT8
files pass verify on ONNX Runtime and OpenVINO; the generated table still matches timm and torchvision.

Skipped where timm cannot be imported (a torchvision that is not the installed torch's build fails its import).
The README's torchvision and timm section says how such an environment is made; the tests were run in one with
``pip install torch==2.14.1 torchvision==0.29.1 timm`` and the project installed beside them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from helpers import noise_images

from resnext_deploy.archs import LIBRARY_ARCHS, WEIGHT_TAGS, key_profile
from resnext_deploy.cli import main
from resnext_deploy.environment import torchvision_mismatch
from resnext_deploy.errors import ExitCode
from resnext_deploy.source import SourceOptions, resolve_source
from resnext_deploy.weights import from_timm_config, from_torchvision_transform, tag_preprocessing

if torchvision_mismatch():
    pytest.skip(f"timm cannot import here: {torchvision_mismatch()}", allow_module_level=True)
timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

FAMILY = ("seresnext50_32x4d", "resnext50d_32x4d", "resnext26ts")
SIZE = 64  # small, for a 2-core machine; every block still runs (stride 32: a 2x2 final map)


def _save_timm_checkpoint(name: str, path: Path, classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=classes).eval()
    torch.save(model.state_dict(), path)
    return model


@pytest.mark.slow  # builds each of the 25 on the meta device: about 15 s
def test_the_table_matches_timm_and_torchvision() -> None:
    from timm.data import resolve_data_config

    expected = {name for name in timm.list_models("*resnext*")} - {"resnext50_32x4d", "resnext101_32x4d"}
    expected -= {"resnext101_32x8d", "resnext101_64x4d"}  # built in, with the same keys
    assert set(LIBRARY_ARCHS) == expected
    for name, arch in LIBRARY_ARCHS.items():
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
        assert arch.parameters == sum(p.numel() for p in model.parameters()), name
        assert arch.profile == key_profile({k: tuple(t.shape) for k, t in model.state_dict().items()}), name
        assert arch.classifier_inputs == model.get_classifier().in_features
    timm_tags = {tag for tag in WEIGHT_TAGS if WEIGHT_TAGS[tag].library == "timm" and "untrained" not in tag}
    assert timm_tags == set(timm.list_pretrained("*resnext*"))
    for tag in timm_tags:
        config = resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(tag).to_dict())
        assert WEIGHT_TAGS[tag].preprocessing == from_timm_config(config), tag
    for tag in [t for t in WEIGHT_TAGS if WEIGHT_TAGS[t].library == "torchvision"]:
        enum, member = tag.split(".")
        transform = getattr(getattr(torchvision.models, enum), member).transforms()
        assert WEIGHT_TAGS[tag].preprocessing == from_torchvision_transform(transform), tag


def test_a_preset_tag_is_read_from_the_installed_library() -> None:
    said: list[str] = []
    pre, where = tag_preprocessing(WEIGHT_TAGS["ResNeXt101_64X4D_Weights.IMAGENET1K_V1"], said.append)
    assert (pre.resize_size, pre.image_size) == (232, 224) and where == "torchvision's own configuration"
    pre, where = tag_preprocessing(WEIGHT_TAGS["resnext50_32x4d.tv_in1k"], said.append)
    assert (pre.resize_size, pre.interpolation) == (256, "bilinear") and where == "timm's own configuration"
    assert said == []


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILY)
def test_a_timm_checkpoint_builds_through_timm_and_loads_strictly(tmp_path: Path, name: str) -> None:
    original = _save_timm_checkpoint(name, tmp_path / "ckpt.pth", classes=7)
    source = resolve_source(SourceOptions(name, tmp_path / "ckpt.pth", image_size=SIZE))
    assert source.num_classes == 7  # from the checkpoint's classifier (fc or head.fc)
    rebuilt = source.build()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        assert torch.equal(rebuilt(x), original(x))
    assert type(rebuilt) is type(original)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "wrong"), [(n, "resnext50_32x4d") for n in FAMILY] + [("resnext50_32x4d", FAMILY[0])])
def test_the_wrong_arch_names_the_one_the_timm_keys_fit(tmp_path: Path, capsys, name: str, wrong: str) -> None:
    _save_timm_checkpoint(name, tmp_path / "ckpt.pth")
    code = main(["export", "--arch", wrong, "--checkpoint", str(tmp_path / "ckpt.pth"), "--dir", str(tmp_path / "d")])
    assert code == ExitCode.BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"its keys and shapes are those of {name}; try `--arch {name}`" in err


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILY)
def test_export_fp16_and_int8_pass_verify_on_onnxruntime_and_openvino(tmp_path: Path, name: str, capsys) -> None:
    pytest.importorskip("openvino")
    checkpoint, out = tmp_path / "ckpt.pth", tmp_path / "out"
    _save_timm_checkpoint(name, checkpoint)
    images = noise_images(tmp_path / "images", 72, classes=2, size=SIZE + 16)
    steps = {
        "export": ["export", "--arch", name, "--checkpoint", str(checkpoint), "--image-size", str(SIZE)],
        "fp16": ["build-trt", "--fp16", "--onnx-only", "--calib-dir", str(images)],
        "int8": ["build-trt", "--int8", "--onnx-only", "--calib-dir", str(images)],
        "verify": ["verify", "--data", str(images), "--backends", "onnxruntime,openvino"],
    }
    seconds = {}
    for step, args in steps.items():
        start = time.perf_counter()
        assert main([*args, "--dir", str(out)]) == ExitCode.OK, capsys.readouterr().err[-2000:]
        seconds[step] = round(time.perf_counter() - start, 1)
    record = json.loads((out / "verify.json").read_text())
    assert record["passed"]
    rows = {(r["backend"], r["precision"]): r for r in record["results"]}
    assert set(rows) == {(b, p) for b in ("onnxruntime", "openvino") for p in ("fp32", "fp16", "int8")}
    assert all(row["passed"] and row["nonfinite"] == 0 for row in rows.values())
    manifest = json.loads((out / "manifest.json").read_text())
    export_parity = manifest["artifacts"]["model.onnx"]["parity"]
    summary = {
        "arch": name,
        "seconds": seconds,
        "export": export_parity,
        "verify": {
            f"{b}:{p}": {k: rows[b, p][k] for k in ("cosine_min", "rel_error", "max_abs", "top1_agreement")}
            for b, p in rows
        },
    }
    with capsys.disabled():  # the figures the closing note quotes (pytest -s shows them)
        print(f"\nFAMILY {json.dumps(summary)}")
