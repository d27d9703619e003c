"""How the benchmark scripts run their trainings in parallel, and how Ctrl-C stops them.

Every child runs in a process group of its own, so a Ctrl-C typed at the terminal reaches
the script alone, as a SIGINT sent to it alone does. The script then drops the work not
begun, passes the SIGINT on to each running `trustvision` command exactly once and waits for
it to clean up (a sweep stops its trials as retries and writes its report; a training stops,
to resume from its last checkpoint). Pool workers, which run Python functions, are ended
instead, as a kill would end them.

Our own because the standard executors do neither: on Ctrl-C a ThreadPoolExecutor waits for
every queued call, and a ProcessPoolExecutor runs the job it already queued to a worker.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from common import ROOT

Result = TypeVar("Result")


class Children:
    """The commands `run` is running, so that `interrupt` reaches each of them once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[subprocess.Popen[bytes]] = set()
        self._stopping = False

    def run(self, command: list[str], *, env: dict[str, str]) -> int:
        """Run a command in the checkout (output discarded, errors shown) to its end; its exit
        status. Refused with KeyboardInterrupt once `interrupt` has been called."""
        with self._lock:
            if self._stopping:
                raise KeyboardInterrupt  # its turn came after Ctrl-C: never started
            child = subprocess.Popen(
                command, env=env, stdout=subprocess.DEVNULL, cwd=ROOT, process_group=0
            )
            self._live.add(child)
        try:
            return child.wait()
        finally:
            with self._lock:
                self._live.discard(child)

    def interrupt(self) -> None:
        """Refuse new commands, pass SIGINT on to the running ones and wait for them."""
        with self._lock:
            self._stopping = True
            live = list(self._live)
        for child in live:
            child.send_signal(signal.SIGINT)
        for child in live:
            child.wait()

    def resume(self) -> None:
        """Accept commands again (a new batch of calls in the same process)."""
        with self._lock:
            self._stopping = False


CHILDREN = Children()


def run_child(command: list[str], *, env: dict[str, str]) -> int:
    """`Children.run` on the children `run_in_parallel` stops on Ctrl-C."""
    return CHILDREN.run(command, env=env)


def run_in_parallel(calls: list[Callable[[], Result]], *, workers: int) -> list[Result]:
    """What `calls` return, made in order, `workers` at once (a failed call raises once the
    calls before it are done; the others still run). On Ctrl-C the calls not begun are
    dropped, a call still preparing its command never starts it, and every command running
    under `run_child` is passed the SIGINT and awaited."""
    CHILDREN.resume()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            futures = [pool.submit(call) for call in calls]
            return [future.result() for future in futures]
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            CHILDREN.interrupt()
            raise


@contextmanager
def process_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """`workers` spawned processes, each in a process group of its own, for a benchmark's
    trainings. On Ctrl-C the workers are ended at once, with the jobs queued to them."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=os.setpgrp
    ) as pool:
        try:
            yield pool
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            for worker in multiprocessing.active_children():
                worker.terminate()
            raise
