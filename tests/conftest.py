"""Fixtures shared by several test modules, and what `make test` needs of pytest-xdist."""

import os

import hostile_tally
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


# `make test` runs the suite in pytest-xdist workers: each gets its share of the cores, so
# that N workers do not each start one torch thread per core, and so do the processes a test
# starts (a killed run resumed here must compute with the thread count it started with).
if workers := os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    share = max(1, (os.cpu_count() or 1) // int(workers))
    os.environ.setdefault("OMP_NUM_THREADS", str(share))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_sessionfinish(session):
    """An xdist worker hands its share of the hostile-input tally to the controller."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["hostile_tally"] = dict(hostile_tally.TALLY)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """The controller adds up the workers' tallies (an xdist hook; absent without xdist)."""
    for key, count in getattr(node, "workeroutput", {}).get("hostile_tally", {}).items():
        hostile_tally.TALLY[key] += count


def pytest_terminal_summary(terminalreporter):
    """The hostile-input suite's tally (tests/test_hostile*.py), when it ran."""
    if hostile_tally.TALLY["tried"]:
        terminalreporter.write_line(hostile_tally.tally_line())
