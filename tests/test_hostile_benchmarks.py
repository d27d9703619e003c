"""Hostile inputs to the benchmark scripts: a bad value or a folder they cannot use ends as the
CLI's commands end (common.run_script), one red line and the README's exit code, counted in the
same tally as tests/test_hostile.py's probes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest
from benchmark_scripts import benchmark
from hostile_tally import TALLY

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize(
    ("extra", "code", "names"),
    [
        (["standard.epochs=abc"], 2, ["standard.epochs"]),  # a bad config value
        (["--work", "{tmp}/a-file"], 3, ["{tmp}/a-file/mnist", "Not a directory"]),
    ],
)
def test_a_benchmark_script_fails_as_the_cli_does(extra, code, names, tmp_path):
    """A benchmark script given a bad value or a folder it cannot use ends with the CLI's one red
    line and exit code (common.run_script), not a traceback, and writes no result."""
    TALLY["tried"] += 1
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "results"
    fill = lambda text: text.replace("{tmp}", str(tmp_path))  # noqa: E731
    argv = ["--datasets", "mnist", "--subset", "10", "--out", str(out), "--work", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/robust.py"), *argv, *map(fill, extra)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "4000", "TRUSTVISION_TRACKING": "off"},
        timeout=120,
    )
    if "Traceback" in result.stderr:
        TALLY["tracebacks"] += 1
        pytest.fail(result.stderr)
    assert result.returncode == code, result.stderr
    said = " ".join(result.stderr.split())
    assert said.startswith("error: "), said
    for text in names:
        assert fill(text) in said, said
    assert not out.exists()


def test_ctrl_c_ends_a_benchmark_script_with_one_line_and_status_130(capsys):
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stopped:
        benchmark("common").run_script(interrupted)
    assert stopped.value.code == 130
    assert "interrupted" in capsys.readouterr().err


# Stands in for `sweep run` or `fed run`: says it began, and on SIGINT says so and exits as
# they do.
STAND_IN = """
import pathlib, signal, sys, time
mark = pathlib.Path(sys.argv[1])
def stop(*_):
    mark.write_text("stopped")
    sys.exit(130)
signal.signal(signal.SIGINT, stop)
mark.write_text("began")
time.sleep(60)
"""


def wait_for_marks(marks: list[Path], text: str) -> None:
    """Until every mark reads `text` (a file that exists may not be written yet)."""
    deadline = time.monotonic() + 30
    while not all(m.exists() and m.read_text() == text for m in marks):
        assert time.monotonic() < deadline, [m.exists() and m.read_text() for m in marks]
        time.sleep(0.05)


def ctrl_c_once(marks: list[Path]) -> None:
    """SIGINT to this process alone once every mark says "began" (the children are running)."""
    wait_for_marks(marks, "began")
    os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_reaches_every_running_child_once_and_starts_nothing_more(tmp_path):
    processes = benchmark("processes")
    marks = [tmp_path / name for name in ("a", "b", "late", "queued")]
    stand_in = [[sys.executable, "-c", STAND_IN, str(m)] for m in marks]

    def late() -> int:  # still preparing its command when Ctrl-C comes
        wait_for_marks(marks[:2], "stopped")
        return processes.run_child(stand_in[2], env=dict(os.environ))

    calls = [partial(processes.run_child, argv, env=dict(os.environ)) for argv in stand_in]
    calls[2] = late
    threading.Thread(target=ctrl_c_once, args=(marks[:2],), daemon=True).start()
    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        processes.run_in_parallel(calls, workers=3)
    assert time.monotonic() - began < 30  # not the stand-ins' 60 s
    assert [m.read_text() for m in marks[:2]] == ["stopped", "stopped"]
    assert not marks[2].exists()  # refused: its turn came after Ctrl-C
    assert not marks[3].exists()  # never begun: dropped
    assert processes.run_in_parallel([lambda: 7], workers=1) == [7]  # a new batch runs


def test_ctrl_c_ends_a_process_pool_with_the_job_queued_to_it(tmp_path):
    processes = benchmark("processes")
    queued = tmp_path / "queued"
    with pytest.raises(KeyboardInterrupt), processes.process_pool(2) as pool:
        assert [f.result() for f in [pool.submit(abs, -1) for _ in range(2)]] == [1, 1]  # up
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
        began = time.monotonic()
        # two run; the third is queued to a worker at once, where it would run next
        futures = [pool.submit(time.sleep, 60) for _ in range(2)]
        futures.append(pool.submit(os.mkdir, queued))
        for future in futures:
            future.result()
    assert time.monotonic() - began < 30  # not the running jobs' 60 s
    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not multiprocessing.active_children()
    assert not queued.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_a_benchmark_script_as_ctrl_c_does(sig):
    script = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
        "from common import run_script\n"
        "def main():\n"
        "    print('up', flush=True)\n"
        "    time.sleep(60)\n"
        "run_script(main)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "interrupted" in err and "Traceback" not in err
