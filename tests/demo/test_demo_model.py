"""The bundled demo: its data matches the manifest, its weights load and are accurate, training is reproducible."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from resnext_deploy.data import open_dataset
from resnext_deploy.demo import DEMO_DATA, DEMO_TRAIN, DEMO_VAL, DEMO_WEIGHTS
from resnext_deploy.demo.train import TrainConfig, load_split, main, train_model
from resnext_deploy.errors import BadInputError
from resnext_deploy.models import DEMO_ARCH, get_arch
from resnext_deploy.source import SourceOptions, resolve_source

RECORD = DEMO_WEIGHTS.with_suffix(".json")


def test_demo_weights_load_through_resolve_source() -> None:
    source = resolve_source()
    assert source.arch == DEMO_ARCH
    assert Path(source.checkpoint) == DEMO_WEIGHTS.resolve()
    record = json.loads(RECORD.read_text())
    assert source.checkpoint_sha256 == record["weights_sha256"]
    model = source.build()
    assert not model.training
    assert model(torch.zeros(2, 3, source.image_size, source.image_size)).shape == (2, 10)


def test_demo_model_accuracy_on_validation_split() -> None:
    source = resolve_source()
    model = source.build()
    dataset = open_dataset(DEMO_VAL, source.preprocessing)
    correct = total = 0
    with torch.no_grad():
        for batch in dataset.batches(250):
            predicted = model(torch.from_numpy(batch.images)).argmax(1).numpy()
            correct += int((predicted == batch.labels).sum())
            total += len(batch.labels)
    assert total == 500
    assert correct / total >= 0.97
    assert correct / total == pytest.approx(json.loads(RECORD.read_text())["val_top1"], abs=0.004)


def _describe(folder: Path) -> dict:
    files = sorted(folder.rglob("*.png"))
    lines = sorted(f"{p.relative_to(folder).as_posix()} {hashlib.sha256(p.read_bytes()).hexdigest()}\n" for p in files)
    per_class: dict[str, int] = {}
    for p in files:
        per_class[p.parent.name] = per_class.get(p.parent.name, 0) + 1
    return {"files": len(files), "per_class": per_class, "sha256": hashlib.sha256("".join(lines).encode()).hexdigest()}


def test_dataset_manifest_matches_folders() -> None:
    manifest = json.loads((DEMO_DATA / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"train", "calib", "val"}
    for name, recorded in manifest["splits"].items():
        assert _describe(DEMO_DATA / name) == recorded, f"calibration/digits/{name} differs from manifest.json"
    assert sum(split["files"] for split in manifest["splits"].values()) == 1797
    assert set(manifest["splits"]["val"]["per_class"].values()) == {50}


@pytest.mark.slow  # trains the demo network
def test_training_is_deterministic_and_seeded() -> None:
    images, labels = load_split(DEMO_TRAIN, get_arch(DEMO_ARCH).preprocessing, limit=64)
    assert np.bincount(labels.numpy()).min() >= 6  # the seeded subset is class-balanced
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    config = TrainConfig(epochs=1, batch_size=32)
    first = train_model(images, labels, config).state_dict()
    second = train_model(images, labels, config).state_dict()
    other = train_model(images, labels, TrainConfig(epochs=1, batch_size=32, seed=1)).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["fc.weight"], other["fc.weight"])
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, deterministic)


@pytest.mark.slow  # trains the demo network
def test_train_command_writes_weights_and_record(tmp_path: Path) -> None:
    data = tmp_path / "digits"
    for split in ("train", "calib", "val"):
        for digit in range(10):
            target = data / split / str(digit)
            target.mkdir(parents=True)
            for png in sorted((DEMO_DATA / split / str(digit)).glob("*.png"))[:2]:
                shutil.copy(png, target)
    out = tmp_path / "w" / "demo.safetensors"
    assert main(["--epochs", "1", "--data", str(data), "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["weights_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert record["train_images"] == 40 and record["val_images"] == 20
    assert record["command"].startswith("python -m resnext_deploy.train --epochs 1")
    assert resolve_source(SourceOptions(DEMO_ARCH, out)).build() is not None
    assert not list(out.parent.glob("*.partial"))


def test_training_needs_labeled_images(tmp_path: Path) -> None:
    shutil.copy(next(DEMO_TRAIN.rglob("*.png")), tmp_path / "a.png")
    with pytest.raises(BadInputError, match="class subfolders"):
        load_split(tmp_path, get_arch(DEMO_ARCH).preprocessing)
