"""One trial: the command line, its environment, its run directory and its metrics as written."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trustvision.config import dump_yaml
from trustvision.errors import ConfigError
from trustvision.sweep.spec import ParamSpec, PruneSpec, SweepSpec

LOG_NAME = "log.txt"


def format_override(key: str, value: Any) -> str:
    """`key=value`, the value spelled so that the command reads it back unchanged (1e-05 too)."""
    text = dump_yaml([value], default_flow_style=True, width=1_000_000).strip()
    return f"{key}={text[1:-1]}"  # drop the list's brackets: `[1.0e-05]` -> `1.0e-05`


def trial_argv(
    *,
    command: str,
    config: Path,
    overrides: list[str],
    trial_dir: Path,
    resume: Path | None = None,
) -> list[str]:
    """The trial's command line: `trustvision COMMAND CONFIG OVERRIDES runs_dir=TRIAL_DIR`.

    With `resume`, the command continues that run directory (`--resume`) with its own config.
    """
    base = [sys.executable, "-m", "trustvision", *command.split()]
    if resume is not None:
        return [*base, "--resume", str(resume)]
    return [*base, str(config), *overrides, f"runs_dir={trial_dir}"]


def check_first_trial(spec: SweepSpec) -> None:
    """Ask the trials' command (`--print-config`) to load the config at one value of every
    searched key (`probe_value`): a misspelt key or a value it refuses stops the sweep before
    any trial, with the command's own message, instead of failing every trial."""
    values = {key: probe_value(param) for key, param in spec.params.items()}
    argv = trial_argv(
        command=spec.command,
        config=Path(spec.config).resolve(),
        overrides=[*spec.overrides, *(format_override(k, v) for k, v in values.items())],
        trial_dir=Path("runs"),
    )
    checked = subprocess.run(
        [*argv, "--print-config"], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if checked.returncode != 0:
        said = " ".join((checked.stderr or checked.stdout).split())
        raise ConfigError(
            f"`trustvision {spec.command}` refuses the trials' config (checked at "
            f"{', '.join(f'{k}={v}' for k, v in values.items())}): {said[-800:]}"
        )


def probe_value(param: ParamSpec) -> Any:
    """A value a searched key takes: its grid's or choices' first, an `int` range's low, and
    inside a float range a value that is no whole number (as the trials draw; an integer
    setting would take the low, 16.0, and refuse every trial's 42.34)."""
    if param.grid is not None:
        return param.grid[0]
    if param.choices is not None:
        return param.choices[0]
    assert param.low is not None and param.high is not None  # a range, by the spec's checks
    if param.integer:
        return int(param.low)
    if param.log:
        return math.exp(math.log(param.low) + 0.37 * math.log(param.high / param.low))
    return param.low + 0.37 * (param.high - param.low)


def child_env(jobs: int) -> dict[str, str]:
    """This process's environment with the cores shared out: `OMP_NUM_THREADS` = cores // jobs,
    unless the caller set it (e.g. to 1, to run two sweeps side by side)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (cores or 1) // jobs))
    return {
        **os.environ,
        "OMP_NUM_THREADS": threads,
        "PYTHONUNBUFFERED": "1",  # log.txt follows the run as it goes
    }


def find_run_dir(trial_dir: Path) -> Path | None:
    """The one directory under `trial_dir` holding a config.yaml, or None before it is made."""
    if not trial_dir.is_dir():
        return None
    runs = sorted(path.parent for path in trial_dir.glob("*/config.yaml"))
    if len(runs) > 1:
        raise ConfigError(
            f"`{trial_dir}` holds {len(runs)} run directories ({', '.join(p.name for p in runs)}): "
            "a trial writes one; remove the ones a sweep did not make"
        )
    return runs[0] if runs else None


def new_reports(text: str, *, metric: str, step: str, seen: set[int]) -> list[tuple[int, float]]:
    """(step, value) of the complete metrics.jsonl records in `text` with `metric`, not in `seen`.

    A last line without its newline is still being written and waits for the next poll; a
    record without `metric` (or with a non-number) is skipped.
    """
    found: list[tuple[int, float]] = []
    for record in complete_records(text):
        value: Any = record.get(metric)
        index = record.get(step)
        if not (_is_number(value) and isinstance(index, int)) or index in seen:
            continue
        if math.isfinite(value):
            found.append((index, float(value)))
            seen.add(index)
    return found


def complete_records(text: str) -> list[dict[str, Any]]:
    """The JSON records of metrics.jsonl `text`, one a line: a last line without its newline is
    still being written and is left out, as is a line that is no JSON object."""
    records = []
    for line in text.split("\n")[:-1]:  # the part after the last newline is incomplete
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


class MetricNotANumber(ConfigError):
    """The metric's path is there, but its value is no number (a diverged run writes null)."""


def check_prune_keys(prune: PruneSpec, metrics: Path) -> None:
    """A ConfigError when a finished trial's metrics.jsonl has records but none with both
    `prune.metric` and `prune.step`: a misspelt key would leave the pruner blind, silently."""
    text = metrics.read_text() if metrics.is_file() else ""
    keys = {key for record in complete_records(text) for key in record}
    if keys and not {prune.metric, prune.step} <= keys:
        listed = ", ".join(f"`{key}`" for key in sorted(keys))
        raise ConfigError(
            f"`prune.metric` `{prune.metric}` with `prune.step` `{prune.step}` is in no record "
            f"of `{metrics}`, whose keys are {listed}: the pruner would never see a value; fix "
            "`prune` in the spec and start a fresh sweep"
        )


def read_metric(summary: Mapping[str, Any], path: str, *, where: str) -> float:
    """The number at dotted `path` in a summary; a missing key names the keys that are there."""
    node: Any = summary
    parts = path.split(".")
    for depth, part in enumerate(parts):
        level = ".".join(parts[:depth]) or "the top level"
        if node is None:
            raise ConfigError(
                f"`{path}`: `{level}` in {where} is null: did the run hold out no validation "
                "images? (`data.validation` must be above 0 for a sweep to choose on it)"
            )
        if not isinstance(node, Mapping):
            raise ConfigError(f"`{path}`: `{level}` in {where} is a value, not a section")
        if part not in node:
            keys = ", ".join(f"`{key}`" for key in node) or "none"
            raise ConfigError(
                f"`{path}` is not in {where}: `{part}` is missing at {level}, whose keys are "
                f"{keys}; fix the metric path in the spec and start a fresh sweep"
            )
        node = node[part]
    if not _is_number(node):
        raise MetricNotANumber(f"`{path}` in {where} is {node!r}, not a number")
    return float(node)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def log_tail(path: Path, lines: int = 15) -> str:
    """The last `lines` lines of a log file (empty if there is none)."""
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def trial_marks(trial_dir: Path, resumed: Path | None) -> set[str]:
    """The arguments that tell a trial's command apart (`trial_argv`): its `runs_dir=`, or the
    run directory a retry continues with `--resume`."""
    marks = {f"runs_dir={trial_dir.resolve()}"}
    if resumed is not None:
        marks.add(str(resumed.resolve()))
    return marks


def signal_group(group: int, sig: int) -> None:
    """`sig` to a process group, then SIGCONT: a stopped group acts on a signal once woken."""
    os.killpg(group, sig)
    os.killpg(group, signal.SIGCONT)


def stop_orphan(pid: int, marks: set[str], *, grace_seconds: float = 10.0) -> bool:
    """End the process group of a trial a killed sweep left running (its leader `pid`, only
    if that process's arguments still hold one of the trial's `marks`); returns whether there
    was one."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False  # gone (or no /proc: nothing to check it against)
    if not marks & set(cmdline.split("\0")):
        return False  # the pid was reused by another program
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            signal_group(pid, sig)
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
    return True


def stop_process(proc: subprocess.Popen[bytes], *, grace_seconds: float = 10.0) -> None:
    """End a trial's command and what it started: SIGTERM, then SIGKILL after the grace (each
    with a SIGCONT, so a stopped command acts on it at once). A command that leads its own
    process group (a trial runs in its own session) is ended with its whole group, so no child
    of a pruned or interrupted trial outlives it."""
    if proc.poll() is not None:
        return
    group = proc.pid if os.getpgid(proc.pid) == proc.pid else None
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            if group is not None:
                signal_group(group, sig)
            else:
                proc.send_signal(sig)
                proc.send_signal(signal.SIGCONT)
        try:
            proc.wait(timeout=grace_seconds)
            break
        except subprocess.TimeoutExpired:
            continue
    if group is not None:  # children that stayed after their leader ended on SIGTERM
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
