"""Checkpoint loading: accepted layouts, an independent implementation, and refused files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from resnext_deploy.checkpoint import load_into, read_state_dict
from resnext_deploy.errors import BadInputError
from resnext_deploy.models import create_model


class IndependentBlock(nn.Module):
    """A ResNeXt block written separately from ours, with torchvision's attribute names only."""

    def __init__(self, cin: int, planes: int, stride: int, groups: int, width_per_group: int) -> None:
        super().__init__()
        mid = groups * width_per_group * planes // 64
        out = planes * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, out, 1, bias=False), nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class IndependentResNeXt50(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        cin = 64
        for i, (blocks, planes) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)]):
            layer = []
            for b in range(blocks):
                layer.append(IndependentBlock(cin, planes, 2 if (b == 0 and i > 0) else 1, 32, 4))
                cin = planes * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.fc = nn.Linear(2048, classes)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(x.mean((2, 3)))


def _randomise_batchnorm(model: nn.Module) -> None:
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)


def test_independent_implementation_loads_and_matches(tmp_path: Path):
    torch.manual_seed(0)
    other = IndependentResNeXt50().eval()
    _randomise_batchnorm(other)
    path = tmp_path / "independent.pth"
    torch.save(other.state_dict(), path)
    ours = create_model("resnext50_32x4d")
    load_into(ours, read_state_dict(path), path, "resnext50_32x4d")
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), other(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model", "module_prefix", "model_prefix"])
def test_wrapped_and_prefixed_state_dicts(tmp_path: Path, wrap: str):
    state = create_model("resnext_tiny").state_dict()
    payload: object = {
        "bare": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state, "optimizer": {}},
        "module_prefix": {f"module.{k}": v for k, v in state.items()},
        "model_prefix": {"state_dict": {f"model.{k}": v for k, v in state.items()}},
    }[wrap]
    path = tmp_path / "ckpt.pt"
    torch.save(payload, path)
    loaded = read_state_dict(path)
    assert set(loaded) == set(state)


def test_safetensors(tmp_path: Path):
    state = {k: v.contiguous() for k, v in create_model("resnext_tiny").state_dict().items()}
    path = tmp_path / "tiny.safetensors"
    save_file(state, str(path))
    model = create_model("resnext_tiny")
    load_into(model, read_state_dict(path), path, "resnext_tiny")


def test_mismatch_lists_missing_unexpected_and_misshaped_keys(tmp_path: Path):
    path = tmp_path / "other.pth"
    torch.save(create_model("resnext_tiny", num_classes=3).state_dict(), path)
    with pytest.raises(BadInputError) as info:
        load_into(create_model("resnext50_32x4d"), read_state_dict(path), path, "resnext50_32x4d")
    message = str(info.value)
    assert "missing" in message and "wrongly shaped" in message and "more" in message
    assert "\n" not in message


def __reduce__(self):
    return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize(
    "content,match",
    [(b"", "empty"), (b"\x00\x01garbage" * 100, "truncated or not"), (None, "truncated or not")],
)
def test_broken_files(tmp_path: Path, content: bytes | None, match: str):
    path = tmp_path / "broken.pth"
    if content is None:
        torch.save(create_model("resnext_tiny").state_dict(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(BadInputError, match=match):
        read_state_dict(path)


def test_non_state_dict_and_nan_weights(tmp_path: Path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(BadInputError, match="not a state dict"):
        read_state_dict(path)
    state = create_model("resnext_tiny").state_dict()
    state["fc.weight"][0, 0] = float("nan")
    torch.save(state, path)
    with pytest.raises(BadInputError, match="NaN"):
        read_state_dict(path)


def test_missing_file(tmp_path: Path):
    with pytest.raises(BadInputError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pth")


# ----------------------------------------------------------------------------------------------
# Pickled whole models, and the architectures a checkpoint's keys fit


def test_a_pickled_whole_model_is_refused_with_the_one_line_that_resaves_it(tmp_path: Path, capsys) -> None:
    import shlex
    import subprocess
    import sys

    from resnext_deploy.cli import main
    from resnext_deploy.errors import ExitCode

    torch.manual_seed(0)
    model = create_model("resnext_tiny")
    whole = tmp_path / "my model.pth"  # a space: the line must still run as printed
    torch.save(model, whole)
    assert main(["export", "--arch", "resnext_tiny", "--checkpoint", str(whole), "--dir", str(tmp_path / "d")]) == 3
    [err] = capsys.readouterr().err.strip().splitlines()
    assert "a whole model (resnext_deploy.models.ResNeXt)" in err and "Only if you trust the file" in err
    line = err.split("re-save its weights once: ", 1)[1].split(" then pass --checkpoint ", 1)[0]
    argv = shlex.split(line)
    assert argv[:2] == ["python", "-c"]
    done = subprocess.run([sys.executable, "-c", argv[2]], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    saved = tmp_path / "my model_state_dict.pth"
    assert err.endswith(f"--checkpoint {saved}")
    state = read_state_dict(saved, "resnext_tiny")  # now a plain state dict, loaded with weights_only
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    code = main(["export", "--arch", "resnext_tiny", "--checkpoint", str(saved), "--dir", str(tmp_path / "d")])
    assert code == ExitCode.OK


def test_a_checkpoint_with_extras_gets_the_line_for_its_state_dict_key(tmp_path: Path) -> None:
    import argparse

    path = tmp_path / "train.ckpt"
    torch.save({"state_dict": create_model("resnext_tiny").state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(BadInputError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert "(argparse.Namespace)" in message and 'weights_only=False)["state_dict"]' in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        # SE keys on a plain ResNeXt-50: a family whose keys show it, named with an architecture to try
        ("se", "`se.fc1` keys: SE blocks: an SE-ResNeXt; try `--arch seresnext50_32x4d`"),
        # every key and shape of another registered architecture: named exactly
        ("cifar", "its keys and shapes are those of resnext29_8x64d; try `--arch resnext29_8x64d`"),
    ],
)
def test_pass_the_architecture_names_the_ones_the_keys_fit(tmp_path: Path, change: str, fragment: str) -> None:
    with torch.device("meta"):
        state = create_model("resnext29_8x64d" if change == "cifar" else "resnext50_32x4d").state_dict()
    state = {k: torch.zeros(v.shape) for k, v in state.items() if "layer2" not in k or change == "cifar"}
    if change == "se":  # timm's SEModule: fc1 (reduce) and fc2 (expand) 1x1 convs in every block
        state |= {
            "layer1.0.se.fc1.weight": torch.zeros(16, 256, 1, 1),
            "layer1.0.se.fc2.weight": torch.zeros(256, 16, 1, 1),
        }
    with pytest.raises(BadInputError) as info:
        load_into(create_model("resnext_tiny"), state, tmp_path / "x.pth", "resnext_tiny")
    assert fragment in str(info.value) and "pass the architecture" in str(info.value)


def test_a_timm_architecture_without_timm_says_how_to_install_it(tmp_path: Path, capsys, monkeypatch) -> None:
    from resnext_deploy import environment
    from resnext_deploy.cli import main
    from resnext_deploy.errors import ExitCode

    real = environment.package_version
    monkeypatch.setattr(environment, "package_version", lambda name: None if name == "timm" else real(name))
    code = main(["export", "--arch", "seresnext50_32x4d", "--image-size", "32", "--dir", str(tmp_path / "d")])
    assert code == ExitCode.BACKEND_UNAVAILABLE
    [err] = capsys.readouterr().err.strip().splitlines()
    assert "seresnext50_32x4d is built through timm, which is not installed" in err and "pip install timm" in err
    assert "README, Install" in err and not (tmp_path / "d" / "model.onnx").exists()


def test_the_class_count_is_read_from_timms_classifier_names() -> None:
    from resnext_deploy.checkpoint import infer_num_classes

    assert infer_num_classes({"head.fc.weight": torch.zeros(7, 2048)}) == 7
    assert infer_num_classes({"last_linear.weight": torch.zeros(5, 2048)}) == 5
    assert infer_num_classes({"layer1.0.conv1.weight": torch.zeros(8, 8, 1, 1)}) is None
