"""Long-tailed image lists (the ImageNet-LT / iNaturalist `path label` format) over a generated
image tree: the class counts of the list, the many/medium/few split, and a federated run."""

import json
from pathlib import Path

import fed_tiny
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from trustvision.cli import app
from trustvision.data.dataset import load_dataset
from trustvision.errors import DataError
from trustvision.train.metrics import frequency_groups

RUNNER = CliRunner()
# Training images per class, long-tailed across the many (>100), medium and few (<20) bounds.
TRAIN_COUNTS = {"n0001_tench": 120, "n0002_goldfish": 40, "n0003_shark": 12, "n0004_ray": 3}
TEST_PER_CLASS = 4


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRUSTVISION_DATA", str(tmp_path / "cache"))


def image_tree(root: Path, *, prefix: str = "Mini_LT") -> Path:
    """images/<class>/<file>.png of several sizes, and `Mini_LT_train.txt` / `_test.txt`."""
    rng = np.random.default_rng(0)
    lines: dict[str, list[str]] = {"train": [], "test": []}
    for label, (name, count) in enumerate(TRAIN_COUNTS.items()):
        folder = root / "images" / name
        folder.mkdir(parents=True)
        for index in range(count + TEST_PER_CLASS):
            size = int(rng.integers(20, 40))  # mixed sizes: resized once, into the cache
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            pixels[..., label % 3] = 40 * label  # something to learn
            Image.fromarray(pixels).save(folder / f"{index:04d}.png")
            split = "train" if index < count else "test"
            lines[split].append(f"images/{name}/{index:04d}.png {label}")
    for split, listed in lines.items():
        (root / f"{prefix}_{split}.txt").write_text("\n".join(listed) + "\n")
    return root


@pytest.mark.usefixtures("cache")
def test_the_list_gives_the_classes_counts_and_many_medium_few(tmp_path):
    root = image_tree(tmp_path / "mini")
    ds = load_dataset("image-folder", from_path=root, image_size=16)
    assert ds.classes == tuple(TRAIN_COUNTS)
    assert np.bincount(ds.train.labels).tolist() == list(TRAIN_COUNTS.values())
    assert np.bincount(ds.test.labels).tolist() == [TEST_PER_CLASS] * len(TRAIN_COUNTS)
    assert ds.image_shape == (3, 16, 16)
    groups = frequency_groups(np.bincount(ds.train.labels))
    assert [g.tolist() for g in (groups["many"], groups["medium"], groups["few"])] == [
        [0],
        [1],
        [2, 3],
    ]


@pytest.mark.usefixtures("cache")
def test_a_federated_run_on_the_list_completes(tmp_path):
    root = image_tree(tmp_path / "mini")
    args = fed_tiny.tiny_args(
        tmp_path / "runs",
        "data.name=image-folder",
        f"data.source={root}",
        "data.image_size=28",
        "data.train_subset=null",
        "data.test_subset=null",
        "data.imbalance_factor=null",
    )
    result = RUNNER.invoke(app, ["fed", "run", *args])
    assert result.exit_code == 0, result.output
    (summary,) = (tmp_path / "runs").glob("*/summary.json")
    record = json.loads(summary.read_text())
    assert record["status"] == "finished"
    assert len(record["data"]["train_counts"]) == len(TRAIN_COUNTS)
    held_out = sum(record["data"]["client_val_images"])  # each client's validation hold-out
    assert record["data"]["train_images"] + held_out == sum(TRAIN_COUNTS.values())


def append(root: Path, split: str, line: bytes) -> None:
    with (root / f"Mini_LT_{split}.txt").open("ab") as handle:
        handle.write(line)


def relabel(root: Path, split: str, label: int) -> None:
    """Give the list's first image another label."""
    listed = root / f"Mini_LT_{split}.txt"
    first, *rest = listed.read_text().splitlines()
    listed.write_text("\n".join([f"{first.split()[0]} {label}", *rest]) + "\n")


@pytest.mark.usefixtures("cache")
def test_a_list_saved_with_a_byte_order_mark_reads(tmp_path):
    root = image_tree(tmp_path / "mini")
    listed = root / "Mini_LT_train.txt"
    listed.write_bytes(b"\xef\xbb\xbf" + listed.read_bytes())
    ds = load_dataset("image-folder", from_path=root, image_size=16)
    assert np.bincount(ds.train.labels).tolist() == list(TRAIN_COUNTS.values())


@pytest.mark.usefixtures("cache")
@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (lambda r: (r / "Mini_LT_train.txt").write_text("images/x.png 0\n"), "not in the folder"),
        (
            lambda r: (r / "Mini_LT_train.txt").write_text("../../etc/passwd 0\n"),
            "not in the folder",
        ),
        (lambda r: (r / "Mini_LT_train.txt").write_text("images only\n"), "is not `path label`"),
        # a superscript two is a digit to str.isdigit, but no label
        (lambda r: (r / "Mini_LT_train.txt").write_text("x.png \u00b2\n"), "is not `path label`"),
        (lambda r: (r / "Mini_LT_test.txt").unlink(), r"exactly one `\*train.txt`"),
        (lambda r: (r / "B_test.txt").write_text("x 0\n"), r"exactly one `\*train.txt`"),
        (lambda r: append(r, "train", "images/caf\xe9.png 0\n".encode("latin-1")), "not UTF-8"),
        (lambda r: append(r, "train", b"images/n0004_ray/0000.png 3\n"), "already listed at"),
        (lambda r: append(r, "test", b"images/n0004_ray/0000.png 3\n"), "already listed at"),
        (
            lambda r: relabel(r, "train", 1000000000),
            r"_train.txt` line 1 gives .* label 1000000000",
        ),
        (lambda r: relabel(r, "test", 4), r"_test.txt` line 1 gives .* run from 0 to 3"),
    ],
)
def test_a_bad_list_names_the_file_and_line(tmp_path, edit, said):
    root = image_tree(tmp_path / "mini")
    edit(root)
    with pytest.raises(DataError, match=said):
        load_dataset("image-folder", from_path=root, image_size=16)
