from __future__ import annotations

import math
import os
import struct
import unicodedata
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from attfc_lite import imagefolder
from attfc_lite.checks import ArgumentError
from attfc_lite.imagefolder import (
    CorruptImageError,
    ImageFolderFaces,
    LayoutWarning,
    SkippedImageWarning,
    load_image,
)

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
    with pytest.raises(ArgumentError, match=r"^on_error must be one of \['skip', 'raise'\], got 'ignore'"):
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
    with pytest.raises(ValueError, match=r"^root .*missing.*does not exist"):
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


# --- messy folders: symlinks -------------------------------------------------------------------

def _tiny(path: Path, value: int) -> None:
    """A 4x4 PNG filled with `value`, so each file's identity can be read back from its pixels."""
    _write(path, np.full((4, 4, 3), value, np.uint8))


def _value(image: torch.Tensor) -> int:
    return round(float(image[0, 0, 0]) * 255)


@pytest.fixture()
def two_people(tmp_path: Path) -> Path:
    """alice: one image (value 10); bob: two images (20, 21). Nothing else."""
    root = tmp_path / "faces"
    _tiny(root / "alice" / "a0.png", 10)
    _tiny(root / "bob" / "b0.png", 20)
    _tiny(root / "bob" / "b1.png", 21)
    return root


def _by_identity(ds: ImageFolderFaces) -> dict[str, list[int]]:
    """{identity: sorted pixel values of its images}, read through __getitem__."""
    out: dict[str, list[int]] = {c: [] for c in ds.classes}
    for i in range(len(ds)):
        image, label, _ = ds[i]
        out[ds.classes[label]].append(_value(image))
    return {c: sorted(v) for c, v in out.items()}


def test_symlink_loop_to_parent_gives_no_duplicates(two_people):
    # alice/loop -> .. is the dataset root: following it relabels bob's images as alice's,
    # over and over, until the OS refuses the path.
    (two_people / "alice" / "loop").symlink_to("..", target_is_directory=True)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ds = ImageFolderFaces(two_people)
    assert ds.classes == ["alice", "bob"]
    assert _by_identity(ds) == {"alice": [10], "bob": [20, 21]}
    assert len(ds) == 3
    assert ds.skipped_links == [(str(two_people / "alice" / "loop"), ds.skipped_links[0][1])]
    assert ds.skipped_links[0][1].startswith("loop: ")
    assert any(str(two_people / "alice" / "loop") in str(w.message) for w in record)


def test_symlink_loops_to_self_and_ancestors(two_people):
    (two_people / "alice" / "self").symlink_to(".", target_is_directory=True)
    (two_people / "bob" / "sub").mkdir()
    _tiny(two_people / "bob" / "sub" / "b2.png", 22)
    (two_people / "bob" / "sub" / "up").symlink_to("..", target_is_directory=True)
    (two_people / "bob" / "sub" / "top").symlink_to("../..", target_is_directory=True)
    with pytest.warns(Warning):
        ds = ImageFolderFaces(two_people)
    assert _by_identity(ds) == {"alice": [10], "bob": [20, 21, 22]}
    assert sorted(Path(p).name for p, _ in ds.skipped_links) == ["self", "top", "up"]
    assert all(reason.startswith("loop: ") for _, reason in ds.skipped_links)


def test_symlinks_out_of_root_are_skipped_and_listed(two_people, tmp_path):
    outside = tmp_path / "elsewhere"
    _tiny(outside / "x.png", 99)
    _tiny(outside / "mallory" / "m0.png", 98)
    (two_people / "alice" / "ext_dir").symlink_to(outside, target_is_directory=True)
    (two_people / "alice" / "ext.png").symlink_to(outside / "x.png")
    (two_people / "mallory").symlink_to(outside / "mallory", target_is_directory=True)  # an identity
    with pytest.warns(Warning) as record:
        ds = ImageFolderFaces(two_people)
    assert ds.classes == ["alice", "bob"]
    assert _by_identity(ds) == {"alice": [10], "bob": [20, 21]}
    expected = {str(two_people / "alice" / "ext_dir"), str(two_people / "alice" / "ext.png"),
                str(two_people / "mallory")}
    assert {p for p, _ in ds.skipped_links} == expected
    assert all(reason.startswith("points outside root") for _, reason in ds.skipped_links)
    message = "\n".join(str(w.message) for w in record)
    assert all(p in message for p in expected)


def test_symlinks_inside_root_are_used_once(two_people):
    root = two_people
    _tiny(root / ".store" / "s.png", 11)          # hidden folder: not an identity itself
    _tiny(root / ".store" / "more" / "m.png", 12)
    (root / "alice" / "s.png").symlink_to("../.store/s.png")             # used, as alice's
    (root / "alice" / "more").symlink_to("../.store/more", target_is_directory=True)  # used
    (root / "alice" / "again.png").symlink_to("a0.png")                  # same file: once
    (root / "alice" / "more_again").symlink_to("../.store/more", target_is_directory=True)  # same folder
    (root / "bob" / "stolen.png").symlink_to("../alice/a0.png")         # alice's image
    (root / "bob" / "alice_dir").symlink_to("../alice", target_is_directory=True)
    (root / "al").symlink_to("alice", target_is_directory=True)          # alias identity
    _tiny(root / "alice" / ".old" / "o.png", 13)  # hidden: not walked, yet alice's
    (root / "bob" / "o.png").symlink_to("../alice/.old/o.png")
    (root / "bob" / "old").symlink_to("../alice/.old", target_is_directory=True)
    _tiny(root / ".carol_real" / "c0.png", 30)
    (root / "carol").symlink_to(".carol_real", target_is_directory=True)  # identity inside root
    with pytest.warns(Warning):
        ds = ImageFolderFaces(root)
    assert ds.classes == ["alice", "bob", "carol"]
    assert _by_identity(ds) == {"alice": [10, 11, 12], "bob": [20, 21], "carol": [30]}
    resolved = [os.path.realpath(p) for p, _ in ds.samples]
    assert len(set(resolved)) == len(resolved) == 6
    skipped = {Path(p).relative_to(root).as_posix(): reason for p, reason in ds.skipped_links}
    assert skipped.keys() == {"alice/again.png", "alice/more_again", "bob/stolen.png", "bob/alice_dir", "al",
                              "bob/o.png", "bob/old"}
    assert skipped["alice/again.png"] == f"same file as {str(root / 'alice' / 'a0.png')!r}"
    more = os.path.realpath(root / ".store" / "more")
    assert skipped["alice/more_again"] == f"points to {more!r}, a folder already in the dataset"
    assert skipped["al"] == skipped["bob/alice_dir"] == "points to the folder of identity 'alice'"
    into = "points into the folder of identity 'alice'"
    assert skipped["bob/stolen.png"] == skipped["bob/o.png"] == skipped["bob/old"] == into


def test_broken_symlink_is_listed(two_people):
    (two_people / "alice" / "gone.png").symlink_to("nowhere.png")
    with pytest.warns(Warning):
        ds = ImageFolderFaces(two_people)
    assert len(ds) == 3
    assert [Path(p).name for p, _ in ds.skipped_links] == ["gone.png"]
    assert ds.skipped_links[0][1].startswith("broken link")


# --- messy folders: huge images ----------------------------------------------------------------

def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR claims width x height (8-bit grey) but whose pixel data is a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.fixture()
def no_decoding(monkeypatch):
    """Fail the test if a large image is decoded (ImageFile.load), instead of allocating it."""
    load = ImageFile.ImageFile.load

    def guarded(self):
        if self.size[0] * self.size[1] > 10_000:
            raise AssertionError(f"decoded a {self.size} image")
        return load(self)
    monkeypatch.setattr(ImageFile.ImageFile, "load", guarded)


def test_huge_header_rejected_before_decoding(two_people, monkeypatch, no_decoding):
    bomb = two_people / "bob" / "bomb.png"
    _png_header_only(bomb, 30000, 30000)
    # A user who silenced PIL's own guard must still be protected by the module's limit.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(CorruptImageError) as info:
        ImageFolderFaces(two_people, on_error="raise")
    message = str(info.value)
    for part in ["bomb.png", "30000x30000", "900,000,000", f"{imagefolder.MAX_IMAGE_PIXELS:,}",
                 "MAX_IMAGE_PIXELS"]:
        assert part in message
    with pytest.raises(CorruptImageError, match="30000x30000"):
        load_image(bomb)
    ds = ImageFolderFaces(two_people, verify=False, on_error="raise")
    with pytest.raises(CorruptImageError, match="30000x30000"):
        ds[[Path(p).name for p, _ in ds.samples].index("bomb.png")]


def test_huge_header_skipped_with_pil_guard_on(two_people, no_decoding):
    # With PIL's default guard the file fails at open; it is still skipped and named.
    _png_header_only(two_people / "bob" / "bomb.png", 30000, 30000)
    with pytest.warns(SkippedImageWarning, match="bomb.png"):
        ds = ImageFolderFaces(two_people, verify=True)
    assert [Path(p).name for p, _ in ds.skipped] == ["bomb.png"]
    assert len(ds) == 3


def test_pixel_limit_boundary(tmp_path, monkeypatch):
    monkeypatch.setattr(imagefolder, "MAX_IMAGE_PIXELS", 100)
    _write(tmp_path / "a" / "ok.png", np.zeros((10, 10, 3), np.uint8))     # 100 pixels: at the limit
    _write(tmp_path / "a" / "big.png", np.zeros((11, 10, 3), np.uint8))    # 110 pixels: over
    _write(tmp_path / "b" / "ok.png", np.zeros((5, 20, 3), np.uint8))      # 100 pixels
    # image_size=10: files of two shapes are refused unless resized (a batch must stack)
    with pytest.warns(SkippedImageWarning, match=r"big\.png.*10x11.*110.*100"):
        ds = ImageFolderFaces(tmp_path, image_size=10)
    assert sorted(Path(p).relative_to(tmp_path).as_posix() for p, _ in ds.samples) == ["a/ok.png", "b/ok.png"]
    assert [Path(p).name for p, _ in ds.skipped] == ["big.png"]
    lazy = ImageFolderFaces(tmp_path, verify=False, image_size=10)
    names = [Path(p).name for p, _ in lazy.samples]
    assert names[:2] == ["big.png", "ok.png"]
    with pytest.warns(SkippedImageWarning, match=r"big\.png"):
        image, label, _ = lazy[0]
    assert image.shape == (3, 10, 10) and label == 0  # the next readable item: a/ok.png


def test_image_size_capped_by_pixel_limit(two_people, monkeypatch):
    monkeypatch.setattr(imagefolder, "MAX_IMAGE_PIXELS", 100)
    assert ImageFolderFaces(two_people, image_size=10).image_size == 10
    with pytest.raises(ArgumentError, match=r"^image_size .*<= 10\b.*got 11"):
        ImageFolderFaces(two_people, image_size=11)


# --- messy folders: Unicode names ---------------------------------------------------------------

def test_identities_differing_only_by_normalisation_raise(two_people):
    nfc, nfd = "Jos\u00e9", "Jose\u0301"
    assert nfc != nfd and unicodedata.normalize("NFC", nfd) == nfc
    _tiny(two_people / nfc / "j0.png", 40)
    _tiny(two_people / nfd / "j1.png", 41)
    with pytest.raises(ValueError) as info:
        ImageFolderFaces(two_people)
    message = str(info.value)
    assert ascii(nfc) in message and ascii(nfd) in message
    assert "rename" in message


def test_file_names_differing_only_by_normalisation_warn(two_people):
    nfc, nfd = "Jos\u00e9.png", "Jose\u0301.png"
    _tiny(two_people / "alice" / nfc, 11)
    _tiny(two_people / "alice" / "sub" / nfd, 12)   # another folder: a different relative name
    _tiny(two_people / "alice" / nfd, 13)
    with pytest.warns(LayoutWarning, match="normalisation") as record:
        ds = ImageFolderFaces(two_people)
    assert _by_identity(ds)["alice"] == [10, 11, 12, 13]   # both kept: they are different files
    assert len(ds.name_clashes) == 1
    assert set(ds.name_clashes[0]) == {str(two_people / "alice" / nfc), str(two_people / "alice" / nfd)}
    message = "\n".join(str(w.message) for w in record)
    assert ascii(nfc)[1:-1] in message and ascii(nfd)[1:-1] in message  # visible as escapes


# --- argument checks ----------------------------------------------------------------------------

@pytest.mark.parametrize("size", [10.7, "big", 1e9])
def test_bad_image_size_named(faces, size):
    with pytest.raises(ArgumentError, match=r"^image_size must be a whole number") as info:
        ImageFolderFaces(faces["root"], image_size=size)
    assert info.value.name == "image_size" and "None" in str(info.value)


def test_whole_float_image_size_accepted(two_people):
    ds = ImageFolderFaces(two_people, image_size=8.0)
    assert ds.image_size == 8 and type(ds.image_size) is int
    assert ds[0][0].shape == (3, 8, 8)


@pytest.mark.parametrize("name, value", [("verify", "yes"), ("verify", 1), ("progress", None)])
def test_bad_flags(two_people, name, value):
    with pytest.raises(ArgumentError, match=rf"^{name} must be True or False"):
        ImageFolderFaces(two_people, **{name: value})


def test_bad_root_type(tmp_path):
    with pytest.raises(ArgumentError, match=r"^root must be a folder path"):
        ImageFolderFaces(5)
    with pytest.raises(ArgumentError, match=r"^root .*does not exist"):
        ImageFolderFaces(tmp_path / "missing")


@pytest.mark.parametrize("index", [1.0, 0.5, True, np.float64(0), "0", torch.tensor(True), None])
def test_bad_index_type(two_people, index):
    ds = ImageFolderFaces(two_people)
    with pytest.raises(ArgumentError, match=r"^index must be a whole number"):
        ds[index]


def test_index_kinds_and_range(two_people):
    ds = ImageFolderFaces(two_people)
    values = [_value(ds[i][0]) for i in range(3)]
    assert values == [10, 20, 21]
    assert _value(ds[np.int64(1)][0]) == 20 and _value(ds[torch.tensor(2)][0]) == 21
    assert _value(ds[-3][0]) == 10
    for bad in (3, -4):
        with pytest.raises(IndexError, match=rf"index={bad} .*-3 <= index < 3"):
            ds[bad]
    assert [_value(x) for x, _, _ in ds] == values  # iteration stops at IndexError


def _png_grey16(path: Path, values: np.ndarray) -> None:
    """A 16-bit greyscale PNG written by hand (big-endian samples, filter 0 per row), not by PIL."""
    h, w = values.shape
    raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_a_16_bit_grey_png_is_scaled_to_0_1_not_clipped(tmp_path):
    values = (np.arange(256, dtype=np.int64) * 257).reshape(16, 16)  # 0 .. 65535, a gradient
    _png_grey16(tmp_path / "g16.png", values)
    image = load_image(tmp_path / "g16.png")
    assert image.shape == (3, 16, 16)
    want = torch.tensor(values / 65535.0, dtype=torch.float32)  # the formula: a sample over the largest one
    for channel in image:
        assert torch.allclose(channel, want, atol=0.5 / 255 + 1e-6)
    assert len(torch.unique(image[0])) == 256  # a gradient, not black and white
