"""Decoders of the raw formats: IDX (MNIST family) and CIFAR python archives (image folders are
in `images.py`), with the hashing, archive reading and statistics they share."""

from __future__ import annotations

import codecs
import gzip
import io
import pickle
import posixpath
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy._core.multiarray import _reconstruct

from trustvision.errors import DataError

Progress = Callable[[int, int], None]  # (images done, images in all)
Split = tuple[np.ndarray, np.ndarray]  # uint8 (N, C, H, W) images, int64 (N,) labels

SPLITS = ("train", "test")


@dataclass(frozen=True, eq=False)
class Decoded:
    """A decoded data set: class names and (images, labels) per split."""

    classes: tuple[str, ...]
    train: Split
    test: Split


# ---------------------------------------------------------------------------------------
# Compression


def gunzip_if_needed(data: bytes, *, name: str) -> bytes:
    """`data` decompressed when it starts with the gzip magic, else unchanged."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"`{name}` is not a readable gzip file ({err}): it is corrupt or truncated; "
            "delete it and fetch it again"
        ) from None


# ---------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)

IDX_UBYTE = 0x08


def read_idx(data: bytes, *, name: str) -> np.ndarray:
    """Parse decompressed IDX bytes of unsigned-byte type into an array of the header's shape."""
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != IDX_UBYTE:
        raise DataError(
            f"`{name}` is not an IDX file of unsigned bytes (first bytes {data[:4].hex()}, "
            "expected 000008..): point the source at the original IDX files"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(data[4:header], ">u4")) if ndim else ()
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(dims) != ndim or len(data) != expected:
        raise DataError(
            f"`{name}` holds {len(data)} bytes but its header promises {expected}: "
            "the file is truncated or corrupt; fetch it again"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def idx_split(images: np.ndarray, labels: np.ndarray, *, name: str) -> Split:
    """(N, 1, H, W) images and int64 labels from an IDX image array and label array."""
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"`{name}`: images of shape {images.shape} and labels of shape {labels.shape} "
            "do not pair up (expected (N, H, W) and (N,)); check the files are from one set"
        )
    return np.ascontiguousarray(images[:, None]), labels.astype(np.int64)


# ---------------------------------------------------------------------------------------
# CIFAR python archives: pickles are untrusted bytes


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, bytes, numbers and numpy arrays.

    CIFAR batches are dicts of byte-string keys to lists, bytes and uint8 arrays; a numpy
    array pickles as `_reconstruct(ndarray, ...)` plus a dtype, and py3 pickles of bytes at
    protocol 2 go through `_codecs.encode`. Any other global (`os.system`, `builtins.eval`,
    ...) is refused before it can be called.
    """

    ALLOWED: dict[tuple[str, str], Any] = {  # noqa: RUF012 (read-only lookup table)
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }

    def __init__(self, file: IO[bytes], *, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowed global; refuse every other with DataError."""
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"refused to load `{module}.{name}` from `{self.source}`: a CIFAR batch holds "
                "only arrays, lists and bytes, so this is not a genuine CIFAR file and may be "
                "malicious; fetch the official archive again"
            ) from None


def load_pickle(data: bytes, *, source: str) -> Any:
    """Unpickle untrusted bytes with `RestrictedUnpickler`."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=source).load()
    except DataError:
        raise
    except Exception as err:  # a damaged pickle raises almost anything
        raise DataError(
            f"`{source}` is not a readable pickle ({type(err).__name__}: {err}); "
            "the archive is corrupt: fetch it again"
        ) from None


@dataclass(frozen=True)
class CifarLayout:
    """Where the batches sit in an official CIFAR python archive, and their label keys."""

    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: bytes
    names_key: bytes
    num_classes: int

    def members(self) -> list[str]:
        """Archive paths of every member read."""
        return [f"{self.folder}/{m}" for m in (*self.train, *self.test, self.meta)]


CIFAR_LAYOUTS = {
    "cifar10": CifarLayout(
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        meta="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
        num_classes=10,
    ),
    "cifar100": CifarLayout(
        folder="cifar-100-python",
        train=("train",),
        test=("test",),
        meta="meta",
        label_key=b"fine_labels",  # the 100 fine classes; coarse_labels are not used
        names_key=b"fine_label_names",
        num_classes=100,
    ),
}


def safe_member_name(name: str) -> str | None:
    """The normalised member path, or None when it is absolute or climbs out with `..`."""
    normal = posixpath.normpath(name)
    if normal.startswith("/") or normal == ".." or normal.startswith("../"):
        return None
    return normal


def is_unsafe_member(name: str) -> bool:
    """Whether an archive member path is absolute or holds a `..` part (it is then refused)."""
    return name.startswith("/") or ".." in name.split("/")


def listed(names: list[str], *, most: int = 3) -> str:
    """The first `most` names in backticks, and how many more there are."""
    shown = ", ".join(f"`{name}`" for name in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def unsafe_members_error(path: Path, unsafe: list[str]) -> DataError:
    """The error for an archive holding member paths that lead outside it."""
    return DataError(
        f"`{path}` holds {listed(unsafe)}, a path outside the archive (absolute or with `..`): "
        "refused, as no genuine data-set archive has one; fetch the official archive again, "
        "or rebuild yours without it"
    )


def read_tar_members(path: Path, wanted: set[str]) -> dict[str, bytes]:
    """The bytes of the regular-file members named in `wanted`, read without extracting.

    A member path that is absolute or holds `..` is never read, and the archive is refused.
    """
    found: dict[str, bytes] = {}
    unsafe: list[str] = []
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                if is_unsafe_member(member.name):
                    unsafe.append(member.name)
                    continue
                name = safe_member_name(member.name)
                if name in wanted and member.isfile():  # links and devices are never followed
                    handle = archive.extractfile(member)
                    assert handle is not None  # a regular file always has data
                    found[name] = handle.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DataError(f"`{path}` is not a readable tar archive ({err}); fetch it again") from None
    missing = sorted(wanted - found.keys())
    if missing:
        refused = f" (it holds {listed(unsafe)}, outside the archive: refused)" if unsafe else ""
        raise DataError(
            f"`{path}` lacks {listed(missing, most=9)}: not the expected archive{refused}"
        )
    if unsafe:
        raise unsafe_members_error(path, unsafe)
    return found


def _entry(batch: dict, key: bytes, *, source: str) -> Any:
    """`batch[key]`, accepting byte-string and str keys."""
    for candidate in (key, key.decode()):
        if candidate in batch:
            return batch[candidate]
    raise DataError(f"`{source}` has no `{key.decode()}` entry: not a CIFAR batch")


def cifar_batch(obj: Any, layout: CifarLayout, *, source: str) -> Split:
    """(N, 3, 32, 32) uint8 images and int64 labels from one unpickled CIFAR batch."""
    if not isinstance(obj, dict):
        raise DataError(f"`{source}` holds a {type(obj).__name__}, not a CIFAR batch dict")
    data = np.asarray(_entry(obj, b"data", source=source))
    labels = np.asarray(_entry(obj, layout.label_key, source=source), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"`{source}`: data is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    if labels.shape != (len(data),) or labels.min(initial=0) < 0:
        raise DataError(f"`{source}`: {labels.shape} labels for {len(data)} images")
    if labels.max(initial=0) >= layout.num_classes:
        raise DataError(f"`{source}`: label {labels.max()} is not below {layout.num_classes}")
    # each row is 1024 red, 1024 green, then 1024 blue values, rows of 32: already C, H, W
    return data.reshape(-1, 3, 32, 32), labels


def cifar_class_names(obj: Any, layout: CifarLayout) -> tuple[str, ...] | None:
    """The class names from an unpickled meta file, or None when it has none."""
    if not isinstance(obj, dict):
        return None
    names = obj.get(layout.names_key, obj.get(layout.names_key.decode()))
    if not isinstance(names, list) or len(names) != layout.num_classes:
        return None
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def read_cifar_archive(path: Path, *, fmt: str, classes: tuple[str, ...]) -> Decoded:
    """Decode an official `cifar-10-python.tar.gz` or `cifar-100-python.tar.gz` (`fmt`)."""
    layout = CIFAR_LAYOUTS[fmt]
    blobs = read_tar_members(path, set(layout.members()))

    def batches(names: tuple[str, ...]) -> Split:
        parts = []
        for member in names:
            key = f"{layout.folder}/{member}"
            source = f"{path}:{key}"
            parts.append(cifar_batch(load_pickle(blobs[key], source=source), layout, source=source))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    meta_key = f"{layout.folder}/{layout.meta}"
    meta = load_pickle(blobs[meta_key], source=f"{path}:{meta_key}")
    names = cifar_class_names(meta, layout) or classes
    return Decoded(names, batches(layout.train), batches(layout.test))


def channel_stats(
    images: np.ndarray, *, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of pixel/255 over uint8 (N, C, H, W) images."""
    channels = images.shape[1]
    total = np.zeros(channels)
    squares = np.zeros(channels)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].astype(np.float64) / 255.0
        total += block.sum(axis=(0, 2, 3))
        squares += np.square(block).sum(axis=(0, 2, 3))
    count = max(images.size // channels, 1)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def read_file(path: Path) -> bytes:
    """All bytes of a file, with a DataError naming it when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise DataError(f"cannot read `{path}` ({err.strerror or err}): check the path") from None
