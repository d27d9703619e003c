"""Writing the data cache: arrays under temporary names, flushed and renamed when complete,
`meta.json` last (see data/cache.py for the folder's format and how it is read)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from trustvision import digests
from trustvision.data import readers
from trustvision.data.cache import (
    FORMAT_VERSION,
    META_NAME,
    WRITABLE_HINT,
    CacheWriteError,
    Fetched,
)
from trustvision.data.catalog import DatasetSpec
from trustvision.data.readers import Decoded
from trustvision.errors import DataError
from trustvision.files import temporary_name, write_atomic

STALE_TEMP_S = 3600.0  # a temporary file this old belongs to no live writer


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
