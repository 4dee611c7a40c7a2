"""Images and arrays in, preprocessed float32 NCHW batches out.

The same code feeds calibration, ``verify`` and ``bench``. A data set is an iterable of
:class:`Batch` objects; images are decoded lazily, one batch at a time, so memory does not grow
with the number of images.
"""

from __future__ import annotations

import os
import random
import stat
import unicodedata
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import BadInputError, one_line
from .imageprep import MAX_ASPECT, MAX_IMAGE_PIXELS, decode_rgb, image_to_tensor, to_rgb  # noqa: F401
from .models import Preprocessing

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
MAX_ARRAY_BYTES = 2 << 30  # the most array data one .npz read may decompress: its counterpart of Pillow's limit
_CHUNK = 16 << 20


@dataclass
class Batch:
    images: np.ndarray
    labels: np.ndarray | None = None


def load_rgb(path: str | Path):
    """Decode an image file as 8-bit RGB (:func:`~resnext_deploy.imageprep.decode_rgb`); only a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block the open
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError("not a regular file")
    with os.fdopen(fd, "rb") as handle:
        return decode_rgb(handle)


def preprocess(image, pre: Preprocessing) -> np.ndarray:
    """``pre`` applied to an RGB image by :func:`~resnext_deploy.imageprep.image_to_tensor`, which Triton runs too."""
    return image_to_tensor(image, pre.resize_size, pre.image_size, pre.mean, pre.std, pre.interpolation)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _not_regular(path: Path) -> str | None:
    """Why a listed file is never opened (a FIFO, socket or device), or None.

    A file that cannot even be stat'ed (a symlink loop, a dangling link) is left to the decoder,
    which skips it with its own reason.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else "not a regular file (FIFO, socket or device)"


def class_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a class name, or None: names are data, one per line of Triton's labels.txt.

    A line break, NUL or other control character (Unicode categories Cc, Zl, Zp: ``splitlines`` breaks on some
    of them) would forge labels; bytes that are not UTF-8 (``os.fsdecode`` keeps them as lone surrogates)
    cannot be written to labels.txt, ONNX metadata or JSON.
    """
    for char in name:
        category = unicodedata.category(char)
        if category == "Cs":
            return "is not valid UTF-8"
        if category in ("Cc", "Zl", "Zp"):
            return f"holds a line break or control character (U+{ord(char):04X})"
    return None


def shown_name(name: str) -> str:
    """A name quoted on one line: escapes for control characters, the raw bytes of a name that is not UTF-8."""
    if any(unicodedata.category(char) == "Cs" for char in name):
        return repr(os.fsencode(name))[1:]
    return repr(name)


def check_class_names(names: Sequence[str], where: str) -> None:
    """Refuse (exit 3) the first name that is not a usable class name, saying ``where`` it came from."""
    for name in names:
        if problem := class_name_problem(name):
            raise BadInputError(f"{where}: class name {shown_name(name)} {problem}; use printable UTF-8 text")


@dataclass
class ImageFolder:
    """A folder of images, searched recursively; first-level subfolders are classes when present.

    Images beside the class folders belong to no class: they are skipped (``stray``) and the set stays
    labeled, unless they outnumber the images in class folders (then the folder is one unlabeled set).
    Class folder names are checked as class names (:func:`check_class_names`) whichever command reads them.
    """

    root: Path
    files: list[Path]
    labels: list[int] | None
    classes: list[str]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    stray: list[Path] = field(default_factory=list)

    @classmethod
    def scan(cls, root: str | Path) -> ImageFolder:
        root = Path(root)
        if not root.is_dir():
            raise BadInputError(f"{root} is not a directory; pass an image folder, a .npy or a .npz file")
        files: list[Path] = []
        skipped: list[tuple[Path, str]] = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=None):
            dirnames.sort()
            for name in sorted(filenames):
                if _is_image(name):
                    candidate = Path(dirpath) / name
                    reason = _not_regular(candidate)
                    (skipped.append((candidate, reason)) if reason else files.append(candidate))
        if not files:
            also = f"; skipped {len(skipped)} that are not regular files" if skipped else ""
            raise BadInputError(
                f"no images in {root} (looked for {', '.join(IMAGE_SUFFIXES)}){also}; point to a folder of images"
            )
        top = [p.relative_to(root).parts for p in files]
        in_classes = [(path, parts[0]) for path, parts in zip(files, top, strict=True) if len(parts) > 1]
        stray = [path for path, parts in zip(files, top, strict=True) if len(parts) == 1]
        if not in_classes or len(stray) > len(in_classes):
            return cls(root, files, None, [], skipped)
        classes = sorted({name for _path, name in in_classes})
        check_class_names(classes, f"the class folders of {root}")
        index = {name: i for i, name in enumerate(classes)}
        labels = [index[name] for _path, name in in_classes]
        return cls(root, [path for path, _name in in_classes], labels, classes, skipped, stray)

    def relabeled(self, names: Sequence[str]) -> ImageFolder:
        """The images labeled by the model's class indices when every class folder is one of ``names``.

        A folder of some of the model's classes (only ``7/``) is then labeled data for those classes; one
        with a folder the model does not name keeps its own labels (and is not the model's classes).
        """
        if self.labels is None or not names or self.classes == list(names) or not set(self.classes) <= set(names):
            return self
        index = {name: i for i, name in enumerate(names)}
        return replace(self, labels=[index[self.classes[label]] for label in self.labels], classes=list(names))

    @property
    def present(self) -> list[str]:
        """The classes that have images here (all of ``classes`` unless relabeled by a model's names)."""
        return [] if self.labels is None else [self.classes[i] for i in sorted(set(self.labels))]

    def stray_note(self) -> str | None:
        """The warning that names the images skipped beside the class folders, or None."""
        if not self.stray:
            return None
        shown = ", ".join(shown_name(path.name) for path in self.stray[:5])
        more = f" and {len(self.stray) - 5} more" if len(self.stray) > 5 else ""
        return (
            f"skipped {len(self.stray)} image(s) beside the class folders of {self.root}, which belong to no class: "
            f"{shown}{more} (move them into a class folder, or elsewhere)"
        )

    def ordered(self, seed: int) -> list[int]:
        """All file indices in a seeded order, round-robin over classes so any prefix is class-balanced."""
        rng = random.Random(seed)
        if self.labels is None:
            order = list(range(len(self.files)))
            rng.shuffle(order)
            return order
        per_class: dict[int, list[int]] = {}
        for i, label in enumerate(self.labels):
            per_class.setdefault(label, []).append(i)
        for members in per_class.values():
            rng.shuffle(members)
        order = []
        queues = [per_class[k] for k in sorted(per_class)]
        while any(queues):
            order += [q.pop(0) for q in queues if q]
        return order


class Dataset:
    """Preprocessed images (with labels where known), produced in batches on demand."""

    def __init__(self, description: str, count: int, has_labels: bool, fingerprint: str) -> None:
        self.description = description
        self.count = count
        self.has_labels = has_labels
        self.fingerprint = fingerprint
        self.available = count  # samples in the source from the offset on, before ``count`` caps them
        self.skipped: list[tuple[Path, str]] = []

    def batches(self, batch_size: int) -> Iterator[Batch]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __iter__(self) -> Iterator[Batch]:
        return self.batches(32)

    def skipped_summary(self) -> str | None:
        """One warning line about files that could not be used, or None."""
        notes = [self.stray_note()]
        if self.skipped:
            path, reason = self.skipped[0]
            notes.append(f"skipped {len(self.skipped)} unreadable image(s), e.g. {path}: {reason}")
        return "; ".join(note for note in notes if note) or None

    def stray_note(self) -> str | None:
        """Images of the source left out because they belong to no class (image folders only), or None."""
        return None


class ImageDataset(Dataset):
    """``count`` images of a folder in its seeded order, starting ``offset`` files in (held-out data)."""

    def __init__(self, folder: ImageFolder, pre: Preprocessing, count: int | None, seed: int, offset: int = 0) -> None:
        self.folder = folder
        self.pre = pre
        self.order = folder.ordered(seed)[offset:]
        wanted = len(self.order) if count is None else min(count, len(self.order))
        import hashlib

        digest = hashlib.sha256()
        for i in self.order[:wanted]:  # names as bytes (a Latin-1 name is not UTF-8) and each file's contents
            digest.update(os.fsencode(folder.files[i].relative_to(folder.root)) + b"\0")
            digest.update(_content_sha256(folder.files[i]).encode())
        digest.update(repr(pre).encode())
        label = f"{folder.root} ({wanted} of {len(folder.files)} images"
        label += f" after the first {offset}" if offset else ""
        label += f", {len(folder.present)} classes)" if folder.labels is not None else ")"
        super().__init__(label, wanted, folder.labels is not None, digest.hexdigest()[:16])
        self.available = len(self.order)

    def stray_note(self) -> str | None:
        return self.folder.stray_note()

    def batches(self, batch_size: int) -> Iterator[Batch]:
        self.skipped = list(self.folder.skipped)
        images: list[np.ndarray] = []
        labels: list[int] = []
        produced = 0
        for i in self.order:
            if produced >= self.count:
                break
            path = self.folder.files[i]
            try:
                array = preprocess(load_rgb(path), self.pre)
            except Exception as exc:  # noqa: BLE001 - any decoder failure means "skip this file"
                self.skipped.append((path, one_line(exc, 120)))
                continue
            images.append(array)
            if self.folder.labels is not None:
                labels.append(self.folder.labels[i])
            produced += 1
            if len(images) == batch_size:
                yield _batch(images, labels)
                images, labels = [], []
        if images:
            yield _batch(images, labels)
        if produced == 0:
            raise BadInputError(
                f"no usable image in {self.folder.root}: all {len(self.skipped)} files failed to decode "
                f"(first: {self.skipped[0][0].name}: {self.skipped[0][1]})"
            )


def _content_sha256(path: Path) -> str:
    """The file's sha256, so that an image rewritten in place changes the fingerprint; a placeholder if unreadable.

    An unreadable file is skipped later with its reason; here it only needs a stable mark.
    """
    from .artifacts import sha256_file

    try:
        return sha256_file(path)
    except (OSError, BadInputError):
        return "unreadable"


def _batch(images: list[np.ndarray], labels: list[int]) -> Batch:
    return Batch(np.stack(images), np.asarray(labels, dtype=np.int64) if labels else None)


class ArrayDataset(Dataset):
    """Preprocessed float32 NCHW arrays from ``.npy`` or ``.npz`` (keys ``images``/``x``, ``labels``/``y``).

    Only the requested rows are read: a ``.npy`` is memory-mapped, a ``.npz`` member is decompressed
    up to the last row needed, after its header's shape and dtype were checked. Every value must be
    finite and every label an integer class of the model.
    """

    def __init__(
        self,
        path: Path,
        shape: tuple[int, int, int],
        count: int | None,
        offset: int = 0,
        num_classes: int | None = None,
    ) -> None:
        images, labels, total = _read_arrays(path, shape, count, offset)
        available = max(total - offset, 0)
        wanted = len(images)
        self.images = images
        self.labels = labels
        if labels is not None and num_classes is not None and wanted:
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= num_classes:
                raise BadInputError(
                    f"{path} has labels from {low} to {high}; the model has {num_classes} classes (0 to "
                    f"{num_classes - 1}), so these labels belong to another data set"
                )
        import hashlib

        digest = hashlib.sha256()
        for start in range(0, wanted, 64):  # in chunks, so hashing a memory-mapped .npy stays flat in memory
            chunk = np.ascontiguousarray(self.images[start : start + 64], dtype=np.float32)
            if not np.isfinite(chunk).all():
                row = start + int(np.argwhere(~np.isfinite(chunk))[0][0]) + offset
                raise BadInputError(f"{path} holds NaN or Inf values (row {row}); fix or drop those images")
            digest.update(chunk.tobytes())
        label = f"{path} ({wanted} arrays" + (f" after the first {offset})" if offset else ")")
        super().__init__(label, wanted, self.labels is not None, digest.hexdigest()[:16])
        self.available = available

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for start in range(0, self.count, batch_size):
            stop = start + batch_size
            labels = None if self.labels is None else self.labels[start:stop]
            # a copy: memory-mapped and .npz rows are read-only, and runners may hand them to torch
            yield Batch(np.array(self.images[start:stop], dtype=np.float32), labels)


def _check_images(path: Path, dims: tuple[int, ...], dtype: np.dtype, shape: tuple[int, int, int]) -> None:
    if len(dims) != 4 or tuple(dims[1:]) != shape:
        raise BadInputError(
            f"{path} holds an array of shape {tuple(dims)}; expected (N, {shape[0]}, {shape[1]}, {shape[2]}) "
            "float32 images already preprocessed for this model"
        )
    if not np.issubdtype(dtype, np.floating):
        raise BadInputError(f"{path} holds {dtype} values; expected preprocessed float32 images")
    if dims[0] == 0:
        raise BadInputError(f"{path} holds no images")


def _check_labels(path: Path, dims: tuple[int, ...], dtype: np.dtype, rows: int) -> None:
    if len(dims) != 1 or not np.issubdtype(dtype, np.integer):
        raise BadInputError(
            f"{path} has labels of shape {tuple(dims)} and type {dtype}; expected a 1-D integer array of class indices"
        )
    if dims[0] != rows:
        raise BadInputError(f"{path}: {dims[0]} labels for {rows} images; they must match")


def _window(rows: int, count: int | None, offset: int) -> tuple[int, int]:
    """The rows to read: from ``offset``, at most ``count``."""
    start = min(offset, rows)
    return start, rows if count is None else min(rows, start + count)


def _read_arrays(
    path: Path, shape: tuple[int, int, int], count: int | None, offset: int
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """The requested image rows (and labels), and how many rows the file holds."""
    if path.suffix == ".npy":
        try:
            images = np.load(path, allow_pickle=False, mmap_mode="r")
        except (ValueError, OSError, EOFError) as exc:
            raise BadInputError(f"{path} is not a readable .npy file ({one_line(exc, 120)})") from None
        _check_images(path, images.shape, images.dtype, shape)
        start, stop = _window(len(images), count, offset)
        return images[start:stop], None, len(images)
    try:
        with zipfile.ZipFile(path) as archive:
            keys = {name[: -len(".npy")]: name for name in archive.namelist() if name.endswith(".npy")}
            image_key = next((k for k in ("images", "x", "arr_0") if k in keys), None)
            if image_key is None:
                raise BadInputError(f"{path} has no 'images' (or 'x') array; found {sorted(keys)}")
            label_key = next((k for k in ("labels", "y") if k in keys), None)
            with archive.open(keys[image_key]) as member:
                dims, dtype = _member_header(path, member)
                _check_images(path, dims, dtype, shape)
                start, stop = _window(dims[0], count, offset)
                images = _read_rows(path, member, dims, dtype, start, stop)
            labels = None
            if label_key is not None:
                with archive.open(keys[label_key]) as member:
                    label_dims, label_dtype = _member_header(path, member)
                    _check_labels(path, label_dims, label_dtype, dims[0])
                    labels = _read_rows(path, member, label_dims, label_dtype, start, stop).astype(np.int64)
            return images, labels, dims[0]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise BadInputError(f"{path} is not a readable .npz file ({one_line(exc, 120)})") from None


def _member_header(path: Path, member) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` inside a ``.npz``, read from its header alone."""
    from numpy.lib import format as npy

    version = npy.read_magic(member)
    if version == (1, 0):
        dims, fortran, dtype = npy.read_array_header_1_0(member)
    elif version == (2, 0):
        dims, fortran, dtype = npy.read_array_header_2_0(member)
    else:
        raise BadInputError(f"{path} holds a .npy of format version {version}; save it again with numpy")
    if dtype.hasobject:
        raise BadInputError(f"{path} holds Python objects (dtype {dtype}), which are never loaded; save numbers")
    if fortran and len(dims) > 1:
        raise BadInputError(f"{path} holds a Fortran-ordered array; save it with np.ascontiguousarray first")
    return tuple(int(d) for d in dims), dtype


def _read_rows(path: Path, member, dims: tuple[int, ...], dtype: np.dtype, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a C-ordered member, decompressing no further than ``stop``."""
    row_bytes = int(np.prod(dims[1:], dtype=np.int64)) * dtype.itemsize
    wanted = (stop - start) * row_bytes
    if wanted > MAX_ARRAY_BYTES:
        raise BadInputError(
            f"{path} would need {wanted / 2**30:.1f} GiB for {stop - start} rows (limit "
            f"{MAX_ARRAY_BYTES / 2**30:.0f} GiB); pass a smaller --count"
        )
    to_skip = start * row_bytes
    while to_skip:
        skipped = len(member.read(min(to_skip, _CHUNK)))
        if not skipped:
            break
        to_skip -= skipped
    data = member.read(wanted)
    if to_skip or len(data) != wanted:
        raise BadInputError(f"{path} is truncated: its header promises {dims[0]} rows")
    return np.frombuffer(data, dtype=dtype).reshape((stop - start, *dims[1:]))


class SyntheticDataset(Dataset):
    """Seeded standard-normal inputs, for when no data is given (parity only; no accuracy)."""

    def __init__(self, shape: tuple[int, int, int], count: int, seed: int = 0) -> None:
        self.shape = shape
        self.seed = seed
        super().__init__(f"synthetic N(0,1) inputs (seed {seed}, {count} samples)", count, False, f"synthetic-{seed}")

    def batches(self, batch_size: int) -> Iterator[Batch]:
        rng = np.random.default_rng(self.seed)
        for start in range(0, self.count, batch_size):
            n = min(batch_size, self.count - start)
            yield Batch(rng.standard_normal((n, *self.shape), dtype=np.float32))


def open_dataset(
    source: str | Path | None,
    pre: Preprocessing,
    count: int | None = None,
    seed: int = 0,
    offset: int = 0,
    num_classes: int | None = None,
    class_names: Sequence[str] = (),
) -> Dataset:
    """An image folder, a ``.npy``/``.npz`` of preprocessed arrays, or (``None``) synthetic inputs.

    ``offset`` skips that many samples of the seeded order (a folder) or rows (arrays): calibration
    takes the first ones and held-out checks the rest. ``num_classes`` bounds the labels of arrays;
    ``class_names`` (the model's) label a folder whose class folders are some of them by the model's indices.
    """
    shape = (3, pre.image_size, pre.image_size)
    if count is not None and count < 1:
        raise BadInputError(f"count must be at least 1, got {count}")
    if source is None:
        return SyntheticDataset(shape, count or 64, seed)
    path = Path(source)
    if not path.exists():
        raise BadInputError(f"{path} does not exist; pass an image folder, a .npy or a .npz file")
    if not path.is_dir():
        if _not_regular(path):
            raise BadInputError(f"{path} is not a regular file (FIFO, socket or device); pass a real file")
        if path.suffix not in (".npy", ".npz"):
            raise BadInputError(f"{path} is a file but not .npy/.npz; pass an image folder or a .npy/.npz")
        return ArrayDataset(path, shape, count, offset, num_classes)
    return ImageDataset(ImageFolder.scan(path).relabeled(class_names), pre, count, seed, offset)


def take(dataset: Dataset, count: int, batch_size: int = 32) -> Batch:
    """The first ``count`` samples of a data set as one batch (for parity checks on a few inputs)."""
    images, labels = [], []
    got = 0
    for batch in dataset.batches(batch_size):
        images.append(batch.images)
        if batch.labels is not None:
            labels.append(batch.labels)
        got += len(batch.images)
        if got >= count:
            break
    return Batch(np.concatenate(images)[:count], np.concatenate(labels)[:count] if labels else None)
