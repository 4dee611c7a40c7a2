"""Which PyTorch model an artifact directory is about: architecture, classes, size and weights."""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .artifacts import ONNX_FILES, Manifest, sha256_file
from .data import Dataset, ImageDataset, ImageFolder, check_class_names
from .demo import DEMO_CALIB, DEMO_VAL, DEMO_WEIGHTS
from .errors import BadInputError, UsageError
from .models import (
    DEMO_ARCH,
    INTERPOLATIONS,
    PRESETS,
    Arch,
    LibraryArch,
    Preprocessing,
    create_model,
    get_arch,
    resize_for_crop_pct,
)
from .serde import RecordError, decode, encode

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
    preprocess: Preprocessing | None = None  # None: the architecture's default (manifests made before it existed)
    classes: tuple[str, ...] = ()  # names given at export (--class-names, the data's class folders); () none given

    @property
    def spec(self) -> Arch:
        return get_arch(self.arch)

    @property
    def preprocessing(self) -> Preprocessing:
        if self.preprocess is not None:
            return self.preprocess
        pre = self.spec.preprocessing
        return pre if pre.image_size == self.image_size else pre.with_image_size(self.image_size)

    @property
    def is_demo(self) -> bool:
        """The bundled demo model (its architecture with the bundled checkpoint), whose own data is bundled too."""
        if self.arch != DEMO_ARCH or self.checkpoint_sha256 is None or not DEMO_WEIGHTS.exists():
            return False
        return sha256_file(DEMO_WEIGHTS) == self.checkpoint_sha256

    @property
    def random_weights(self) -> bool:
        """Seeded random weights on a real architecture: its outputs and accuracy mean nothing."""
        return self.checkpoint is None and self.arch != DEMO_ARCH

    def weights_warning(self) -> str | None:
        """The loud line every command prints and every record carries when the weights are random."""
        if not self.random_weights:
            return None
        return (
            f"RANDOM WEIGHTS: {self.arch} was exported without --checkpoint, so its weights are seeded random "
            "numbers; parity checks still run, but accuracy and INT8 calibration mean nothing"
        )

    @property
    def class_names(self) -> tuple[str, ...]:
        """The names given at export, else the architecture's own when the class count is theirs, else none."""
        names = self.classes or self.spec.class_names
        return names if len(names) == self.num_classes else ()

    def describe(self) -> str:
        """The choices an export makes, in one line: what the user reads before a minute of work."""
        pre = self.preprocessing
        names = f": {_names(self.class_names)}" if self.class_names else " (no class names; --class-names FILE)"
        weights = self.checkpoint or "seeded random weights"
        return (
            f"{self.arch}, {self.num_classes} classes{names}; weights: {weights}; preprocessing: resize the short "
            f"side to {pre.resize_size} ({pre.interpolation}), center crop {pre.image_size}, mean "
            f"{','.join(f'{v:g}' for v in pre.mean)}, std {','.join(f'{v:g}' for v in pre.std)}"
        )

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
        """The source as JSON values (``serde.encode``), for the records that embed it."""
        return encode(self)

    @classmethod
    def from_dict(cls, data: object) -> ModelSource:
        """Rebuild a source recorded in a manifest or a record; any malformed field is a ``BadInputError``.

        ``preprocess`` and ``classes`` are optional: manifests written before they existed use the architecture's.
        """
        try:
            source = decode(cls, data)
        except RecordError as exc:
            raise BadInputError(str(exc)) from None
        try:
            get_arch(source.arch)
        except KeyError as exc:
            raise BadInputError(str(exc.args[0])) from None
        for key, low, high in (("num_classes", 1, MAX_CLASSES), ("image_size", 8, 4096)):
            if not low <= getattr(source, key) <= high:
                raise BadInputError(
                    f"{key} {str(getattr(source, key))[:40]} is not an integer between {low} and {high}"
                )
        if source.classes and len(source.classes) != source.num_classes:
            raise BadInputError(f"{len(source.classes)} recorded class names for {source.num_classes} classes")
        check_class_names(source.classes, "the recorded class names")
        return source


@dataclass(frozen=True)
class DemoData:
    """The bundled digits' calibration and labeled validation splits (package data, so a wheel has them)."""

    calib: Path
    val: Path


def demo_data(source: ModelSource) -> DemoData | None:
    """The bundled digits for a model of the demo architecture (their classes are its classes), else None.

    The rest of the package reaches the bundled demo only through here and :func:`resolve_source`.
    """
    return DemoData(DEMO_CALIB, DEMO_VAL) if source.arch == DEMO_ARCH else None


def _quiet(_message: str) -> None:
    """The default ``log``: library callers that pass none hear nothing."""


def parse_triple(text: str | None, flag: str) -> tuple[float, float, float] | None:
    """``0.485,0.456,0.406`` into three floats (one per RGB channel)."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise BadInputError(f"{flag} takes three comma-separated numbers (R,G,B); got {text!r}")
    return values[0], values[1], values[2]


def resolve_preprocessing(
    spec: Arch,
    image_size: int | None = None,
    preset: str | None = None,
    resize_size: int | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    mean: str | None = None,
    std: str | None = None,
    log: Callable[[str], None] = _quiet,
) -> Preprocessing:
    """The architecture's preprocessing, or a named preset's, with the command line's choices applied over it.

    A preset is one of :data:`PRESETS` or a published weights tag (timm's ``arch.tag``, torchvision's
    ``Enum.MEMBER``), whose transform is read from the installed library when it imports, else from the table.
    ``log`` gets one warning when the result's resize or crop is none of the architecture's published weights'.
    """
    from .weights import WEIGHT_TAGS, mismatch_warning, tag_preprocessing

    if preset is not None and preset not in PRESETS and preset not in WEIGHT_TAGS:
        raise UsageError(
            f"unknown --preset {preset!r}; choose one of: {', '.join(PRESETS)}, or a weights tag such as "
            "resnext50_32x4d.tv_in1k (timm) or ResNeXt50_32X4D_Weights.IMAGENET1K_V2 (torchvision); README, Models"
        )
    if preset in WEIGHT_TAGS:
        pre, where = tag_preprocessing(WEIGHT_TAGS[preset], log)
        log(f"--preset {preset}: resize {pre.resize_size}, crop {pre.image_size}, {pre.interpolation} (from {where})")
    else:
        pre = PRESETS[preset] if preset else spec.preprocessing
    pre = _apply_options(pre, image_size, resize_size, crop_pct, interpolation, mean, std)
    if warning := mismatch_warning(spec, pre, preset):
        log(f"warning: {warning}")
    return pre


def _apply_options(
    pre: Preprocessing,
    image_size: int | None,
    resize_size: int | None,
    crop_pct: float | None,
    interpolation: str | None,
    mean: str | None,
    std: str | None,
) -> Preprocessing:
    """The single settings of the command line over a preset or the architecture's default."""
    if image_size is not None:
        pre = pre.with_image_size(image_size)
    if resize_size is not None and crop_pct is not None:
        raise BadInputError("give --resize-size or --crop-pct, not both (crop-pct = image size / resize size)")
    if crop_pct is not None:
        if not 0.0 < crop_pct <= 1.0:
            raise BadInputError(f"--crop-pct must be in (0, 1], got {crop_pct:g}")
        resize_size = resize_for_crop_pct(pre.image_size, crop_pct)
    if resize_size is not None:
        if not pre.image_size <= resize_size <= 8 * pre.image_size:
            raise BadInputError(
                f"--resize-size must be from the image size {pre.image_size} to {8 * pre.image_size}, got {resize_size}"
            )
        pre = replace(pre, resize_size=resize_size)
    if interpolation is not None:
        if interpolation not in INTERPOLATIONS:
            raise UsageError(f"--interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
        pre = replace(pre, interpolation=interpolation)
    if (values := parse_triple(mean, "--mean")) is not None:
        pre = replace(pre, mean=values)
    if (values := parse_triple(std, "--std")) is not None:
        if min(values) <= 0:
            raise BadInputError(f"--std must be positive, got {std!r}")
        pre = replace(pre, std=values)
    return pre


@dataclass(frozen=True)
class SourceOptions:
    """What the user said about the model (``export`` and ``pipeline``): all None means the bundled demo model.

    Ranges fail here, once, as bad input; :func:`resolve_source` turns the choices into a :class:`ModelSource`.
    """

    arch: str | None = None
    checkpoint: str | Path | None = None
    num_classes: int | None = None
    image_size: int | None = None
    preset: str | None = None
    resize_size: int | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    mean: str | None = None
    std: str | None = None
    class_names: str | Path | None = None

    def __post_init__(self) -> None:
        if self.num_classes is not None and not 1 <= self.num_classes <= MAX_CLASSES:
            raise BadInputError(f"--num-classes must be between 1 and {MAX_CLASSES}, got {self.num_classes}")
        if self.image_size is not None and not 8 <= self.image_size <= 4096:
            raise BadInputError(f"--image-size must be between 8 and 4096, got {self.image_size}")


def resolve_source(
    options: SourceOptions | None = None,
    name_folders: Sequence[str | Path | None] = (),
    log: Callable[[str], None] = _quiet,
) -> ModelSource:
    """Turn command-line choices into a :class:`ModelSource`; nothing given means the bundled demo model.

    Class names come from ``options.class_names`` (a file, one per line, or a folder of class subfolders),
    else from the first of ``name_folders`` (the data given with the export) whose class subfolders are as
    many as the model's classes; the model's class count follows the names when nothing else sets it.
    """
    from .weights import WEIGHT_TAGS

    options = options or SourceOptions()
    arch, checkpoint, num_classes, class_names = (
        options.arch, options.checkpoint, options.num_classes, options.class_names
    )  # fmt: skip
    if arch is None and options.preset in WEIGHT_TAGS:  # a weights tag names its architecture
        arch = WEIGHT_TAGS[options.preset].arch
    if arch is None and checkpoint is None:
        arch, checkpoint = DEMO_ARCH, DEMO_WEIGHTS
        if not DEMO_WEIGHTS.exists():
            raise BadInputError(f"the bundled demo weights {DEMO_WEIGHTS} are missing; reinstall resnext-deploy")
    if arch is None:
        raise UsageError("--checkpoint needs --arch to say which architecture it holds")
    try:
        spec = get_arch(arch)
    except KeyError as exc:
        raise BadInputError(str(exc.args[0])) from None
    if isinstance(spec, LibraryArch):  # timm builds it: say now, in one line, when timm cannot
        from .models import timm_module

        timm_module(spec.name)
    pre = resolve_preprocessing(
        spec, options.image_size, options.preset, options.resize_size, options.crop_pct, options.interpolation,
        options.mean, options.std, log=log,
    )  # fmt: skip
    sha = None
    if checkpoint is not None:
        from .checkpoint import infer_num_classes, read_state_dict

        checkpoint = Path(checkpoint).resolve()
        state = read_state_dict(checkpoint, spec.name)  # fails early, with one line, on a bad file
        num_classes = num_classes or infer_num_classes(state)
        sha = sha256_file(checkpoint)
    names = read_class_names(class_names) if class_names is not None else ()
    num_classes = num_classes or len(names) or spec.num_classes
    if names and len(names) != num_classes:
        raise BadInputError(f"--class-names {class_names} names {len(names)} classes; the model has {num_classes}")
    for folder in [f for f in name_folders if f is not None and Path(f).is_dir()]:
        found = tuple(ImageFolder.scan(folder).classes)  # every folder: its names are checked before any work
        if not names and len(found) == num_classes and found != spec.class_names:  # the architecture's own: as given
            names = found
    return ModelSource(
        arch=spec.name,
        num_classes=num_classes,
        image_size=pre.image_size,
        checkpoint=None if checkpoint is None else str(checkpoint),
        checkpoint_sha256=sha,
        preprocess=pre,
        classes=names,
    )


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """``--class-names``: a text file with one name per line (blank lines ignored), or a folder's class subfolders.

    Lines end at a line feed (CRLF too) and nowhere else: a name holding any other line break or control
    character, or bytes that are not UTF-8, is refused naming its line (folders: :meth:`ImageFolder.scan`).
    """
    path = Path(path)
    if path.is_dir():
        names = tuple(ImageFolder.scan(path).classes)
    else:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BadInputError(f"cannot read --class-names {path}: {exc.strerror or exc}") from None
        lines = []
        for number, raw in enumerate(data.split(b"\n"), start=1):
            try:
                line = raw.removesuffix(b"\r").decode("utf-8").strip()
            except UnicodeDecodeError:
                line = os.fsdecode(raw.removesuffix(b"\r")).strip()  # kept as surrogates: refused, shown as bytes
            check_class_names([line], f"--class-names {path} line {number}")
            if line:
                lines.append(line)
        names = tuple(lines)
    if not names:
        raise BadInputError(f"--class-names {path} names no class (one name per line, or class subfolders)")
    if len(set(names)) != len(names):
        raise BadInputError(f"--class-names {path} names a class twice")
    return names


def labels_match_model(dataset: Dataset, source: ModelSource) -> bool:
    """Whether a data set's labels are the model's class indices, so that accuracy means something.

    Folder labels are the sorted class-subfolder indices (torchvision's ImageFolder convention); they
    count when the subfolders are the model's class names in order or, without names, as many.
    """
    if not dataset.has_labels:
        return False
    if not isinstance(dataset, ImageDataset):
        return True
    classes = dataset.folder.classes  # the model's names when the folders were some of them (ImageFolder.relabeled)
    if source.class_names:
        return list(classes) == list(source.class_names)
    return len(classes) == source.num_classes


def label_note(dataset: Dataset, source: ModelSource) -> str | None:
    """Why accuracy on this data is not reported (unlabeled, or folders that are not the model's classes), or None."""
    if not isinstance(dataset, ImageDataset):
        return None
    classes = dataset.folder.classes
    if not dataset.has_labels:
        return (
            f"{dataset.folder.root} has no class subfolders, so the images are unlabeled: parity is checked, "
            "accuracy is not (put the images in one subfolder per class for accuracy)"
        )
    if labels_match_model(dataset, source):
        present = dataset.folder.present
        if len(present) == len(classes):
            return None
        return (
            f"{dataset.folder.root} holds {len(present)} of the model's {len(classes)} classes ({_names(present)}): "
            "accuracy is over those classes only"
        )
    expected = (
        f"the model's classes ({_names(source.class_names)})"
        if source.class_names
        else f"the model's {source.num_classes} classes"
    )
    return (
        f"the class folders of {dataset.folder.root} ({len(classes)}: {_names(classes)}) do not match {expected}; "
        "accuracy is not reported because it would mean nothing"
    )


def _names(names: Sequence[str], shown: int = 6) -> str:
    return ", ".join(names[:shown]) + (f", ... ({len(names)} in all)" if len(names) > shown else "")


def recorded_source(manifest: Manifest) -> ModelSource:
    """The model ``model.onnx`` was exported from, as its manifest entry records it.

    A malformed record is a ``BadInputError`` that names the manifest, so the fix (export again) is clear.
    """
    entry = manifest.entry(ONNX_FILES["fp32"])
    recorded = None if entry is None else entry.source
    problem = "names no model source"
    if recorded is not None:
        try:
            return ModelSource.from_dict(recorded)
        except BadInputError as exc:
            problem = f"has a bad model source: {exc}"
    raise BadInputError(
        f"{manifest.path}: the entry {ONNX_FILES['fp32']!r} {problem}; delete the manifest and run export again"
    )


def artifact_dir(directory: str | Path) -> Path:
    """The directory of an earlier export, its manifest and recorded model checked before anything is locked there."""
    path = Path(directory)
    if not path.is_dir():
        raise BadInputError(f"--dir {path} is not a directory; run `{export_command(path)}` first")
    manifest = Manifest(path)
    if manifest.entry(ONNX_FILES["fp32"]) is None:
        raise BadInputError(f"{path} has no exported model.onnx in its manifest; run `resnext-deploy export` first")
    recorded_source(manifest)
    return path


def export_command(directory: str | Path) -> str:
    """The ``resnext-deploy export`` line hints print, shell-quoted so that it can be pasted as it is."""
    return shlex.join(["resnext-deploy", "export", "--dir", str(directory)])
