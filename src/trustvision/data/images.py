"""Image folders: `split/class/file` images, as a directory or a zip, decoded into one array."""

from __future__ import annotations

import posixpath
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

from trustvision.data.readers import (
    SPLITS,
    Decoded,
    Progress,
    is_unsafe_member,
    safe_member_name,
    unsafe_members_error,
)
from trustvision.errors import DataError

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
GRAY_MODES = frozenset({"1", "L", "LA"})  # every other mode but 16-bit and float becomes RGB
WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})  # scaled from 16 bits
PROGRESS_EVERY = 256
# Evaluations take the first N test images (RobustBench's convention, which assumes the
# shuffled order of the original CIFAR and MNIST files), and a folder or a list names its
# images class by class, so its first 500 test images would all be of one class. The test split
# is therefore stored in this seed's fixed random order. The training split keeps its file
# order: every use of it draws a seeded subset or a stratified hold-out, never its first images.
TEST_ORDER_SEED = 0


@contextmanager
def open_folder(path: Path) -> Iterator[tuple[list[str], Callable[[str], IO[bytes]]]]:
    """The relative file names of a zip or directory and a function that opens one."""
    if path.is_dir():
        names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
        yield names, lambda name: open(path / name, "rb")  # noqa: SIM115 (caller closes)
        return
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(
            f"`{path}` is neither a folder nor a readable zip ({err}): pass an image folder "
            "laid out as `train/<class>/<file>` and `test/<class>/<file>`"
        ) from None
    with archive:
        names = sorted(i.filename for i in archive.infolist() if not i.is_dir())
        yield names, archive.open


def _is_image(name: str) -> bool:
    parts = name.split("/")
    hidden = any(p.startswith(".") or p == "__MACOSX" for p in parts)
    return not hidden and posixpath.splitext(name)[1].lower() in IMAGE_SUFFIXES


def folder_layout(
    names: list[str], *, source: Path
) -> tuple[tuple[str, ...], dict[str, list[tuple[str, int]]]]:
    """Class names (sorted train folders) and, per split, the (file, label) pairs in name order."""
    unsafe = [name for name in names if is_unsafe_member(name)]
    if unsafe:  # whatever its suffix: an archive with such a path is not trusted at all
        raise unsafe_members_error(source, unsafe)
    by_split: dict[str, list[tuple[str, str]]] = {split: [] for split in SPLITS}
    for name in filter(_is_image, names):
        parts = name.split("/")
        if len(parts) < 3 or parts[-3] not in SPLITS or safe_member_name(name) != name:
            raise DataError(
                f"`{name}` in `{source}` is not at `<split>/<class>/<file>` with split `train` "
                "or `test`: move it, or remove it from the folder"
            )
        by_split[parts[-3]].append((name, parts[-2]))
    for split, entries in by_split.items():
        if not entries:
            raise DataError(
                f"`{source}` has no images under `{split}/<class>/`: an image folder needs "
                "both `train/<class>/<file>` and `test/<class>/<file>`"
            )
    classes = tuple(sorted({cls for _, cls in by_split["train"]}))
    extra = sorted({cls for _, cls in by_split["test"]} - set(classes))
    if extra:
        raise DataError(
            f"`{source}`: test classes {extra} have no training folder; add `train/{extra[0]}/` "
            "or remove them from `test/`"
        )
    index = {cls: i for i, cls in enumerate(classes)}
    return classes, {s: [(n, index[c]) for n, c in e] for s, e in by_split.items()}


TRAIN_LIST = re.compile(r"^(?:.*_)?train\.txt$")  # ImageNet_LT_train.txt, iNaturalist18_train.txt
TEST_LIST = re.compile(r"^(?:.*_)?test\.txt$")
VAL_LIST = re.compile(r"^(?:.*_)?val\.txt$")  # the test list where a folder has no test list


def list_files(names: list[str]) -> tuple[str, str] | None:
    """The (train, test) image lists at the root of a folder, when it has them: the
    long-tailed benchmarks' `path label` format (ImageNet-LT, iNaturalist)."""
    root = [n for n in names if "/" not in n]
    train = [n for n in root if TRAIN_LIST.match(n)]
    test = [n for n in root if TEST_LIST.match(n)] or [n for n in root if VAL_LIST.match(n)]
    if not train and not test:
        return None
    if len(train) != 1 or len(test) != 1:
        raise DataError(
            f"image lists need exactly one `*train.txt` and one `*test.txt` (or, without one, "
            f"one `*val.txt`) at the root; found {sorted(train + test)}"
        )
    return train[0], test[0]


def list_lines(data: bytes, *, where: str) -> list[str]:
    """A list's lines, decoded as UTF-8 (a byte-order mark dropped)."""
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(
            f"`{where}` is not UTF-8 text ({err.reason} at byte {err.start}): save the list as "
            "UTF-8"
        ) from None


def list_entries(
    lines: list[str], present: set[str], seen: dict[str, str], *, where: str
) -> list[tuple[str, int]]:
    """The (path, label) pairs of one list's lines; `seen` maps every path listed so far to
    where, and a path listed twice (in this list or another) is refused."""
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not (parts[1].isascii() and parts[1].isdecimal()):
            raise DataError(f"`{where}` line {number} is not `path label`: {line[:80]!r}")
        path = parts[0].removeprefix("./")
        if is_unsafe_member(path) or path not in present:
            raise DataError(
                f"`{where}` line {number} names `{path}`, which is not in the folder (paths are "
                "relative to the folder holding the lists)"
            )
        if path in seen:
            raise DataError(
                f"`{where}` line {number} names `{path}`, already listed at {seen[path]}: list "
                "each image once, in one split"
            )
        seen[path] = f"`{where}` line {number}"
        entries.append((path, int(parts[1])))
    if not entries:
        raise DataError(f"`{where}` lists no image")
    return entries


def list_layout(
    names: list[str], lists: tuple[str, str], read: Callable[[str], bytes], *, source: Path
) -> tuple[tuple[str, ...], dict[str, list[tuple[str, int]]]]:
    """Classes and per-split (file, label) pairs from `path label` lists, in list order. A
    class is named by the folder of its first training image (its label where they differ);
    labels run from 0 and every one has a training image."""
    present, seen = set(names), dict[str, str]()
    layout: dict[str, list[tuple[str, int]]] = {}
    for split, list_name in zip(SPLITS, lists, strict=True):
        where = f"{source}:{list_name}"
        layout[split] = list_entries(
            list_lines(read(list_name), where=where), present, seen, where=where
        )
    folders: dict[int, set[str]] = {}
    for path, label in layout["train"]:
        folders.setdefault(label, set()).add(posixpath.basename(posixpath.dirname(path)))
    count = len(folders)  # labels 0..count-1, each with a training image, or a label beyond
    for split in SPLITS:
        beyond = next(((p, label) for p, label in layout[split] if label >= count), None)
        if beyond is not None:
            missing = sorted(set(range(count)) - set(folders))
            raise DataError(
                f"{seen[beyond[0]]} gives `{beyond[0]}` label {beyond[1]}, but the training list "
                f"holds {count} distinct labels: labels run from 0 to {count - 1}, each with a "
                "training image" + (f" (none has label {missing[:8]})" if missing else "")
            )
    classes = tuple(
        next(iter(folders[i])) if len(folders[i]) == 1 else str(i) for i in range(count)
    )
    return classes, layout


def decode_image(handle: IO[bytes], *, name: str, image_size: int | None) -> np.ndarray:
    """One image as uint8 (H, W) grey or (H, W, 3) RGB, resized bilinearly to a square size."""
    try:
        with Image.open(handle) as opened:
            image = _eight_bit(opened, name=name)
        if image_size is not None and image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8)
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        EOFError,
        zipfile.BadZipFile,
        zlib.error,
    ) as err:
        raise DataError(f"`{name}` is not a readable image ({err}): replace or remove it") from None
    except Image.DecompressionBombError as err:  # its header promises billions of pixels
        raise DataError(
            f"`{name}` is refused as a likely decompression bomb ({str(err).rstrip('.')}): "
            "remove it, or shrink it if it is a genuine image"
        ) from None


def _eight_bit(opened: Image.Image, *, name: str) -> Image.Image:
    """8-bit grey or RGB. 16-bit grey is scaled to 8 bits (Pillow's convert would clip every
    value above 255 to white); float pixels have no agreed range and are refused."""
    if opened.mode == "F":
        raise DataError(f"`{name}` holds floating-point pixels: save it as an 8-bit image")
    if opened.mode in WIDE_GRAY_MODES:
        values = np.asarray(opened, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise DataError(f"`{name}` holds pixels outside 16 bits: save it as an 8-bit image")
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))
    return opened.convert("L" if opened.mode in GRAY_MODES else "RGB")


def _check_size(first: tuple[str, tuple[int, ...]], name: str, shape: tuple[int, ...]) -> None:
    if shape[:2] != first[1][:2]:
        (h1, w1), (h2, w2) = first[1][:2], shape[:2]
        raise DataError(
            f"images differ in size: `{first[0]}` is {w1}x{h1} but `{name}` is {w2}x{h2}; "
            f"resize them all to one square size with `trustvision data fetch image-folder --from "
            f"PATH --image-size {h1}` (in a config: `data.image_size={h1}`)"
        )


def to_nchw(images: list[np.ndarray]) -> np.ndarray:
    """Stack (H, W) / (H, W, 3) images into uint8 (N, C, H, W); grey turns RGB if any is RGB."""
    if not any(image.ndim == 3 for image in images):
        return np.stack(images)[:, None]
    rgb = [image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2) for image in images]
    return np.ascontiguousarray(np.stack(rgb).transpose(0, 3, 1, 2))


def read_image_folder(
    path: Path, *, image_size: int | None = None, progress: Progress | None = None
) -> Decoded:
    """Decode every image of a `split/class/file` folder or zip, or of the images its
    `*train.txt` / `*test.txt` lists name (`path label` per line), with optional progress."""
    with open_folder(path) as (names, open_member):
        lists = list_files(names)
        if lists is None:
            classes, layout = folder_layout(names, source=path)
        else:

            def read(name: str) -> bytes:
                try:
                    with open_member(name) as handle:
                        return handle.read()
                except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as err:
                    raise DataError(f"`{path}:{name}` cannot be read ({err})") from None

            classes, layout = list_layout(names, lists, read, source=path)
        total = sum(len(entries) for entries in layout.values())
        pixels: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
        first: tuple[str, tuple[int, ...]] | None = None
        done = 0
        for split, entries in layout.items():
            for name, _ in entries:
                with open_member(name) as handle:
                    image = decode_image(handle, name=f"{path}:{name}", image_size=image_size)
                first = first or (name, image.shape)
                _check_size(first, name, image.shape)
                pixels[split].append(image)
                done += 1
                if progress is not None and (done % PROGRESS_EVERY == 0 or done == total):
                    progress(done, total)
    merged = to_nchw(pixels["train"] + pixels["test"])  # one channel count for both splits
    n_train = len(pixels["train"])

    def labels(split: str) -> np.ndarray:
        return np.array([label for _, label in layout[split]], dtype=np.int64)

    test_images, test_labels = merged[n_train:], labels("test")
    order = np.random.default_rng(TEST_ORDER_SEED).permutation(len(test_labels))
    return Decoded(
        classes, (merged[:n_train], labels("train")), (test_images[order], test_labels[order])
    )
