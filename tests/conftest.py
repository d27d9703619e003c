"""Fixtures shared by several test modules."""

import os
import sys

import pytest
import torch

# MLflow tracking (tracking.py) costs seconds per new store: off unless a test turns it on
# (tests/test_tracking.py); subprocesses the tests start inherit it.
os.environ.setdefault("TRUSTVISION_TRACKING", "off")


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors on a shared machine: one thread is many times faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_terminal_summary(terminalreporter):
    """The hostile-input suite's tally (tests/test_hostile*.py), when it ran."""
    tally = sys.modules.get("hostile_tally")
    if tally is not None and tally.TALLY["tried"]:
        terminalreporter.write_line(tally.tally_line())
