"""Writing a file whole or not at all: a reader, a resumed run or a crash never sees half of it."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


def temporary_name(path: Path) -> Path:
    """A unique hidden temporary name beside `path`."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write `data` (text as UTF-8) under a temporary name, fsync, and rename it into place; on
    any error (a full disk) `path` keeps its old content and the temporary file is removed."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in the file at `path`, unchecked; None when it cannot be read or is no
    JSON object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
