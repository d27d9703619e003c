"""Hostile inputs to the benchmark scripts: a bad value or a folder they cannot use ends as the
CLI's commands end (common.run_script), one red line and the README's exit code, counted in the
same tally as tests/test_hostile.py's probes."""

from __future__ import annotations

import os
import subprocess
import sys
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
