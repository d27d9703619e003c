"""What a killed process leaves behind: a Flower simulation (Ray) or a local deployment
(SuperLink, SuperNodes) whose process gets SIGKILL, when no cleanup code of its can run."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fed_tiny
import pytest

from trustvision.federated.reaper import POLL_SECONDS


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process, from /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            table[int(name)] = (int(fields[1]), fields[0])
    return table


def descendants(root: int) -> set[int]:
    table, found, todo = process_table(), set(), [root]
    while todo:
        parent = todo.pop()
        kids = [pid for pid, (ppid, _) in table.items() if ppid == parent]
        found.update(kids)
        todo += kids
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc (Linux)")
def test_a_simulation_killed_with_sigkill_leaves_no_ray_process_behind(tmp_path):
    args = [sys.executable, "-m", "trustvision", "fed", "run", "engine=flower", "rounds=50"]
    log = tmp_path / "log.txt"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*args, *fed_tiny.tiny_args(tmp_path / "runs")], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 180
        while "round 1 " not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        ray = descendants(proc.pid)
        assert len(ray) >= 3  # the raylet, the GCS, the agents, the workers
        killed_leaves_none(proc, ray, seconds=10)  # Ray's orphaned agents would, unreaped
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc (Linux)")
def test_a_deployment_whose_process_is_killed_leaves_no_flower_process_behind(tmp_path):
    """Each SuperLink and SuperNode runs in a session of its own, and a SIGKILL runs no `stop`:
    the harness's watchdog ends them."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from trustvision.federated.flower_harness import LocalDeployment\n"
        "with LocalDeployment(Path(sys.argv[1]), num_nodes=1):\n"
        "    print('up', flush=True)\n"
        "    time.sleep(300)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "flower")], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        time.sleep(3 * POLL_SECONDS)  # the watchdog notes new processes every POLL_SECONDS
        started = descendants(proc.pid)
        assert len(started) >= 2  # the SuperLink and the SuperNode, at least
        killed_leaves_none(proc, started, seconds=15)
    finally:
        if proc.poll() is None:
            proc.kill()


def killed_leaves_none(proc: subprocess.Popen, started: set[int], *, seconds: float) -> None:
    """SIGKILL `proc`; within `seconds` none of the processes it `started` may still run."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + seconds
    while left := [p for p in started if process_table().get(p, (0, "Z"))[1] != "Z"]:
        assert time.monotonic() < deadline, f"still running after a SIGKILL: {left}"
        time.sleep(0.2)


# Starts a child that, once `go` exists, starts a grandchild (in a session of its own, as
# Flower's SuperNodes start their SuperExecs) and writes its PID.
SPAWNER = (
    "import pathlib, subprocess, sys, time\n"
    "work = pathlib.Path(sys.argv[1])\n"
    "while not (work / 'go').exists():\n"
    "    time.sleep(0.01)\n"
    "late = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
    "(work / 'late.pid').write_text(str(late.pid))\n"
    "time.sleep(300)\n"
)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc (Linux)")
def test_a_process_started_after_the_watchdogs_last_look_is_reaped_too(tmp_path):
    """The parent dies moments after a process it reaped starts a child: the watchdog has not
    seen that child yet, and looks once more under the processes it did see."""
    script = (
        "import subprocess, sys, time\n"
        "from trustvision.federated.reaper import reaped_descendants\n"
        "with reaped_descendants():\n"
        f"    subprocess.Popen([sys.executable, '-c', {SPAWNER!r}, sys.argv[1]])\n"
        "    print('up', flush=True)\n"
        "    time.sleep(300)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        time.sleep(3 * POLL_SECONDS)  # the watchdog has seen the spawner
        started = descendants(proc.pid)
        (tmp_path / "go").touch()
        deadline = time.monotonic() + 30
        while not (tmp_path / "late.pid").exists() or not (tmp_path / "late.pid").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.005)
        late = int((tmp_path / "late.pid").read_text())
        killed_leaves_none(proc, {late, *started}, seconds=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in descendants(proc.pid) | late_pid(tmp_path):  # a failed test leaves none
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def late_pid(work: Path) -> set[int]:
    """The grandchild the spawner started, if it did."""
    text = (work / "late.pid").read_text() if (work / "late.pid").exists() else ""
    return {int(text)} if text else set()
