"""Hostile inputs, as a new user or an attacker would try them, replayed through the real
command line (issue 18). Each probe asserts its exit code (2 bad input, 1 diverged, 3 the
machine refused), that the one-line message names the offending key or file, that nothing
outside the run directory or cache changed and that no half-written file remains. The
tally (probes tried, tracebacks, silent wrong results) is printed at the end of the run.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fed_tiny import tiny_args
from hostile_tally import TALLY
from PIL import Image
from test_data_hostile import png_header
from typer.testing import CliRunner

from trustvision.cli import app
from trustvision.config import TrainConfig, load_config
from trustvision.data.dataset import load_dataset

ROOT = Path(__file__).parents[1]
TRAIN = str(ROOT / "configs/train/mnist_cnn.yaml")
FED = str(ROOT / "configs/fed/fmnist_lt_cpu.yaml")
TINY_TRAIN = ["epochs=1", "data.train_subset=256", "data.test_subset=100", "data.batch_size=64"]
SWEEP_RUN = ["sweep", "run", str(ROOT / "configs/sweep/mnist_lr.yaml"), "--out", "{tmp}/out"]
ALL_FAIL = "[{client: 0, round: 1}, {client: 1, round: 1}, {client: 2, round: 1}]"
RUNNER = CliRunner(env={"COLUMNS": "4000"})  # one line stays one line (no wrapping)


@dataclass
class Probe:
    """One hostile input: the command line, its expected exit code, what the message names."""

    args: list[str]
    code: int
    names: list[str]
    setup: Callable[[Path], None] | None = None  # writes the hostile files under the folder
    env: dict[str, str] = field(default_factory=dict)  # `{tmp}` is the probe's folder


def real_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (width * 10, height * 10, 0)).save(buffer, "PNG")
    return buffer.getvalue()


def zip_with(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def mnist_cache_copy(folder: Path) -> Path:
    """A private copy of the MNIST cache under `folder` (the probe damages it)."""
    source = load_dataset("mnist").source  # fetches once into the shared cache if needed
    assert source
    from trustvision.data.cache import default_cache_dir

    copy = folder / "cache"
    shutil.copytree(default_cache_dir() / "mnist", copy / "mnist")
    return copy


def damage_meta(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        meta_path = mnist_cache_copy(folder) / "mnist" / "meta.json"
        meta = json.loads(meta_path.read_text())
        meta_path.write_text(json.dumps(edit(meta)))

    return setup


def flip_label_byte(folder: Path) -> None:
    labels = mnist_cache_copy(folder) / "mnist" / "test_labels.npy"
    data = bytearray(labels.read_bytes())
    data[-7] ^= 0x40
    labels.write_bytes(bytes(data))


def cut_classes(meta: dict) -> dict:
    meta["classes"] = meta["classes"][:5]
    return meta


def tiny_run(folder: Path) -> Path:
    """A finished one-epoch run under `folder/runs`, its summary removed (as if killed)."""
    result = RUNNER.invoke(app, ["train", TRAIN, *TINY_TRAIN, f"runs_dir={folder / 'runs'}"])
    assert result.exit_code == 0, result.output
    (run,) = (folder / "runs").iterdir()
    (run / "summary.json").unlink()
    return run


def damage_checkpoint(edit: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        run = tiny_run(folder)
        edit(run / "checkpoints" / "epoch-0001")
        (folder / "run").symlink_to(run)

    return setup


def pickle_with_matching_hash(checkpoint: Path) -> None:
    payload = pickle.dumps({"model": [1, 2, 3]})
    (checkpoint / "state.safetensors").write_bytes(payload)
    meta = json.loads((checkpoint / "state.json").read_text())
    meta["sha256"] = hashlib.sha256(payload).hexdigest()
    (checkpoint / "state.json").write_text(json.dumps(meta))


def write(name: str, data: bytes | str) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        path = folder / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())

    return setup


ALIAS_BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + "model: {name: mnist_cnn, kwargs: {x: *i}}\n"
)

PROBES: dict[str, Probe] = {
    "lr 1e6 diverges": Probe(
        ["train", TRAIN, *TINY_TRAIN, "optim.lr=1e6", "runs_dir={tmp}/runs"], 1, ["diverged"]
    ),
    "runs_dir under /proc": Probe(
        ["train", TRAIN, *TINY_TRAIN, "runs_dir=/proc/trustvision-x"],
        3,
        ["runs_dir=/proc/trustvision-x"],
    ),
    "cache under a file": Probe(
        ["data", "fetch", "mnist"],
        3,
        ["error: cannot write the cache at `{tmp}/file/cache/mnist`", "is not a folder"],
        setup=write("file", "not a folder"),
        env={"TRUSTVISION_DATA": "{tmp}/file/cache"},
    ),
    "meta.json without files": Probe(
        ["train", TRAIN, *TINY_TRAIN, "runs_dir={tmp}/runs"],
        2,
        ["{tmp}/cache/mnist/meta.json", "files"],
        setup=damage_meta(lambda m: {k: v for k, v in m.items() if k != "files"}),
        env={"TRUSTVISION_DATA": "{tmp}/cache"},
    ),
    "meta.json a list": Probe(
        ["train", TRAIN, *TINY_TRAIN, "runs_dir={tmp}/runs"],
        2,
        ["{tmp}/cache/mnist/meta.json"],
        setup=damage_meta(lambda m: [m]),
        env={"TRUSTVISION_DATA": "{tmp}/cache"},
    ),
    "one flipped byte in test_labels.npy": Probe(
        ["train", TRAIN, *TINY_TRAIN, "runs_dir={tmp}/runs"],
        2,
        ["{tmp}/cache/mnist/test_labels.npy", "SHA-256"],
        setup=flip_label_byte,
        env={"TRUSTVISION_DATA": "{tmp}/cache"},
    ),
    "classes cut short": Probe(
        ["train", TRAIN, *TINY_TRAIN, "runs_dir={tmp}/runs"],
        2,
        ["{tmp}/cache/mnist/meta.json", "5 classes"],
        setup=damage_meta(cut_classes),
        env={"TRUSTVISION_DATA": "{tmp}/cache"},
    ),
    "checkpoint state.json truncated": Probe(
        ["train", "--resume", "{tmp}/run"],
        2,
        ["state.json", "truncated or not JSON"],
        setup=damage_checkpoint(lambda c: (c / "state.json").write_text('{"format": "trust')),
    ),
    "checkpoint state.json a list": Probe(
        ["train", "--resume", "{tmp}/run"],
        2,
        ["state.json", "holds a list"],
        setup=damage_checkpoint(lambda c: (c / "state.json").write_text("[]")),
    ),
    "checkpoint state.json without tree": Probe(
        ["train", "--resume", "{tmp}/run", "--checkpoint", "epoch-0001"],
        2,
        ["state.json", "lacks tree"],
        setup=damage_checkpoint(
            lambda c: (c / "state.json").write_text(
                json.dumps(
                    {
                        k: v
                        for k, v in json.loads((c / "state.json").read_text()).items()
                        if k != "tree"
                    }
                )
            )
        ),
    ),
    "checkpoint tensors a pickle with a matching hash": Probe(
        ["train", "--resume", "{tmp}/run", "--checkpoint", "epoch-0001"],
        2,
        ["epoch-0001", "cannot be read as a checkpoint"],
        setup=damage_checkpoint(pickle_with_matching_hash),
    ),
    "resume from a checkpoint that does not exist": Probe(
        ["train", "--resume", "{tmp}/run", "--checkpoint", "epoch-0042"],
        2,
        ["no checkpoint `epoch-0042`", "epoch-0001"],
        setup=damage_checkpoint(lambda c: None),
    ),
    "seed=-1": Probe(["train", "seed=-1", "--print-config"], 2, ["`seed`"]),
    "optim.betas=[2,3]": Probe(
        ["train", "optim.betas=[2,3]", "--print-config"], 2, ["optim.betas"]
    ),
    "epochs=true": Probe(["train", "epochs=true", "--print-config"], 2, ["`epochs`", "boolean"]),
    "name=/tmp/x": Probe(["train", "name=/tmp/x", "--print-config"], 2, ["`name`"]),
    "name=../../x": Probe(["train", "name=../../x", "--print-config"], 2, ["`name`"]),
    "an unknown key": Probe(["train", "optim.lrr=0.1", "--print-config"], 2, ["optim.lrr"]),
    "an override without =": Probe(["train", TRAIN, "epochs"], 2, ["`epochs`", "key=value"]),
    "a YAML file of binary garbage": Probe(
        ["train", "{tmp}/garbage.yaml", "--print-config"],
        2,
        ["{tmp}/garbage.yaml"],
        setup=write("garbage.yaml", bytes(range(256)) * 4),
    ),
    "a YAML alias bomb": Probe(
        ["train", "{tmp}/bomb.yaml", "--print-config"],
        2,
        ["{tmp}/bomb.yaml", "alias"],
        setup=write("bomb.yaml", ALIAS_BOMB),
    ),
    "a 5 MB YAML file": Probe(
        ["train", "{tmp}/big.yaml", "--print-config"],
        2,
        ["{tmp}/big.yaml"],
        setup=write("big.yaml", "# padding\n" * 500_000),
    ),
    "models --num-classes 0": Probe(["models", "--num-classes", "0"], 2, ["--num-classes"]),
    "fed num_clients over the images": Probe(
        ["fed", "run", FED, "num_clients=20000", "runs_dir={tmp}/runs"], 2, ["num_clients=20000"]
    ),
    "fed fault for a client that does not exist": Probe(
        ["fed", "run", FED, "faults=[{client: 99, round: 1}]", "runs_dir={tmp}/runs"], 2, ["99"]
    ),
    "fed run without a config": Probe(["fed", "run"], 2, ["configs/fed/"]),
    "fed round that no client answers": Probe(
        ["fed", "run", *tiny_args("{tmp}/runs", "participation=1.0", "faults=" + ALL_FAIL)],
        4,
        ["round 1: 0 of 3 clients answered", "client 2: "],
    ),
    "fed runs_dir under /proc": Probe(
        ["fed", "run", FED, "runs_dir=/proc/trustvision-x"], 3, ["runs_dir=/proc/trustvision-x"]
    ),
    "robust train without a config": Probe(["robust", "train"], 2, ["configs/robust/"]),
    "compact train without a config": Probe(["compact", "train"], 2, ["configs/compact/"]),
    "sweep continued from a truncated sweep.json": Probe(
        [*SWEEP_RUN, "--continue-from", "{tmp}/sweep.json"],
        2,
        ["{tmp}/sweep.json", "is not a sweep.json"],
        setup=write("sweep.json", '{"trials": [{"number": 0, "sta'),
    ),
    "sweep continued from a folder": Probe(
        [*SWEEP_RUN, "--continue-from", "{tmp}"], 2, ["{tmp}", "is a directory"]
    ),
    "sweep continued from a file that is not there": Probe(
        [*SWEEP_RUN, "--continue-from", "{tmp}/gone.json"], 2, ["gone.json", "is not there"]
    ),
    "resume of a folder that is no run": Probe(
        ["train", "--resume", "{tmp}"], 2, ["{tmp}", "no config.yaml"]
    ),
    "a decompression-bomb PNG": Probe(
        ["data", "fetch", "image-folder", "--from", "{tmp}/bomb.zip"],
        2,
        ["bomb.png", "decompression bomb"],
        setup=lambda folder: zip_with(
            folder / "bomb.zip",
            {"train/a/bomb.png": png_header(20000, 20000), "test/a/ok.png": real_png(2, 2)},
        ),
        env={"TRUSTVISION_DATA": "{tmp}/cache"},
    ),
    "an archive member outside the archive": Probe(
        ["data", "fetch", "image-folder", "--from", "{tmp}/escape.zip"],
        2,
        ["../../evil.png", "outside the archive"],
        setup=lambda folder: zip_with(
            folder / "escape.zip",
            {"train/a/ok.png": real_png(2, 2), "../../evil.png": real_png(2, 2)},
        ),
        env={"TRUSTVISION_DATA": "{tmp}/cache"},
    ),
}


def snapshot(folder: Path) -> dict[str, int]:
    """Every file under `folder` with its size, but the run directories and the cache."""
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in folder.rglob("*")
        if p.is_file()
        and not {"runs", "cache"} & set(p.relative_to(folder).parts)
        and not p.is_symlink()
    }


def half_written(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".tmp") or p.suffix == ".tmp"]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", PROBES)
def test_a_hostile_input_is_one_clear_line_and_loses_nothing(name, tmp_path, monkeypatch):
    probe = PROBES[name]
    fill = lambda text: text.replace("{tmp}", str(tmp_path))  # noqa: E731
    if probe.setup is not None:
        probe.setup(tmp_path)
    for key, value in probe.env.items():
        monkeypatch.setenv(key, fill(value))
    before = snapshot(tmp_path)
    TALLY["tried"] += 1
    result = RUNNER.invoke(app, [fill(a) for a in probe.args])
    said = " ".join(result.output.split())
    if not isinstance(result.exception, SystemExit) or "Traceback" in result.output:
        TALLY["tracebacks"] += 1
        pytest.fail(f"{name}: not a clear error: {result.exception!r}\n{result.output}")
    if result.exit_code == 0:
        TALLY["silent"] += 1
    assert result.exit_code == probe.code, said
    usage_error = said.startswith("Usage:") and "Invalid value for" in said  # click's own
    assert said.startswith("error: ") or "\nerror: " in result.output or usage_error, said
    for text in probe.names:
        assert fill(text) in said, said
    assert snapshot(tmp_path) == before, "a file outside the run directory or cache changed"
    assert half_written(tmp_path) == []


def test_the_hint_for_images_of_two_sizes_can_be_followed(tmp_path, monkeypatch):
    TALLY["tried"] += 1
    monkeypatch.setenv("TRUSTVISION_DATA", str(tmp_path / "cache"))
    zip_with(
        tmp_path / "mixed.zip",
        {
            "train/a/x.png": real_png(4, 4),
            "train/a/y.png": real_png(6, 8),
            "test/a/z.png": real_png(4, 4),
        },
    )
    refused = RUNNER.invoke(
        app, ["data", "fetch", "image-folder", "--from", str(tmp_path / "mixed.zip")]
    )
    said = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "--image-size" in said, said
    hint = said.split("with `", 1)[1].split("`", 1)[0].replace("PATH", str(tmp_path / "mixed.zip"))
    followed = RUNNER.invoke(app, hint.split()[1:])  # the hint, as the user would type it
    assert followed.exit_code == 0, followed.output
    cfg = load_config(TrainConfig, None, ["data.name=image-folder", "data.image_size=4"])
    assert cfg.data.image_size == 4
