"""Checking fetched files against their pinned SHA-256 and decoded data sets against the
catalog (split from sources.py, which finds the files)."""

from __future__ import annotations

from pathlib import Path

from trustvision import digests
from trustvision.data import readers
from trustvision.data.catalog import DatasetSpec, FileSpec
from trustvision.data.readers import Decoded
from trustvision.data.registry import RawFiles
from trustvision.errors import ChecksumError, DataError

FROM_HINT = "pass a local copy with `--from PATH` (`from_path=` in Python)"


def checksum_error(label: str, *, expected: str, actual: str, what: str = "bytes") -> ChecksumError:
    """The error for a file whose hash differs from the pinned one."""
    return ChecksumError(
        f"`{label}` is corrupt, truncated or not the expected file: the SHA-256 of its {what} "
        f"is {actual}, expected {expected}. Delete it and fetch it again, or {FROM_HINT} to a "
        "good copy"
    )


def verified_bytes(raw: bytes, file: FileSpec, *, label: str) -> bytes:
    """`raw`, decompressed if gzipped, after checking the pinned hash of the decompressed bytes."""
    try:
        data = readers.gunzip_if_needed(raw, name=label)
        what = "decompressed bytes" if data is not raw else "bytes"
    except DataError:
        data, what = raw, "bytes (not a readable gzip file)"
    actual = digests.sha256_bytes(data)
    if actual != file.sha256:
        raise checksum_error(label, expected=file.sha256, actual=actual, what=what)
    return data


def verified_file(path: Path, file: FileSpec, *, label: str) -> str:
    """The SHA-256 of a file, after checking it is the pinned one."""
    actual = digests.sha256_file(path)
    if actual != file.sha256:
        raise checksum_error(label, expected=file.sha256, actual=actual)
    return actual


def decode_idx(spec: DatasetSpec, raws: RawFiles) -> tuple[Decoded, dict[str, str]]:
    """Verify and decode the four IDX files of an MNIST-style data set."""
    arrays = {}
    for file in spec.files:
        label, raw = raws[file.name]
        arrays[file.role] = readers.read_idx(verified_bytes(raw, file, label=label), name=label)
    train = readers.idx_split(
        arrays["train_images"], arrays["train_labels"], name=f"{spec.name} train"
    )
    test = readers.idx_split(arrays["test_images"], arrays["test_labels"], name=f"{spec.name} test")
    inputs = {file.name: file.sha256 for file in spec.files}
    return check_shape(spec, Decoded(spec.classes, train, test)), inputs


def check_shape(spec: DatasetSpec, decoded: Decoded) -> Decoded:
    """`decoded`, after checking its image shape and labels against the catalog."""
    for split, (images, labels) in (("train", decoded.train), ("test", decoded.test)):
        if spec.shape is not None and tuple(images.shape[1:]) != spec.shape:
            raise DataError(
                f"`{spec.name}` {split} images are {tuple(images.shape[1:])}, expected {spec.shape}: "
                "the source is not this data set"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= len(decoded.classes)):
            raise DataError(
                f"`{spec.name}` {split} labels fall outside 0..{len(decoded.classes) - 1}"
            )
    return decoded


def check_classes(spec: DatasetSpec, decoded: Decoded, *, source: Path) -> None:
    """Refuse an image folder whose class folders differ from the catalog's classes."""
    if decoded.classes != spec.classes:
        raise DataError(
            f"`{source}` has classes {list(decoded.classes)}, but `{spec.name}` has "
            f"{list(spec.classes)}: it is not this data set"
        )
