"""The run directory, one format for every system.

runs/<name>-<YYYYmmdd-HHMMSS>/
    config.yaml      the resolved config, every default written out
    metrics.jsonl    one JSON record per epoch (or round)
    summary.json     final numbers, seed, versions, git commit, wall time, status
    plots/*.png      curves and per-class charts
    checkpoints/     safetensors + JSON, for --resume
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ValidationError

import trustvision
from trustvision import distributed
from trustvision.config import dump_config, flatten
from trustvision.errors import ConfigError, environment_failure
from trustvision.files import read_json_object, write_atomic
from trustvision.tracking import Tracker, start_tracking

# What `RunDir.open_or_create` does with a directory that holds a run of a different config.
# "refuse": an error naming the keys that differ (training: its checkpoints were made under the
# old config, so continuing would mix two runs). "update": the new config replaces the old one
# (evaluation: every saved part carries its own signature and only matching parts are reused).
ConfigPolicy = Literal["refuse", "update"]
# Settings a resume may change: how fast a run goes and where it reports, not what it is (another
# thread count does change the numbers' last digits; the checkpoint's restore warns of that).
SPEED_ONLY = frozenset({"threads", "runs_dir", "tracking"})
LOCK_FILE = ".lock"
# The run directories this process trains in, each held through a lock on its LOCK_FILE that
# the kernel drops when the process dies, until the run's summary is written: a second process
# (the same `--resume` started twice) is refused instead of writing the same checkpoints.
_HELD: dict[Path, IO[str]] = {}


@atexit.register
def _let_go() -> None:
    """Close the locks of runs that end with the process unsummarised (a failed run)."""
    for handle in _HELD.values():
        handle.close()
    _HELD.clear()


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


def strict_json(value: Any, *, indent: int | None = None) -> str:
    """JSON that strict readers accept: a NaN or infinite number (e.g. the accuracy of a class
    group with no class in it) is written as null, not as the bare token `NaN`."""
    return json.dumps(_finite_or_none(value), indent=indent, allow_nan=False)


class RunDir:
    """Paths and writers of one run directory; one opened by `create` or `open_or_create`
    is mirrored in MLflow as it is written (tracking.py)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tracker: Tracker | None = None
        self.metric_prefix = ""  # a part's metrics, in its whole run's MLflow run (`part`)
        self.owns_tracker = True  # whether its summary ends the MLflow run

    def part(self, name: str) -> RunDir:
        """A sub-directory with a run's files of its own (a stage of a compact run), whose
        metrics go to this run's MLflow run as `<name>/<metric>`."""
        sub = RunDir(self.path / name)
        sub.tracker, sub.metric_prefix, sub.owns_tracker = self.tracker, f"{name}/", False
        return sub

    @classmethod
    def create(cls, *, root: str | Path, name: str, config: BaseModel) -> RunDir:
        """Make a fresh `root/<name>-<time>/` and write the resolved config into it."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(root) / f"{name}-{stamp}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = Path(root) / f"{name}-{stamp}-{suffix}"
        run = cls(path)
        try:
            run.plots_dir.mkdir(parents=True)
            run.checkpoints_dir.mkdir()
            run.hold()
            write_atomic(run.config_path, dump_config(config))
        except OSError as err:
            doing = f"creating a run directory under `runs_dir={root}`"
            raise environment_failure(err, doing=doing) from err
        run.tracker = start_tracking(run.path, config)
        return run

    @classmethod
    def open_or_create(
        cls,
        path: str | Path | None,
        *,
        root: str | Path,
        name: str,
        config: BaseModel,
        resume_hint: str = "",
        policy: ConfigPolicy = "refuse",
    ) -> tuple[RunDir, bool]:
        """A fresh `root/<name>-<time>/` (no `path`), or the run directory at `path`: created if
        it is new, continued if it holds a run of the same config. Returns the run and whether
        it existed. A run of a different config is refused or updated as `policy` says; the
        refusal names `resume_hint`, the command that continues a run with its own config.

        Under torchrun every rank but 0 gets a private copy of the directory as it was before
        rank 0 touched it (distributed.py), so only rank 0 writes the real one."""
        private = None
        if distributed.active():
            distributed.check_same_run_dir(None if path is None else Path(path))
            if not distributed.is_main():
                private = distributed.private_run_dir(None if path is None else Path(path))
            distributed.barrier()
        if private is not None:
            return cls._open_or_create(private, config, resume_hint, policy, track=False)
        if path is None:
            return cls.create(root=root, name=name, config=config), False
        return cls._open_or_create(Path(path), config, resume_hint, policy, track=True)

    @classmethod
    def _open_or_create(
        cls, path: Path, config: BaseModel, resume_hint: str, policy: ConfigPolicy, *, track: bool
    ) -> tuple[RunDir, bool]:
        run = cls(path)
        existed = run.config_path.is_file()
        if existed and policy == "refuse":
            differing = run.config_differences(config)
            if differing:
                resume = f"continue it with `{resume_hint} {run.path}` (its own config) or " * bool(
                    resume_hint
                )
                raise ConfigError(
                    f"`{run.path}` holds a run of a different config ({', '.join(differing)} "
                    f"differ): {resume}choose another directory"
                )
        run.plots_dir.mkdir(parents=True, exist_ok=True)
        run.checkpoints_dir.mkdir(exist_ok=True)
        run.hold()
        if not existed or policy == "update":
            write_atomic(run.config_path, dump_config(config))
        if track:
            run.tracker = start_tracking(run.path, config)
        return run, existed

    def config_differences(self, config: BaseModel) -> list[str]:
        """The keys (dotted, as overrides name them) whose value in this run's config.yaml
        differs from `config`'s; settings in `SPEED_ONLY` are ignored. The saved config is
        read through `config`'s model first, so a key added since with its default is no
        difference; a saved config that no longer loads differs in every key."""
        try:
            saved = yaml.safe_load(self.config_path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise ConfigError(f"`{self.config_path}` cannot be read: {err}") from err
        if not isinstance(saved, dict):
            raise ConfigError(f"`{self.config_path}` is not a config (a YAML mapping)")
        with contextlib.suppress(ValidationError):
            saved = type(config).model_validate(saved).model_dump(mode="json")
        old, new = flatten(saved), flatten(config.model_dump(mode="json"))
        return [
            key
            for key in sorted(old.keys() | new.keys())
            if key.split(".")[0] not in SPEED_ONLY and old.get(key) != new.get(key)
        ]

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run directory (to resume or evaluate it)."""
        run = cls(path)
        if not run.config_path.is_file():
            raise ConfigError(f"`{path}` is not a run directory: it has no config.yaml")
        return run

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    def log(self, record: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl (and to MLflow, at its epoch or round)."""
        with self.metrics_path.open("a") as stream:
            stream.write(strict_json(record) + "\n")
        if self.tracker is not None:
            step = int(record.get("epoch", record.get("round", 0)))
            self.tracker.metrics(record, step=step, prefix=self.metric_prefix)

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

    def rewind(self, records: list[dict[str, Any]]) -> None:
        """Take the run back to a checkpoint: metrics.jsonl becomes the history saved with it,
        and a summary of the run's earlier end, which no longer describes it, goes."""
        write_atomic(self.metrics_path, "".join(strict_json(r) + "\n" for r in records))
        self.summary_path.unlink(missing_ok=True)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write summary.json, the last file of a run; a tracked run ends its MLflow run, and
        the directory is no longer held."""
        write_atomic(self.summary_path, strict_json(summary, indent=2) + "\n")
        if self.tracker is not None and self.owns_tracker:
            self.tracker.finish(summary)
            self.tracker = None
        handle = _HELD.pop(self.path.resolve(), None)
        if handle is not None:
            handle.close()

    def hold(self) -> None:
        """Hold this directory for this process (again: a no-op) until the summary is written;
        a ConfigError if another process holds it."""
        key = self.path.resolve()
        if key in _HELD:
            return
        try:
            handle = (self.path / LOCK_FILE).open("w")
        except OSError as err:
            raise environment_failure(
                err, doing=f"holding the run directory `{self.path}`"
            ) from err
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ConfigError(
                f"`{self.path}` is in use: another process is training this run (the same "
                "command started twice?); wait for it to end, or stop it first"
            ) from None
        _HELD[key] = handle

    def read_summary(self) -> dict[str, Any]:
        """summary.json's record ({} before the run ends); a damaged one is a ConfigError."""
        if not self.summary_path.is_file():
            return {}
        summary = read_json_object(self.summary_path)
        if summary is None:
            raise ConfigError(
                f"`{self.path}` holds a damaged summary.json (no JSON object): delete "
                f"`{self.summary_path}` and resume the run with `--resume` (it goes on from its "
                "checkpoints), or run it again"
            )
        return summary

    @property
    def finished(self) -> bool:
        """Whether the run's summary says it finished (the one test every system uses)."""
        return self.summary_path.is_file() and self.read_summary().get("status") == "finished"


@contextlib.contextmanager
def held_alone(folder: Path, *, refusal: str) -> Iterator[None]:
    """Hold `folder` for this process only, through a lock on `folder/.lock` that the kernel
    drops when the process dies; another holder gets a ConfigError saying `refusal`."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / LOCK_FILE).open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(refusal) from None
        yield


@contextlib.contextmanager
def held_in_turn(folder: Path) -> Iterator[None]:
    """Hold `folder` for this process only, as `held_alone` does, but wait while another
    process holds it: for short work that each process must do, one at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / LOCK_FILE).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def git_commit() -> str | None:
    """The commit of the source tree trustvision is imported from, if it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(trustvision.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def cpu_name() -> str:
    """The processor's model name (Linux), or the architecture elsewhere."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_summary() -> str:
    """Processor, core count and GPU of this machine, for the heading of a benchmark report."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu_name()}, {os.cpu_count()} cores, {gpu}"


def environment_info(device: torch.device) -> dict[str, Any]:
    """Versions and machine facts that make a number reproducible."""
    info: dict[str, Any] = {
        "trustvision": trustvision.__version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.machine()}",
        "processes": distributed.world_size(),  # torchrun's data-parallel processes
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
