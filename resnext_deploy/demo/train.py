"""Train the bundled demo model, so that accuracy and INT8 parity are measured on real weights.

``python -m resnext_deploy.train [--epochs N] [--out PATH]`` trains ``resnext11_digits`` on
``calibration/digits/{train,calib}``, reports top-1 on ``val`` and writes the weights (safetensors)
and a JSON record beside them. Images go through :func:`resnext_deploy.data.preprocess`, the code
``verify`` uses, so the model is trained on exactly what it is later fed. Seeds, deterministic
kernels and a fixed thread count make a rerun on the same machine and torch version bit-identical.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..artifacts import atomic_path, sha256_file, write_json
from ..data import open_dataset
from ..errors import BadInputError
from ..models import DEMO_ARCH, Preprocessing, ResNeXt, create_model, get_arch
from . import DEMO_DATA, DEMO_WEIGHTS


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights, recorded next to them."""

    arch: str = DEMO_ARCH
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    max_shift: int = 1  # random translation, in pixels of the model's input (half a source pixel here)
    seed: int = 0
    threads: int = 2


@contextlib.contextmanager
def deterministic(seed: int, threads: int) -> Iterator[None]:
    """Seed torch, force deterministic kernels and a fixed thread count; restore the caller's settings after."""
    threads_before = torch.get_num_threads()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before)


def load_split(folder: str | Path, pre: Preprocessing, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A labeled image folder as preprocessed tensors; ``limit`` takes a seeded, class-balanced subset."""
    dataset = open_dataset(folder, pre, count=limit, seed=0)
    if not dataset.has_labels:
        raise BadInputError(f"{folder} has no class subfolders; training needs labeled images (<class>/<image>)")
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for batch in dataset.batches(256):
        assert batch.labels is not None  # has_labels
        images.append(batch.images)
        labels.append(batch.labels)
    if dataset.skipped:
        raise BadInputError(f"cannot train on a partly unreadable data set: {dataset.skipped_summary()}")
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def random_shift(images: torch.Tensor, max_shift: int, fill: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels, filling with the normalized background value."""
    if max_shift == 0:
        return images
    n, c, h, w = images.shape
    padded = fill.view(1, c, 1, 1).expand(n, c, h + 2 * max_shift, w + 2 * max_shift).clone()
    padded[:, :, max_shift : max_shift + h, max_shift : max_shift + w] = images
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def train_model(
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    progress: Callable[[int, float], None] | None = None,
) -> ResNeXt:
    """Train from seeded initial weights with SGD and a one-cycle schedule; return the model in eval mode."""
    if len(images) == 0:
        raise BadInputError("no training images")
    spec = get_arch(config.arch)
    pre = spec.preprocessing
    background = torch.tensor([-m / s for m, s in zip(pre.mean, pre.std, strict=True)], dtype=images.dtype)
    with deterministic(config.seed, config.threads):
        model = create_model(spec).train()
        generator = torch.Generator().manual_seed(config.seed)
        steps = -(-len(images) // config.batch_size)
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=True,
        )
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.epochs * steps)
        loss_fn = nn.CrossEntropyLoss()
        for epoch in range(config.epochs):
            order = torch.randperm(len(images), generator=generator)
            total = 0.0
            for start in range(0, len(images), config.batch_size):
                index = order[start : start + config.batch_size]
                batch = random_shift(images[index], config.max_shift, background, generator)
                loss = loss_fn(model(batch), labels[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item() * len(index)
            if progress is not None:
                progress(epoch + 1, total / len(images))
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy in eval mode."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start : start + batch_size])
        correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / len(images)


def save_weights(model: nn.Module, path: str | Path, arch: str) -> str:
    """Write the state dict as safetensors atomically; return its sha256."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"arch": arch})
    return sha256_file(path)


def _split_digests(data: Path) -> dict[str, str] | None:
    manifest = data / "manifest.json"
    if not manifest.exists():
        return None
    return {name: split["sha256"] for name, split in json.loads(manifest.read_text())["splits"].items()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m resnext_deploy.train", description="Train the bundled demo model deterministically."
    )
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help=f"default {defaults.epochs}")
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"default {defaults.seed}")
    parser.add_argument("--data", type=Path, default=DEMO_DATA, help="folder with train/, calib/ and val/")
    parser.add_argument("--out", type=Path, default=DEMO_WEIGHTS, help="weights file (.safetensors); JSON beside it")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    if args.out.suffix != ".safetensors":
        parser.error("--out must end in .safetensors")
    config = TrainConfig(epochs=args.epochs, seed=args.seed)
    pre = get_arch(config.arch).preprocessing

    train_parts = [load_split(args.data / name, pre) for name in ("train", "calib")]
    images = torch.cat([part[0] for part in train_parts])
    labels = torch.cat([part[1] for part in train_parts])
    val_images, val_labels = load_split(args.data / "val", pre)
    print(f"training {config.arch} on {len(images)} images, validating on {len(val_images)}", flush=True)

    started = time.perf_counter()
    model = train_model(
        images, labels, config, lambda epoch, loss: print(f"epoch {epoch:3d}/{config.epochs}  loss {loss:.4f}")
    )
    seconds = time.perf_counter() - started
    val_top1 = accuracy(model, val_images, val_labels)
    print(f"val top-1 {val_top1:.2%} ({len(val_images)} images), {seconds:.0f} s")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    sha = save_weights(model, args.out, config.arch)
    record = {
        "arch": config.arch,
        "weights": args.out.name,
        "weights_sha256": sha,
        "val_top1": round(val_top1, 4),
        "val_images": len(val_images),
        "train_images": len(images),
        "train_splits": ["train", "calib"],
        "data_split_sha256": _split_digests(args.data),
        "epochs": config.epochs,
        "seed": config.seed,
        "config": asdict(config),
        "preprocessing": asdict(pre),
        "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": shlex.join(["python", "-m", "resnext_deploy.train", *argv]),
    }
    write_json(args.out.with_suffix(".json"), record)
    print(f"wrote {args.out} (sha256 {sha[:16]}) and {args.out.with_suffix('.json').name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
