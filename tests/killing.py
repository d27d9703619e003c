"""Killing a training process the moment a checkpoint appears, as a crash would (the resume
tests of the centralised, distributed and federated runs share it)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from trustvision.federated.flower_harness import process_tree, start_time


def kill_at(proc: subprocess.Popen, runs: Path, pattern: str, *, tree: bool = False) -> None:
    """SIGKILL `proc` (with `tree`, it and every descendant) once `runs.glob(pattern)` finds a
    file, and wait until they are gone; fails if the process ends first or nothing appears
    within two minutes. torchrun starts its workers in sessions of their own: killing its
    process group leaves them training, and they finish the run the test meant to resume."""

    def kill() -> None:
        pids = process_tree(proc.pid) if tree else [proc.pid]
        started = {pid: start_time(pid) for pid in pids[1:]}  # a reused PID is another process
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while any(start_time(pid) == begun for pid, begun in started.items() if begun):
            assert time.monotonic() < deadline, f"still running after SIGKILL: {pids}"
            time.sleep(0.05)

    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if list(runs.glob(pattern)):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        kill()
    finally:
        if proc.poll() is None:
            kill()


def kept_by_resume(run_dir: Path, checkpoint: Path) -> list[str]:
    """What a resume from `checkpoint` (epoch-NNNN, round-NNNNN) must leave as it is: the
    metrics.jsonl lines of the epochs or rounds it holds, timings and all (a run started over
    would write new ones)."""
    done = int(checkpoint.name.rsplit("-", 1)[1])
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()[:done]
    assert len(lines) == done, f"metrics.jsonl has fewer lines than {checkpoint.name}"
    return lines
