"""Hostile and damaged inputs to the data layer: each is one DataError naming the file, never a
traceback from deeper down and never a silently wrong data set."""

import io
import json
import os
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from trustvision.data import cache as cache_module
from trustvision.data import cache_write, images, readers, sources
from trustvision.data.cache import META_NAME, CacheWriteError, Fetched
from trustvision.data.cache_write import write_cache
from trustvision.data.catalog import get_spec
from trustvision.data.dataset import load_dataset
from trustvision.data.readers import Decoded
from trustvision.errors import ChecksumError, DataError, EnvironmentFailure
from trustvision.runs import LOCK_FILE


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder, named by TRUSTVISION_DATA."""
    root = tmp_path / "cache"
    monkeypatch.setenv("TRUSTVISION_DATA", str(root))
    return root


def tiny_decoded(*, classes: tuple[str, ...], shape=(1, 28, 28), n_train=12, n_test=5, seed=0):
    rng = np.random.default_rng(seed)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        pixels = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        return pixels, np.arange(n, dtype=np.int64) % len(classes)  # every class present

    return Decoded(classes, split(n_train), split(n_test))


def write_tiny_cache(root: Path, name="mnist", key=None) -> Path:
    """A complete cache folder of a tiny `name`, written as `fetch` writes it."""
    spec = get_spec(name)
    classes = spec.classes or ("cat", "dog", "eel")
    shape = spec.shape or (3, 4, 4)
    target = root / (key or name)
    fetched = Fetched(tiny_decoded(classes=classes, shape=shape), "test:tiny", "original", {})
    write_cache(target, fetched, spec=spec, image_size=None)
    return target


def edit_meta(folder: Path, edit) -> Path:
    path = folder / META_NAME
    meta = json.loads(path.read_text())
    path.write_text(json.dumps(edit(meta)))
    return path


def files_under(root: Path) -> list[Path]:
    """Every file and folder under `root` but the lock cache writers take turns on."""
    return sorted(p for p in root.rglob("*") if p != root / LOCK_FILE) if root.exists() else []


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


# --- meta.json ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda meta: {k: v for k, v in meta.items() if k != "files"}, "has no `files`"),
        (lambda meta: [meta], "holds an array instead of an object"),
        (lambda meta: {**meta, "files": []}, "has `files` as an array, not an object"),
        (lambda meta: {**meta, "files": {"train_images.npy": {}}}, "has no complete `files` entry"),
        (lambda meta: {**meta, "classes": None}, "has `classes` as null, not an array"),
        (
            lambda meta: {**meta, "mean": ["x"]},
            "has a `mean` or `std` that is not a list of numbers",
        ),
    ],
)
def test_a_damaged_meta_json_is_one_data_error_naming_it(cache, damage, said):
    folder = write_tiny_cache(cache)
    path = edit_meta(folder, damage)
    for action in (lambda: load_dataset("mnist"), lambda: sources.verify_cache("mnist")):
        with pytest.raises(DataError) as err:
            action()
        message = one_line(err)
        assert f"`{path}` {said}" in message
        assert f"delete `{folder}`" in message and "`trustvision data fetch mnist`" in message


def test_a_truncated_meta_json_is_one_data_error_naming_it(cache):
    folder = write_tiny_cache(cache)
    path = folder / META_NAME
    path.write_text(path.read_text()[:200])
    with pytest.raises(DataError) as err:
        load_dataset("mnist")
    message = one_line(err)
    assert (
        f"`{path}` is truncated or not JSON (" in message
        and "`trustvision data fetch mnist`" in message
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    key=st.sampled_from(["name", "source", "classes", "mean", "std", "files", "variant"]),
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=6,
    ),
)
def test_any_value_in_any_meta_field_loads_or_raises_a_data_error(tmp_path, key, value):
    folder = tmp_path / "mnist"
    if not folder.exists():
        write_tiny_cache(tmp_path)
    original = (folder / META_NAME).read_text()
    try:
        edit_meta(folder, lambda meta: {**meta, key: value})
        try:
            cache_module.open_arrays(folder, cache_module.read_meta(folder))
        except DataError as err:
            assert "\n" not in str(err) and str(folder) in str(err)
    finally:
        (folder / META_NAME).write_text(original)


# --- cached arrays -----------------------------------------------------------------------------


@pytest.mark.parametrize("file", cache_module.ARRAY_NAMES)
def test_one_flipped_byte_in_a_cached_array_stops_loading(cache, file):
    folder = write_tiny_cache(cache)
    path = folder / f"{file}.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x40  # a pixel, or the last label's top byte (a label of 2**62 + label)
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as err:
        load_dataset("mnist")
    message = one_line(err)
    assert f"`{path}` has changed since it was written" in message
    assert "`trustvision data fetch mnist`" in message


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(file=st.sampled_from(cache_module.ARRAY_NAMES), where=st.floats(0, 1), bit=st.integers(0, 7))
def test_any_flipped_bit_in_any_cached_array_stops_loading(tmp_path, file, where, bit):
    folder = tmp_path / "mnist"
    if not folder.exists():
        write_tiny_cache(tmp_path)
    path = folder / f"{file}.npy"
    original = path.read_bytes()
    data = bytearray(original)
    data[min(int(where * len(data)), len(data) - 1)] ^= 1 << bit
    path.write_bytes(bytes(data))
    try:
        with pytest.raises(ChecksumError, match=f"`{path}`"):
            cache_module.open_arrays(folder, cache_module.read_meta(folder))
    finally:
        path.write_bytes(original)


def test_classes_cut_short_in_meta_json_are_refused_against_the_catalog(cache):
    folder = write_tiny_cache(cache)
    path = edit_meta(folder, lambda meta: {**meta, "classes": meta["classes"][:5]})
    with pytest.raises(DataError) as err:
        load_dataset("mnist")
    assert f"`{path}` lists 5 classes, but `mnist` has 10" in one_line(err)


def test_classes_cut_short_for_an_image_folder_are_refused_by_the_labels(cache):
    folder = write_tiny_cache(cache, name="image-folder", key="image-folder-0123456789ab")
    edit_meta(folder, lambda meta: {**meta, "classes": meta["classes"][:2]})
    with pytest.raises(DataError) as err:
        load_dataset(folder.name)
    message = one_line(err)
    assert f"`{folder / 'train_labels.npy'}` holds labels 0..2, but meta.json lists 2" in message
    assert "`trustvision data fetch image-folder --from PATH`" in message


def test_a_mean_of_the_wrong_length_is_refused(cache):
    folder = write_tiny_cache(cache)
    path = edit_meta(folder, lambda meta: {**meta, "mean": [0.1, 0.2, 0.3]})
    with pytest.raises(DataError, match=r"wrong length for 1 channel") as err:
        load_dataset("mnist")
    assert f"`{path}`" in one_line(err)


# --- image folders and archives ----------------------------------------------------------------


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` grey pixels: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + chunk(b"IEND", b"")
    )


def small_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_decompression_bomb_png_names_the_file(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("train/a/fine.png", small_png())
        archive.writestr("test/a/bomb.png", png_header(20_000, 20_000))  # 400 Mpx, 2.2x the limit
    with pytest.raises(DataError) as err:
        images.read_image_folder(path)
    message = one_line(err)
    assert f"`{path}:test/a/bomb.png` is refused as a likely decompression bomb" in message
    assert "400000000 pixels" in message


def test_a_decompression_bomb_in_a_folder_is_refused_before_anything_is_cached(cache, tmp_path):
    for split, blob in (("train", small_png()), ("test", png_header(20_000, 20_000))):
        (tmp_path / "set" / split / "a").mkdir(parents=True)
        (tmp_path / "set" / split / "a" / "x.png").write_bytes(blob)
    with pytest.raises(DataError, match=r"test/a/x.png` is refused as a likely decompression"):
        sources.fetch("image-folder", from_path=tmp_path / "set")
    assert [p for p in files_under(cache) if p.is_file()] == []


@pytest.mark.parametrize(
    "member", ["../evil.sh", "train/../../evil.png", "/etc/evil.png", "train/a/../b/0.png"]
)
def test_a_zip_member_outside_the_archive_is_refused_by_name(tmp_path, member):
    path = tmp_path / "set.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name in ("train/a/0.png", "test/a/0.png", member):
            archive.writestr(name, small_png())
    with pytest.raises(DataError) as err:
        images.read_image_folder(path)
    message = one_line(err)
    assert f"`{path}` holds `{member}`, a path outside the archive" in message


def test_a_tar_member_outside_the_archive_is_refused_even_when_nothing_is_missing(tmp_path):
    path = tmp_path / "a.tar"
    with tarfile.open(path, "w") as archive:
        for name in ("pkg/a", "../../home/x/.bashrc"):
            info = tarfile.TarInfo(name)
            info.size = 1
            archive.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DataError) as err:
        readers.read_tar_members(path, {"pkg/a"})
    assert f"`{path}` holds `../../home/x/.bashrc`, a path outside the archive" in one_line(err)


# --- an unwritable cache -----------------------------------------------------------------------


def test_a_cache_under_a_file_is_refused_before_any_work(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("TRUSTVISION_DATA", str(tmp_path / "file" / "cache"))
    with pytest.raises(CacheWriteError) as err:
        sources.fetch("mnist", from_path=tmp_path / "raw-that-is-never-read")
    message = one_line(err)
    assert f"cannot write the cache at `{tmp_path / 'file' / 'cache' / 'mnist'}`" in message
    assert f"`{tmp_path / 'file'}` is not a folder" in message and "TRUSTVISION_DATA" in message
    assert isinstance(err.value, EnvironmentFailure)  # exit code 3: the machine refused


def test_a_cache_where_no_one_may_write_is_a_clear_error(tmp_path):
    # /proc refuses new folders even to root (CI runs as root, where chmod 555 would not stop it)
    if os.geteuid() == 0:
        root, reason = Path("/proc/trustvision-cache"), "No such file or directory"
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        root, reason = tmp_path / "ro" / "cache", f"`{tmp_path / 'ro'}` is not writable"
    with pytest.raises(CacheWriteError) as err:
        write_tiny_cache(root)
    message = one_line(err)
    assert f"cannot write the cache at `{root / 'mnist'}`" in message and reason in message
    assert "TRUSTVISION_DATA" in message and not root.exists()


def test_a_failed_write_names_the_folder_and_leaves_no_file_or_folder(tmp_path, monkeypatch):
    root = tmp_path / "new" / "deeper"  # neither exists: both are created, then removed

    def refused(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cache_write, "write_atomic", refused)
    with pytest.raises(CacheWriteError) as err:
        write_tiny_cache(root)
    message = one_line(err)
    assert f"cannot write the cache at `{root / 'mnist'}` (Permission denied)" in message
    assert not (tmp_path / "new").exists()


def test_a_write_failing_mid_array_leaves_no_temporary_file(tmp_path, monkeypatch):
    (tmp_path / "cache").mkdir()
    calls = []

    def fail_on_third(path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return "0" * 64

    monkeypatch.setattr(cache_module.digests, "sha256_file", fail_on_third)
    with pytest.raises(CacheWriteError, match=r"No space left on device\): free some space"):
        write_tiny_cache(tmp_path / "cache")
    assert files_under(tmp_path / "cache") == []  # the temporary and the two arrays before it


def test_sixteen_bit_grey_is_scaled_and_float_pixels_are_refused():
    """Pillow's convert("L") clips 16-bit grey above 255 to white: it is scaled instead."""
    wide = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    png = io.BytesIO()
    Image.fromarray(wide).save(png, format="PNG")
    png.seek(0)
    assert images.decode_image(png, name="wide.png", image_size=None).tolist() == [
        [0, 255],
        [128, 4],
    ]
    tiff = io.BytesIO()
    Image.fromarray(np.zeros((2, 2), np.float32)).save(tiff, format="TIFF")
    tiff.seek(0)
    with pytest.raises(DataError, match="floating-point pixels"):
        images.decode_image(tiff, name="float.tif", image_size=None)


def test_a_zip_member_with_a_bad_crc_is_a_data_error_naming_it(tmp_path):
    png = io.BytesIO()
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(png, format="PNG")
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("train/a/0.png", png.getvalue())
    data = bytearray(path.read_bytes())
    data[data.index(b"IDAT") + 8] ^= 0xFF  # inside the stored member: its CRC no longer holds
    path.write_bytes(bytes(data))
    said = r"`bad\.zip:train/a/0\.png` is not a readable image"
    with (
        zipfile.ZipFile(path) as archive,
        archive.open("train/a/0.png") as handle,
        pytest.raises(DataError, match=said),
    ):
        images.decode_image(handle, name="bad.zip:train/a/0.png", image_size=None)


def test_an_array_replaced_between_its_hash_and_its_mapping_is_refused(tmp_path, monkeypatch):
    """A writer renaming a new file into place after the hash was taken must not hand the
    reader bytes nobody checked."""
    write_tiny_cache(tmp_path)
    folder = tmp_path / "mnist"
    checked = cache_module._verify_array

    def then_replaced(path, info):
        line = checked(path, info)
        copy = path.with_name(f".{path.name}.new")
        copy.write_bytes(path.read_bytes())
        os.replace(copy, path)  # the same bytes, another file: what a writer's rename does
        return line

    monkeypatch.setattr(cache_module, "_verify_array", then_replaced)
    with pytest.raises(DataError, match="was replaced while being read"):
        cache_module.open_arrays(folder, cache_module.read_meta(folder))
