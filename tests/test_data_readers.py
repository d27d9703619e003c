"""Readers of the raw formats: IDX, CIFAR python archives (restricted unpickling), image folders."""

import gzip
import io
import os
import pickle
import struct
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from trustvision.data import images, readers
from trustvision.errors import DataError


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def cifar_batch(images: np.ndarray, labels: list[int], key: bytes = b"labels") -> bytes:
    """A CIFAR batch pickled as the official files are: protocol 2, bytes keys, (N, 3072) rows."""
    return pickle.dumps({b"data": images.reshape(len(images), -1), key: labels}, protocol=2)


def add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def write_cifar10(path, rng, *, per_batch=3):
    """A tiny `cifar-10-python.tar.gz`; returns the (images, labels) it holds per split."""
    folder = "cifar-10-batches-py"
    train_x = rng.integers(0, 256, (5 * per_batch, 3, 32, 32), dtype=np.uint8)
    train_y = rng.integers(0, 10, 5 * per_batch).tolist()
    test_x = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
    test_y = rng.integers(0, 10, per_batch).tolist()
    names = [f"class{i}".encode() for i in range(10)]
    with tarfile.open(path, "w:gz") as archive:
        for i in range(5):
            part = slice(i * per_batch, (i + 1) * per_batch)
            add_member(
                archive, f"{folder}/data_batch_{i + 1}", cifar_batch(train_x[part], train_y[part])
            )
        add_member(archive, f"{folder}/test_batch", cifar_batch(test_x, test_y))
        add_member(
            archive, f"{folder}/batches.meta", pickle.dumps({b"label_names": names}, protocol=2)
        )
    return (train_x, np.array(train_y)), (test_x, np.array(test_y))


def write_cifar100(path, rng, *, n_train=7, n_test=4, classes=None):
    """A tiny `cifar-100-python.tar.gz` with fine and coarse labels."""
    folder = "cifar-100-python"
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 100, n).tolist()
        batch = {
            b"data": x.reshape(n, -1),
            b"fine_labels": y,
            b"coarse_labels": [v // 5 for v in y],
        }
        data[split] = (x, np.array(y), pickle.dumps(batch, protocol=2))
    names = [c.encode() for c in classes] if classes else [f"fine{i}".encode() for i in range(100)]
    with tarfile.open(path, "w:gz") as archive:
        for split in ("train", "test"):
            add_member(archive, f"{folder}/{split}", data[split][2])
        add_member(
            archive, f"{folder}/meta", pickle.dumps({b"fine_label_names": names}, protocol=2)
        )
    return data["train"][:2], data["test"][:2]


def write_image_zip(path, images: dict[str, np.ndarray], *, fmt="PNG"):
    """A zip of `name -> (H, W[, 3]) uint8` images, written with PIL."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, pixels in images.items():
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format=fmt)
            archive.writestr(name, buffer.getvalue())


# --- IDX ---------------------------------------------------------------------------------


def test_idx_round_trip_plain_and_gzipped():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for raw in (idx_bytes(images), gzip.compress(idx_bytes(images))):
        data = readers.gunzip_if_needed(raw, name="x")
        np.testing.assert_array_equal(readers.read_idx(data, name="x"), images)


def test_idx_split_is_nchw_with_int64_labels():
    images, labels = readers.idx_split(
        np.zeros((5, 28, 28), np.uint8), np.arange(5, dtype=np.uint8), name="t"
    )
    assert images.shape == (5, 1, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64


def test_truncated_idx_names_the_file():
    data = idx_bytes(np.zeros((4, 5, 5), np.uint8))[:-7]
    with pytest.raises(DataError, match=r"`train-images`.*truncated"):
        readers.read_idx(data, name="train-images")


def test_idx_with_wrong_magic_is_refused():
    with pytest.raises(DataError, match=r"not an IDX file"):
        readers.read_idx(b"PK\x03\x04 not idx", name="f")


def test_truncated_gzip_is_a_data_error():
    raw = gzip.compress(idx_bytes(np.zeros((4, 5, 5), np.uint8)))[:-10]
    with pytest.raises(DataError, match=r"not a readable gzip"):
        readers.gunzip_if_needed(raw, name="f.gz")


# --- restricted unpickling ---------------------------------------------------------------


class SystemCall:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class EvalCall:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


@pytest.mark.parametrize("make", [SystemCall, EvalCall], ids=["os.system", "builtins.eval"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, make):
    marker = tmp_path / "pwned"
    if make is SystemCall:
        payload = make(f"touch {marker}")
    else:
        payload = make(f"open({str(marker)!r}, 'w').close()")
    data = pickle.dumps({b"data": payload, b"labels": [0]}, protocol=2)
    with pytest.raises(DataError, match=r"refused to load"):
        readers.load_pickle(data, source="evil_batch")
    assert not marker.exists()


def test_malicious_batch_inside_an_archive_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "cifar-10-python.tar.gz"
    folder = "cifar-10-batches-py"
    evil = pickle.dumps(SystemCall(f"touch {marker}"), protocol=2)
    with tarfile.open(path, "w:gz") as archive:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
            add_member(archive, f"{folder}/{name}", evil)
    with pytest.raises(
        DataError, match=r"refused to load `posix.system`|refused to load `nt.system`"
    ):
        readers.read_cifar_archive(path, fmt="cifar10", classes=tuple("abcdefghij"))
    assert not marker.exists()


def test_genuine_numpy_batch_loads():
    x = np.arange(12, dtype=np.uint8).reshape(2, 6)
    obj = readers.load_pickle(pickle.dumps({b"data": x, b"labels": [1, 2]}, protocol=2), source="b")
    np.testing.assert_array_equal(obj[b"data"], x)
    assert obj[b"labels"] == [1, 2]


def test_garbage_pickle_is_a_data_error():
    with pytest.raises(DataError, match=r"not a readable pickle"):
        readers.load_pickle(b"\x80\x02}q\x00(", source="b")


# --- CIFAR archives ----------------------------------------------------------------------


def test_cifar10_archive_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "cifar-10-python.tar.gz"
    (train_x, train_y), (test_x, test_y) = write_cifar10(path, rng)
    decoded = readers.read_cifar_archive(path, fmt="cifar10", classes=tuple("abcdefghij"))
    np.testing.assert_array_equal(decoded.train[0], train_x)  # row layout R, G, B planes -> CHW
    np.testing.assert_array_equal(decoded.train[1], train_y)
    np.testing.assert_array_equal(decoded.test[0], test_x)
    np.testing.assert_array_equal(decoded.test[1], test_y)
    assert decoded.train[1].dtype == np.int64
    assert decoded.classes == tuple(f"class{i}" for i in range(10))  # names from batches.meta


def test_cifar100_archive_uses_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "cifar-100-python.tar.gz"
    (train_x, train_y), (_, test_y) = write_cifar100(path, rng)
    decoded = readers.read_cifar_archive(path, fmt="cifar100", classes=())
    np.testing.assert_array_equal(decoded.train[0], train_x)
    np.testing.assert_array_equal(decoded.train[1], train_y)
    np.testing.assert_array_equal(decoded.test[1], test_y)
    assert len(decoded.classes) == 100 and decoded.classes[7] == "fine7"


def test_tar_members_outside_the_archive_root_are_never_read(tmp_path):
    path = tmp_path / "a.tar"
    with tarfile.open(path, "w") as archive:
        add_member(archive, "../cifar-100-python/train", b"x")
        link = tarfile.TarInfo("cifar-100-python/test")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    with pytest.raises(DataError, match=r"lacks") as err:
        readers.read_tar_members(path, {"cifar-100-python/train", "cifar-100-python/test"})
    assert "cifar-100-python/test" in str(err.value)
    assert readers.safe_member_name("../x") is None and readers.safe_member_name("/etc/x") is None


# --- image folders -----------------------------------------------------------------------


def test_image_folder_zip_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    pixels = {
        "data/train/zebra/0.png": rng.integers(0, 256, (6, 5, 3), dtype=np.uint8),
        "data/train/ant/0.png": rng.integers(0, 256, (6, 5, 3), dtype=np.uint8),
        "data/train/ant/1.png": rng.integers(0, 256, (6, 5, 3), dtype=np.uint8),
        "data/test/zebra/0.png": rng.integers(0, 256, (6, 5, 3), dtype=np.uint8),
        "data/test/ant/0.png": rng.integers(0, 256, (6, 5), dtype=np.uint8),  # grey -> RGB
    }
    path = tmp_path / "set.zip"
    write_image_zip(path, pixels)
    seen = []
    decoded = images.read_image_folder(
        path, progress=lambda done, total: seen.append((done, total))
    )
    assert decoded.classes == ("ant", "zebra")
    assert decoded.train[0].shape == (3, 3, 6, 5) and decoded.train[0].dtype == np.uint8
    np.testing.assert_array_equal(decoded.train[1], [0, 0, 1])  # sorted by file name
    np.testing.assert_array_equal(
        decoded.train[0][2], pixels["data/train/zebra/0.png"].transpose(2, 0, 1)
    )
    grey = pixels["data/test/ant/0.png"]
    np.testing.assert_array_equal(decoded.test[0][0], np.stack([grey] * 3))
    assert seen[-1] == (5, 5)


def test_grey_image_folder_directory_has_one_channel(tmp_path):
    for split, cls, value in [("train", "a", 10), ("train", "b", 20), ("test", "b", 30)]:
        (tmp_path / split / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((4, 4), value, np.uint8)).save(tmp_path / split / cls / "x.png")
    (tmp_path / "README.txt").write_text("not an image: ignored")
    decoded = images.read_image_folder(tmp_path)
    assert decoded.train[0].shape == (2, 1, 4, 4)
    assert decoded.test[0][0, 0, 0, 0] == 30 and list(decoded.test[1]) == [1]


def test_image_folder_sizes_differ_names_two_files_and_image_size(tmp_path):
    path = tmp_path / "mixed.zip"
    write_image_zip(
        path,
        {
            "train/a/small.png": np.zeros((4, 4, 3), np.uint8),
            "train/a/big.png": np.zeros((8, 6, 3), np.uint8),
            "test/a/t.png": np.zeros((4, 4, 3), np.uint8),
        },
    )
    with pytest.raises(
        DataError, match=r"`train/a/big.png` is 6x8.*`train/a/small.png` is 4x4.*image_size"
    ):
        images.read_image_folder(path)
    decoded = images.read_image_folder(path, image_size=5)
    assert decoded.train[0].shape == (2, 3, 5, 5) and decoded.test[0].shape == (1, 3, 5, 5)


def test_image_folder_without_test_split_is_refused(tmp_path):
    path = tmp_path / "train-only.zip"
    write_image_zip(path, {"train/a/0.png": np.zeros((2, 2), np.uint8)})
    with pytest.raises(DataError, match=r"no images under `test/<class>/`"):
        images.read_image_folder(path)


def test_unreadable_image_names_the_file(tmp_path):
    path = tmp_path / "bad.zip"
    write_image_zip(path, {"train/a/0.png": np.zeros((2, 2), np.uint8)})
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("test/a/broken.png", b"not a png")
    with pytest.raises(DataError, match=r"broken.png` is not a readable image"):
        images.read_image_folder(path)


def test_channel_stats_match_numpy():
    images = np.random.default_rng(3).integers(0, 256, (50, 3, 4, 4), dtype=np.uint8)
    mean, std = readers.channel_stats(images, chunk=7)
    scaled = images / 255.0
    np.testing.assert_allclose(mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(std, scaled.std(axis=(0, 2, 3)), rtol=1e-8)
