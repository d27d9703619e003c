"""Data sets from archives and image folders: CIFAR-100's pickles, CIFAR-10's archive or JPEG
copy, any image-folder zip; and checking a cached copy against its recorded hashes."""

import io
import json
import os
import pickle
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_data_sources import empty_cache, files_under, sha, write_image_zip

from trustvision import digests
from trustvision.data import sources
from trustvision.data.catalog import CATALOG
from trustvision.data.dataset import load_dataset
from trustvision.data.readers import channel_stats
from trustvision.errors import ChecksumError, DataError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder, named by TRUSTVISION_DATA."""
    return empty_cache(tmp_path, monkeypatch)


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


def pinned_cifar10_zip(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 20 + 20 image CIFAR-10 JPEG zip of random pixels, pinned as the catalog's JPEG
    variant."""
    rng = np.random.default_rng(4)
    images = {
        f"{split}/{cls}/{i:04d}.jpg": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        for split in ("train", "test")
        for cls in CATALOG["cifar10"].classes
        for i in range(2)
    }
    write_image_zip(path, images, fmt="JPEG")
    spec = CATALOG["cifar10"]
    variant = replace(
        spec.variants[0], file=replace(spec.variants[0].file, sha256=sha(path.read_bytes()))
    )
    monkeypatch.setitem(CATALOG, "cifar10", replace(spec, variants=(variant,)))


def test_an_archive_replaced_once_hashed_is_not_what_is_decoded(cache, tmp_path, monkeypatch):
    path = tmp_path / "cifar10-jpeg.zip"
    pinned_cifar10_zip(path, monkeypatch)
    hashed = digests.sha256_file

    def hash_then_swap(file: Path) -> str:
        digest = hashed(file)
        write_image_zip(path, {"train/airplane/0.jpg": np.zeros((32, 32, 3), np.uint8)})
        return digest

    monkeypatch.setattr(digests, "sha256_file", hash_then_swap)
    ds = load_dataset("cifar10", from_path=path)
    assert ds.train.images.shape == (20, 3, 32, 32) and np.asarray(ds.train.images).std() > 50


def test_cifar10_from_an_image_folder_zip_records_the_variant(cache, tmp_path, monkeypatch):
    path = tmp_path / "cifar10-jpeg.zip"
    pinned_cifar10_zip(path, monkeypatch)
    spec = CATALOG["cifar10"]
    ds = load_dataset("cifar10", from_path=path)
    assert ds.variant == "jpeg" and ds.source == f"file:{path}"
    assert (
        ds.train.images.shape == (20, 3, 32, 32) and list(np.bincount(ds.test.labels)) == [2] * 10
    )
    meta = json.loads((cache / "cifar10" / "meta.json").read_text())
    assert meta["variant"] == "jpeg" and "JPEG" in meta["note"]
    # asked for the original archive now, the cache must not serve the JPEG copy silently
    original = tmp_path / spec.files[0].name
    original.write_bytes(b"not read: the cached variant is refused by the archive's name")
    with pytest.raises(DataError, match=r"from its jpeg archive, not from .*\(original\)"):
        sources.fetch("cifar10", from_path=original)
    assert sources.fetch("cifar10", from_path=path) == cache / "cifar10"  # the same: served


def test_an_image_folders_test_split_is_shuffled_so_its_first_images_span_the_classes(
    cache, tmp_path
):
    images = {
        f"{split}/{cls}/{i:02d}.png": np.full((4, 4), 10 * c + i % 10, np.uint8)
        for split, n in (("train", 3), ("test", 20))
        for c, cls in enumerate(("ant", "bee", "cat", "dog", "eel"))
        for i in range(n)
    }
    ds = load_dataset("image-folder", from_path=write_image_zip(tmp_path / "five.zip", images))
    first = np.asarray(ds.test.labels[:20])
    assert len(set(first.tolist())) >= 4  # in file order they would all be `ant`
    assert sorted(np.asarray(ds.test.labels).tolist()) == sorted([0, 1, 2, 3, 4] * 20)
    # each image keeps its label: pixel 10 c + i belongs to class c
    assert (np.asarray(ds.test.images)[:, 0, 0, 0] // 10 == np.asarray(ds.test.labels)).all()
    assert np.asarray(ds.train.labels).tolist() == sorted([0, 1, 2, 3, 4] * 3)  # file order


def test_a_cache_written_by_an_older_format_is_decoded_again(cache, tmp_path):
    images = {
        f"{s}/{c}/{i}.png": np.full((4, 4), i, np.uint8)
        for s in ("train", "test")
        for c in ("a", "b")
        for i in range(6)
    }
    path = write_image_zip(tmp_path / "two.zip", images)
    sources.fetch("image-folder", from_path=path)
    folder = next(cache.glob("image-folder-*"))
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "format_version": 1}))
    hint = f"written by an older trustvision.*fetch it again with `--from {path}`"
    with pytest.raises(DataError, match=hint):
        sources.fetch(folder.name)  # by key there is nothing to decode again from
    with pytest.raises(DataError, match=hint):
        sources.fetch("image-folder")  # nor as the one cached image folder
    assert (folder / "meta.json").is_file()  # and the refusal lost nothing
    sources.fetch("image-folder", from_path=path)
    assert json.loads((folder / "meta.json").read_text())["format_version"] == 2


def test_an_older_cifar10_jpeg_cache_is_decoded_again_from_its_zip_only(cache, tmp_path):
    """CIFAR-10 decoded from the JPEG zip by an older format: without `--from` it is refused,
    naming the zip (the official URLs would swap it for the original pickles); a `--from` that
    fails its checksum keeps the old cache as it was."""
    folder = cache / "cifar10"
    folder.mkdir(parents=True)
    zip_path = tmp_path / "cifar10-jpeg.zip"
    meta = {"variant": "jpeg", "format_version": 1, "source": f"file:{zip_path}"}
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=f"fetch it again with `--from {zip_path}`"):
        sources.fetch("cifar10")
    zip_path.write_bytes(b"not the pinned archive")
    with pytest.raises(ChecksumError):
        sources.fetch("cifar10", from_path=zip_path)
    assert json.loads((folder / "meta.json").read_text()) == meta


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


def test_a_cached_directory_is_found_without_reading_its_files(cache, tmp_path, monkeypatch):
    root = tmp_path / "pets"
    for split, cls in (("train", "cat"), ("train", "dog"), ("test", "cat"), ("test", "dog")):
        (root / split / cls).mkdir(parents=True)
        image = np.full((4, 4), len(cls) + len(split), np.uint8)
        Image.fromarray(image).save(root / split / cls / "0.png")
    first = sources.fetch("image-folder", from_path=root)
    meta = json.loads((first / "meta.json").read_text())
    assert meta["inputs"]["pets"] == digests.sha256_tree(root)  # contents hashed when decoded
    read = []
    with monkeypatch.context() as patch:  # `undo` would also drop the cache's TRUSTVISION_DATA
        patch.setattr(digests, "sha256_file", lambda path: read.append(path) or "")
        assert sources.fetch("image-folder", from_path=root) == first and not read
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "test" / "dog" / "0.png")
    os.utime(root / "test" / "dog" / "0.png", ns=(1, 1))  # another time: an edited file
    edited = sources.fetch("image-folder", from_path=root)
    assert edited != first and edited.parent == cache  # the test's cache, not the user's


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


def test_data_info_shows_class_folder_names_as_written(cache, tmp_path):
    from typer.testing import CliRunner

    from trustvision.cli import app

    root = tmp_path / "pets"
    for split, cls in (("train", "cat [red]"), ("train", "dog"), ("test", "cat [red]")):
        (root / split / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / split / cls / "0.png")
    (root / "test" / "dog").mkdir()
    Image.fromarray(np.ones((4, 4), np.uint8)).save(root / "test" / "dog" / "0.png")
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        app, ["data", "info", "image-folder", "--from", str(root)]
    )
    assert result.exit_code == 0, result.output
    assert "0 cat [red]" in result.output  # not read as rich markup
