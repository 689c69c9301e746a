from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attfc_lite.imagefolder import CorruptImageError, ImageFolderFaces, SkippedImageWarning

H, W = 12, 10  # non-square, so a swapped H/W would show


def _write(path: Path, array: np.ndarray, fmt: str | None = None) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)
    return array


@pytest.fixture()
def faces(tmp_path: Path) -> dict:
    """3 identities; bob has a garbage .png, carol a zero-byte .jpg (sorted last overall)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "faces"
    arrays: dict[str, np.ndarray] = {}
    for name in ["alice/a0.png", "alice/a1.png", "alice/a2.png", "carol/c0.png", "carol/c1.png"]:
        arrays[name] = _write(root / name, rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    for name in ["bob/b0.jpg", "bob/b1.jpeg"]:
        arrays[name] = _write(root / name, rng.integers(0, 256, (H, W, 3), dtype=np.uint8), "JPEG")
    (root / "bob" / "bad.png").write_bytes(b"this is not an image \x00\x01\x02" * 10)
    (root / "carol" / "empty.jpg").write_bytes(b"")
    (root / "carol" / "notes.txt").write_text("not an image, ignored by extension")
    (root / ".ipynb_checkpoints").mkdir()  # must not become an identity
    return {"root": root, "arrays": arrays}


def _expected_tensor(path: str) -> torch.Tensor:
    # Independent reference: PIL's own decode of the file, scaled to [0, 1].
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)


def test_labels_classes_and_skip_warning(faces):
    with pytest.warns(SkippedImageWarning) as record:
        ds = ImageFolderFaces(faces["root"])
    assert ds.classes == ["alice", "bob", "carol"]
    assert ds.num_classes == 3
    assert len(ds) == 7
    expected = {"alice": 0, "bob": 1, "carol": 2}
    for (path, label), tensor_label in zip(ds.samples, ds.labels.tolist()):
        assert label == tensor_label == expected[Path(path).parent.name]
    assert ds.labels.dtype == torch.long
    assert ds.images_per_identity().tolist() == [3, 2, 2]

    assert len(record) == 1
    message = str(record[0].message)
    assert "bad.png" in message and "empty.jpg" in message and "2" in message
    assert sorted(Path(p).name for p, _ in ds.skipped) == ["bad.png", "empty.jpg"]
    assert all(reason for _, reason in ds.skipped)


def test_getitem_matches_pil(faces):
    with pytest.warns(SkippedImageWarning):
        ds = ImageFolderFaces(faces["root"])
    for i, (path, label) in enumerate(ds.samples):
        image, got_label, quality = ds[i]
        assert image.shape == (3, H, W) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert got_label == label and isinstance(got_label, int)
        assert math.isnan(quality)
        torch.testing.assert_close(image, _expected_tensor(path), rtol=0, atol=1e-6)
        rel = f"{Path(path).parent.name}/{Path(path).name}"
        if rel.endswith(".png"):  # lossless: compare with the array written
            arr = faces["arrays"][rel]
            assert float(image[1, 5, 7]) == pytest.approx(arr[5, 7, 1] / 255.0, abs=1e-6)
    assert ds[-1][1] == ds.samples[-1][1]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_raise_mode_names_the_file(faces):
    with pytest.raises(CorruptImageError, match=r"bad\.png") as info:
        ImageFolderFaces(faces["root"], on_error="raise")
    assert isinstance(info.value, ValueError)
    assert "on_error='skip'" in str(info.value)


def test_verify_false_skip_returns_next_and_wraps(faces):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is decoded, so nothing may warn yet
        ds = ImageFolderFaces(faces["root"], verify=False)
    assert len(ds) == 9 and ds.skipped == []
    names = [Path(p).name for p, _ in ds.samples]
    bad = names.index("bad.png")
    with pytest.warns(SkippedImageWarning, match=r"bad\.png"):
        image, label, _ = ds[bad]
    nxt = ds.samples[bad + 1][0]
    torch.testing.assert_close(image, _expected_tensor(nxt), rtol=0, atol=1e-6)
    assert label == ds.samples[bad + 1][1]
    assert [Path(p).name for p, _ in ds.skipped] == ["bad.png"]

    assert names[-1] == "empty.jpg"
    with pytest.warns(SkippedImageWarning, match=r"empty\.jpg"):
        image, label, _ = ds[len(ds) - 1]
    torch.testing.assert_close(image, _expected_tensor(ds.samples[0][0]), rtol=0, atol=1e-6)
    assert label == 0
    assert len(ds.skipped) == 2


def test_verify_false_raise(faces):
    ds = ImageFolderFaces(faces["root"], verify=False, on_error="raise")
    bad = [Path(p).name for p, _ in ds.samples].index("empty.jpg")
    with pytest.raises(CorruptImageError, match=r"empty\.jpg"):
        ds[bad]
    assert ds[0][1] == 0


def test_bad_on_error(faces):
    with pytest.raises(ValueError, match=r"on_error='ignore'.*skip.*raise"):
        ImageFolderFaces(faces["root"], on_error="ignore")


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_bad_image_size(faces, size):
    with pytest.raises(ValueError, match="image_size"):
        ImageFolderFaces(faces["root"], image_size=size)


def test_empty_or_wrong_root(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"root=.*identity"):
        ImageFolderFaces(empty)
    with pytest.raises(ValueError, match="root="):
        ImageFolderFaces(tmp_path / "missing")
    flat = tmp_path / "flat"  # images directly in root: no identity folders
    _write(flat / "x.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"root=.*identity"):
        ImageFolderFaces(flat)
    no_images = tmp_path / "no_images"
    (no_images / "alice").mkdir(parents=True)
    (no_images / "alice" / "readme.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"root=.*no image files"):
        ImageFolderFaces(no_images)


def test_all_files_corrupt(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"junk")
    with pytest.warns(SkippedImageWarning), pytest.raises(ValueError, match="could be read"):
        ImageFolderFaces(tmp_path)


def test_identity_left_without_images_warns(tmp_path):
    _write(tmp_path / "a" / "x.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "y.png").write_bytes(b"junk")
    with pytest.warns(SkippedImageWarning) as record:
        ds = ImageFolderFaces(tmp_path)
    assert any("'b'" in str(w.message) for w in record)
    assert ds.images_per_identity().tolist() == [1, 0]


def test_image_size_resizes(tmp_path):
    arr = np.zeros((16, 16, 3), np.uint8)
    arr[:, :8, 0] = 255  # left half red
    arr[:, 8:, 2] = 255  # right half blue
    _write(tmp_path / "a" / "x.png", arr)
    gray = np.full((20, 6), 128, np.uint8)
    _write(tmp_path / "b" / "g.png", gray)  # greyscale, other aspect ratio
    ds = ImageFolderFaces(tmp_path, image_size=8)
    image, _, _ = ds[0]
    assert image.shape == (3, 8, 8)
    red, blue = torch.tensor([1.0, 0, 0]), torch.tensor([0, 0, 1.0])
    # Columns far from the seam see only one colour under a bilinear (antialiased) filter.
    torch.testing.assert_close(image[:, :, :2].permute(1, 2, 0), red.expand(8, 2, 3), rtol=0, atol=1e-6)
    torch.testing.assert_close(image[:, :, 6:].permute(1, 2, 0), blue.expand(8, 2, 3), rtol=0, atol=1e-6)
    g, _, _ = ds[1]
    assert g.shape == (3, 8, 8)
    torch.testing.assert_close(g, torch.full((3, 8, 8), 128 / 255), rtol=0, atol=1e-6)


def test_progress_bar_runs(faces, capsys):
    with pytest.warns(SkippedImageWarning):
        ds = ImageFolderFaces(faces["root"], progress=True)
    assert len(ds) == 7
    assert "verifying" in capsys.readouterr().err
