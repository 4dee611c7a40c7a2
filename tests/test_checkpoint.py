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
