"""Killing a training process the moment a checkpoint appears, as a crash would (the resume
tests of the centralised, distributed and federated runs share it)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def kill_at(proc: subprocess.Popen, runs: Path, pattern: str, *, group: bool = False) -> None:
    """SIGKILL `proc` (its whole process group with `group`) once `runs.glob(pattern)` finds a
    file; fails if the process ends first or nothing appears within two minutes."""

    def kill() -> None:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()

    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if list(runs.glob(pattern)):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            kill()
