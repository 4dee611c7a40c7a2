"""Image decoding and preprocessing, data set selection and array inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnext_deploy.data import ImageFolder, load_rgb, open_dataset, preprocess, take
from resnext_deploy.errors import BadInputError
from resnext_deploy.models import Preprocessing

PRE = Preprocessing(16, 18, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _save(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "1", "LA"])
def test_every_mode_becomes_rgb(tmp_path: Path, mode: str):
    suffix = ".tiff" if mode in ("CMYK", "I;16") else ".png"
    path = _save(tmp_path / f"img{suffix}", Image.new(mode, (20, 10)))
    image = load_rgb(path)
    assert image.mode == "RGB"
    array = preprocess(image, PRE)
    assert array.shape == (3, 16, 16) and array.dtype == np.float32 and np.isfinite(array).all()


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path):
    data = np.full((8, 8), 65535 // 2, dtype=np.uint16)
    path = _save(tmp_path / "deep.png", Image.fromarray(data))
    assert 120 <= np.asarray(load_rgb(path))[0, 0, 0] <= 135


def test_exif_orientation_is_applied(tmp_path: Path):
    image = Image.new("RGB", (30, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    path = _save(tmp_path / "rot.jpg", image, exif=exif.tobytes())
    assert load_rgb(path).size == (10, 30)


def test_preprocessing_normalises_with_mean_and_std(tmp_path: Path):
    array = preprocess(Image.new("RGB", (40, 20), (255, 0, 128)), PRE)
    assert array[0].mean() == pytest.approx((1 - 0.5) / 0.25)
    assert array[1].mean() == pytest.approx((0 - 0.5) / 0.25)


def _folder(root: Path, per_class: dict[str, int]) -> Path:
    for name, count in per_class.items():
        for i in range(count):
            _save(root / name / f"{i}.png", Image.new("L", (8, 8), i * 10))
    return root


def test_class_balanced_seeded_selection(tmp_path: Path):
    folder = ImageFolder.scan(_folder(tmp_path, {"a": 10, "b": 10, "c": 2}))
    assert folder.classes == ["a", "b", "c"]
    order = folder.ordered(seed=3)
    assert order == folder.ordered(seed=3)
    first = [folder.labels[i] for i in order[:6]]
    assert sorted(first) == [0, 0, 1, 1, 2, 2]
    dataset = open_dataset(tmp_path, PRE, count=5, seed=3)
    batch = take(dataset, 5)
    assert batch.images.shape == (5, 3, 16, 16) and batch.labels is not None


def test_corrupt_files_are_skipped_and_counted(tmp_path: Path):
    _folder(tmp_path, {"a": 3})
    (tmp_path / "a" / "bad.png").write_bytes(b"not an image")
    (tmp_path / "a" / "empty.jpg").write_bytes(b"")
    dataset = open_dataset(tmp_path, PRE)
    assert sum(len(b.images) for b in dataset.batches(2)) == 3
    assert dataset.skipped_summary().startswith("skipped 2 unreadable")


def test_no_usable_image_is_an_error(tmp_path: Path):
    (tmp_path / "x.png").write_bytes(b"junk")
    with pytest.raises(BadInputError, match="no usable image"):
        list(open_dataset(tmp_path, PRE).batches(4))


def test_empty_folder_and_non_images(tmp_path: Path):
    with pytest.raises(BadInputError, match="no images"):
        open_dataset(tmp_path, PRE)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BadInputError, match="no images"):
        open_dataset(tmp_path, PRE)


def test_arrays(tmp_path: Path):
    good = tmp_path / "good.npz"
    np.savez(good, images=np.zeros((6, 3, 16, 16), np.float32), labels=np.arange(6))
    batch = take(open_dataset(good, PRE, count=4), 4)
    assert batch.images.shape == (4, 3, 16, 16) and list(batch.labels) == [0, 1, 2, 3]
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 16, 16, 3), np.float32))
    with pytest.raises(BadInputError, match="expected \\(N, 3, 16, 16\\)"):
        open_dataset(wrong, PRE)


def test_synthetic_is_seeded():
    a = take(open_dataset(None, PRE, count=3, seed=1), 3).images
    b = take(open_dataset(None, PRE, count=3, seed=1), 3).images
    np.testing.assert_array_equal(a, b)
