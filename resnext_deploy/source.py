"""Which PyTorch model an artifact directory is about: architecture, classes, size and weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .artifacts import sha256_file
from .demo import DEMO_WEIGHTS
from .errors import BadInputError
from .models import DEMO_ARCH, ArchSpec, Preprocessing, create_model, get_arch

RANDOM_SEED = 0


@dataclass(frozen=True)
class ModelSource:
    """Everything needed to rebuild the exact reference model later (``verify`` does)."""

    arch: str
    num_classes: int
    image_size: int
    checkpoint: str | None
    checkpoint_sha256: str | None

    @property
    def spec(self) -> ArchSpec:
        return get_arch(self.arch)

    @property
    def preprocessing(self) -> Preprocessing:
        pre = self.spec.preprocessing
        return pre if pre.image_size == self.image_size else pre.with_image_size(self.image_size)

    @property
    def class_names(self) -> tuple[str, ...]:
        names = self.spec.class_names
        return names if len(names) == self.num_classes else ()

    def build(self):
        """The model with its weights: the checkpoint's, or seeded random weights when there is none."""
        import torch

        from .checkpoint import load_into, read_state_dict

        if self.checkpoint is None:
            with torch.random.fork_rng():
                torch.manual_seed(RANDOM_SEED)
                return create_model(self.arch, self.num_classes)
        path = Path(self.checkpoint)
        if self.checkpoint_sha256 and path.exists() and sha256_file(path) != self.checkpoint_sha256:
            raise BadInputError(f"checkpoint {path} changed since the export (sha256 differs); run export again")
        model = create_model(self.arch, self.num_classes)
        load_into(model, read_state_dict(path), path, self.arch)
        return model.eval()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSource:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def resolve_source(
    arch: str | None = None,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
) -> ModelSource:
    """Turn command-line choices into a :class:`ModelSource`; nothing given means the bundled demo model."""
    if arch is None and checkpoint is None:
        arch, checkpoint = DEMO_ARCH, DEMO_WEIGHTS
        if not DEMO_WEIGHTS.exists():
            raise BadInputError(f"the bundled demo weights {DEMO_WEIGHTS} are missing; reinstall resnext-deploy")
    if arch is None:
        raise BadInputError("--checkpoint needs --arch to say which architecture it holds")
    try:
        spec = get_arch(arch)
    except KeyError as exc:
        raise BadInputError(str(exc.args[0])) from None
    if num_classes is not None and num_classes < 1:
        raise BadInputError(f"--num-classes must be at least 1, got {num_classes}")
    if image_size is not None and not 8 <= image_size <= 4096:
        raise BadInputError(f"--image-size must be between 8 and 4096, got {image_size}")
    sha = None
    if checkpoint is not None:
        from .checkpoint import infer_num_classes, read_state_dict

        checkpoint = Path(checkpoint).resolve()
        state = read_state_dict(checkpoint)  # fails early, with one line, on a bad file
        num_classes = num_classes or infer_num_classes(state)
        sha = sha256_file(checkpoint)
    return ModelSource(
        arch=spec.name,
        num_classes=num_classes or spec.num_classes,
        image_size=image_size or spec.preprocessing.image_size,
        checkpoint=None if checkpoint is None else str(checkpoint),
        checkpoint_sha256=sha,
    )
