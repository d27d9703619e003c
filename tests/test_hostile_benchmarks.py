"""Hostile inputs to the benchmark scripts: a bad value or a folder they cannot use ends as the
CLI's commands end (common.run_script), one red line and the README's exit code, counted in the
same tally as tests/test_hostile.py's probes."""

from __future__ import annotations

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


def test_ctrl_c_reaches_every_running_child_and_drops_the_calls_not_begun(tmp_path):
    common = benchmark("common")
    # Stands in for `sweep run` or `fed run`: says it began, and on SIGINT says so and exits as it does.
    stand_in = (
        "import pathlib, signal, sys, time\n"
        "mark = pathlib.Path(sys.argv[1])\n"
        "def stop(*_):\n"
        "    mark.write_text('stopped')\n"
        "    sys.exit(130)\n"
        "signal.signal(signal.SIGINT, stop)\n"
        "mark.write_text('began')\n"
        "time.sleep(60)\n"
    )
    marks = [tmp_path / name for name in ("a", "b", "c")]
    calls = [
        partial(common.run_child, [sys.executable, "-c", stand_in, str(m)], env=dict(os.environ))
        for m in marks
    ]

    def ctrl_c_once_two_run() -> None:
        deadline = time.monotonic() + 30
        while not all(m.exists() for m in marks[:2]) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)  # to this process alone, not its children

    threading.Thread(target=ctrl_c_once_two_run, daemon=True).start()
    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        common.run_in_parallel(calls, workers=2)
    assert time.monotonic() - began < 30  # not the stand-ins' 60 s
    assert [m.read_text() for m in marks[:2]] == ["stopped", "stopped"]
    assert not marks[2].exists()  # not begun: dropped
    assert not common.LIVE_CHILDREN


def test_ctrl_c_interrupts_a_process_pool_and_drops_its_queued_jobs():
    common = benchmark("common")
    with pytest.raises(KeyboardInterrupt), common.process_pool(2) as pool:
        assert [f.result() for f in [pool.submit(abs, -1) for _ in range(2)]] == [1, 1]  # up
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
        began = time.monotonic()
        futures = [pool.submit(time.sleep, 60) for _ in range(3)]  # two run, one waits
        for future in futures:
            future.result()
    assert time.monotonic() - began < 30  # neither the running jobs' 60 s nor the queued one's
    assert not any(f.done() and f.exception() is None for f in futures)
