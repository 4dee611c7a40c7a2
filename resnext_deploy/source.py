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
MAX_CLASSES = 1_000_000  # far above any real classifier; a larger count is a typo or a hostile manifest


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
        load_into(model, read_state_dict(path, self.arch), path, self.arch)
        return model.eval()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ModelSource:
        """Rebuild a source recorded in a manifest; any malformed field is a ``BadInputError``."""
        if not isinstance(data, dict) or not all(k in data for k in cls.__dataclass_fields__):
            raise BadInputError(f"the model source {str(data)[:80]!r} lacks fields of {list(cls.__dataclass_fields__)}")
        try:
            get_arch(str(data["arch"]))
        except KeyError as exc:
            raise BadInputError(str(exc.args[0])) from None
        for key, low, high in (("num_classes", 1, MAX_CLASSES), ("image_size", 8, 4096)):
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise BadInputError(f"{key} {str(value)[:40]} is not an integer between {low} and {high}")
        for key in ("checkpoint", "checkpoint_sha256"):
            if data[key] is not None and not isinstance(data[key], str):
                raise BadInputError(f"{key} must be a string or null, got {type(data[key]).__name__}")
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
    if num_classes is not None and not 1 <= num_classes <= MAX_CLASSES:
        raise BadInputError(f"--num-classes must be between 1 and {MAX_CLASSES}, got {num_classes}")
    if image_size is not None and not 8 <= image_size <= 4096:
        raise BadInputError(f"--image-size must be between 8 and 4096, got {image_size}")
    sha = None
    if checkpoint is not None:
        from .checkpoint import infer_num_classes, read_state_dict

        checkpoint = Path(checkpoint).resolve()
        state = read_state_dict(checkpoint, spec.name)  # fails early, with one line, on a bad file
        num_classes = num_classes or infer_num_classes(state)
        sha = sha256_file(checkpoint)
    return ModelSource(
        arch=spec.name,
        num_classes=num_classes or spec.num_classes,
        image_size=image_size or spec.preprocessing.image_size,
        checkpoint=None if checkpoint is None else str(checkpoint),
        checkpoint_sha256=sha,
    )
