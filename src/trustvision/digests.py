"""SHA-256 digests of bytes, files and folders: what the data cache, checkpoints and sweeps pin
their files with (a leaf: it imports nothing of trustvision)."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK_BYTES = 1 << 20


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def stat_tree(root: Path) -> str:
    """Hex SHA-256 over a folder's sorted relative file paths, sizes and modification times:
    what identifies a folder too big to read on every use (an edited file changes it)."""
    digest = hashlib.sha256()
    for path in _files(root):
        stat = path.stat()
        relative = path.relative_to(root).as_posix()
        digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def sha256_tree(root: Path) -> str:
    """Hex SHA-256 over a folder's sorted relative file paths and their contents' hashes."""
    digest = hashlib.sha256()
    for path in _files(root):
        relative = path.relative_to(root).as_posix()
        digest.update(f"{relative}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _files(root: Path) -> list[Path]:
    """Every file under `root`, in sorted order (what a folder's digests go over)."""
    return sorted(p for p in root.rglob("*") if p.is_file())
