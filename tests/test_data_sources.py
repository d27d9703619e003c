"""Fetching, verifying and caching data sets from tiny files the tests write: the catalog, the
cache folder and IDX files; here too the helpers that write such files, which
tests/test_data_archives.py and tests/test_data_registries.py share."""

import gzip
import hashlib
import io
import os
import struct
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trustvision.data import cache as cache_module
from trustvision.data import cache_write, sources
from trustvision.data.cache import CacheWriteError
from trustvision.data.catalog import CATALOG, get_spec
from trustvision.data.dataset import dataset_summary, load_dataset
from trustvision.errors import ChecksumError, DataError
from trustvision.runs import LOCK_FILE


def empty_cache(tmp_path: Path, monkeypatch) -> Path:
    """An empty cache folder, named by TRUSTVISION_DATA: the `cache` fixture of this module
    and of every tests/test_data_*.py module that fetches."""
    root = tmp_path / "cache"
    monkeypatch.setenv("TRUSTVISION_DATA", str(root))
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder, named by TRUSTVISION_DATA."""
    return empty_cache(tmp_path, monkeypatch)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def tiny_idx_set(n_train=12, n_test=5, seed=0) -> dict[str, bytes]:
    """The four decompressed IDX files of a tiny MNIST-shaped set."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    return {name: idx_bytes(array) for name, array in arrays.items()}


def write_idx_folder(
    folder: Path, files: dict[str, bytes], *, gzipped=("train-images-idx3-ubyte",)
):
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if name in gzipped:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return folder


def pin_idx(monkeypatch, name, files, *, urls=None, registry="keep"):
    """Point the catalog entry `name` at the tiny files' hashes (and optionally URLs/registry)."""
    spec = CATALOG[name]
    pinned = tuple(
        replace(
            f, sha256=sha(files[f.name]), urls=f.urls if urls is None else (f"{urls}{f.name}.gz",)
        )
        for f in spec.files
    )
    new = replace(spec, files=pinned, registry=spec.registry if registry == "keep" else registry)
    monkeypatch.setitem(CATALOG, name, new)
    return new


def write_image_zip(path, images: dict[str, np.ndarray], *, fmt="PNG"):
    with zipfile.ZipFile(path, "w") as archive:
        for name, pixels in images.items():
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format=fmt)
            archive.writestr(name, buffer.getvalue())
    return path


def files_under(root: Path) -> list[Path]:
    """Every file under `root` but the lock writers take turns on, which stays."""
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and p != root / LOCK_FILE)


# --- catalog and cache folder --------------------------------------------------------------


def test_default_cache_dir_reads_the_environment_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setenv("TRUSTVISION_DATA", str(tmp_path / "a"))
    assert cache_module.default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("TRUSTVISION_DATA")
    assert cache_module.default_cache_dir() == Path.home() / ".cache" / "trustvision"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(DataError, match=r"unknown data set `imagenet`") as err:
        get_spec("imagenet")
    for known in ("mnist", "fashion-mnist", "cifar10", "cifar100", "image-folder"):
        assert f"`{known}`" in str(err.value)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "cifar100"])
def test_catalog_entries_are_complete(name):
    spec = get_spec(name)
    assert len(spec.classes) == len(set(spec.classes)) == (100 if name == "cifar100" else 10)
    assert spec.shape is not None and len(spec.mean) == len(spec.std) == spec.shape[0]
    for file in (*spec.files, *(v.file for v in spec.variants)):
        assert len(file.sha256) == 64 and int(file.sha256, 16) >= 0
    assert all(file.urls for file in spec.files)


def test_image_size_is_refused_for_catalog_sets(cache):
    with pytest.raises(DataError, match=r"`image_size=64` applies to `image-folder` only"):
        sources.fetch("mnist", image_size=64)


# --- local IDX files -------------------------------------------------------------------------


def test_mnist_from_a_folder_of_idx_files_round_trips_through_the_cache(
    cache, tmp_path, monkeypatch
):
    files = tiny_idx_set()
    folder = write_idx_folder(tmp_path / "raw", files)
    pin_idx(monkeypatch, "mnist", files)
    ds = load_dataset("mnist", from_path=folder)
    assert isinstance(ds.train.images, np.memmap) and isinstance(ds.test.labels, np.memmap)
    assert ds.train.images.shape == (12, 1, 28, 28) and ds.train.images.dtype == np.uint8
    assert ds.train.labels.dtype == np.int64 and ds.image_shape == (1, 28, 28)
    expected = np.frombuffer(files["t10k-images-idx3-ubyte"], np.uint8, offset=16).reshape(
        5, 1, 28, 28
    )
    np.testing.assert_array_equal(ds.test.images, expected)
    assert ds.source == f"file:{folder}" and ds.mean == (0.1307,) and ds.num_classes == 10
    names = [p.name for p in files_under(cache)]
    assert sorted(names) == sorted(["meta.json"] + [f"{a}.npy" for a in cache_module.ARRAY_NAMES])
    started = time.perf_counter()
    again = load_dataset("mnist", from_path=tmp_path / "gone")  # the cache comes first
    assert time.perf_counter() - started < 1.0 and isinstance(again.train.images, np.memmap)
    assert len(sources.verify_cache("mnist")) == 4
    summary = dataset_summary(again)
    assert (
        summary["splits"]["train"]["count"] == 12
        and sum(summary["splits"]["test"]["per_class"]) == 5
    )


def test_two_processes_fetching_one_data_set_at_once_decode_it_once(cache, tmp_path, monkeypatch):
    """The second waits for the first's copy instead of writing over it half-way."""
    files = tiny_idx_set()
    folder = write_idx_folder(tmp_path / "raw", files)
    pin_idx(monkeypatch, "mnist", files)
    decoded, read_local = [], sources.read_local

    def slow_read_local(*args, **kwargs):
        decoded.append(1)
        time.sleep(0.5)  # long enough for the other fetch to arrive while this one decodes
        return read_local(*args, **kwargs)

    monkeypatch.setattr(sources, "read_local", slow_read_local)
    with ThreadPoolExecutor(2) as pool:  # flock locks open files, not processes: threads do
        targets = list(pool.map(lambda _: sources.fetch("mnist", from_path=folder), range(2)))
    assert targets == [cache / "mnist"] * 2 and len(decoded) == 1
    assert len(sources.verify_cache("mnist")) == 4


def test_one_corrupted_byte_gives_a_checksum_error_and_no_partial_files(
    cache, tmp_path, monkeypatch
):
    files = tiny_idx_set()
    spec = pin_idx(monkeypatch, "mnist", files)
    folder = write_idx_folder(tmp_path / "raw", files, gzipped=())
    path = folder / "train-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as err:
        load_dataset("mnist", from_path=folder)
    message = str(err.value)
    assert (
        f"`{path}`" in message and spec.files[1].sha256 in message and sha(bytes(data)) in message
    )
    assert "fetch it again" in message
    assert files_under(cache) == []


def test_truncated_gzip_gives_a_checksum_error(cache, tmp_path, monkeypatch):
    files = tiny_idx_set()
    pin_idx(monkeypatch, "mnist", files)
    folder = write_idx_folder(tmp_path / "raw", files)
    path = folder / "train-images-idx3-ubyte.gz"
    truncated = path.read_bytes()[:-40]
    path.write_bytes(truncated)
    with pytest.raises(
        ChecksumError, match=r"train-images-idx3-ubyte.gz`.*not a readable gzip"
    ) as err:
        sources.fetch("mnist", from_path=folder)
    assert sha(truncated) in str(err.value) and files_under(cache) == []


def test_a_from_path_that_does_not_exist_is_named(cache, tmp_path):
    with pytest.raises(DataError, match=r"`.*nowhere` does not exist"):
        sources.fetch("mnist", from_path=tmp_path / "nowhere")


def test_missing_idx_file_names_it(cache, tmp_path, monkeypatch):
    files = tiny_idx_set()
    pin_idx(monkeypatch, "mnist", files)
    folder = write_idx_folder(tmp_path / "raw", files)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(
        DataError, match=r"no `t10k-labels-idx1-ubyte` or `t10k-labels-idx1-ubyte.gz`"
    ):
        sources.fetch("mnist", from_path=folder)


def test_an_incomplete_cache_folder_is_fetched_again(cache, tmp_path, monkeypatch):
    files = tiny_idx_set()
    pin_idx(monkeypatch, "mnist", files)
    folder = write_idx_folder(tmp_path / "raw", files)
    (cache / "mnist").mkdir(parents=True)
    (cache / "mnist" / "train_images.npy").write_bytes(b"half written")  # no meta.json
    stale = cache / "mnist" / ".train_labels.npy.123-abc.tmp"
    stale.write_bytes(b"leftover from a killed writer")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    live = cache / "mnist" / ".test_labels.npy.456-def.tmp"
    live.write_bytes(b"another process, still writing")
    ds = load_dataset("mnist", from_path=folder)
    assert ds.train.images.shape == (12, 1, 28, 28)
    assert not stale.exists() and live.exists()


def test_a_failed_write_leaves_nothing_behind(cache, tmp_path, monkeypatch):
    files = tiny_idx_set()
    pin_idx(monkeypatch, "mnist", files)
    folder = write_idx_folder(tmp_path / "raw", files)

    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_write, "write_atomic", disk_full)
    with pytest.raises(CacheWriteError, match=r"No space"):
        sources.fetch("mnist", from_path=folder)
    assert files_under(cache) == []
