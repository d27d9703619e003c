"""Reap what a block starts, even when this process is killed with SIGKILL.

Ray ties its raylet and GCS to the driver's life, but not the raylet's own children: after a
`kill -9` of `trustvision fed run engine=flower`, `ray::DashboardAgent` and
`ray::RuntimeEnvAgent` live on as orphans (about 190 MB). No code of a killed process runs,
so a watchdog process does the cleaning: it notes the descendants this process starts in the
block every `POLL_SECONDS` and, when the pipe from this process closes (the block ended, or
the process died), kills those still alive. Neither Ray nor Flower offers this; psutil is not a
dependency, so the watchdog reads /proc (Linux; elsewhere the block runs without one).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

POLL_SECONDS = 0.5

WATCHDOG = r"""
import os, select, signal, sys

def table():
    kids = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as stream:
                    stat = stream.read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            kids.setdefault(int(fields[1]), []).append((int(name), fields[19]))
    return kids

def descendants(roots, kids):
    found, todo = {}, list(roots)
    while todo:
        for pid, start in kids.get(todo.pop(), []):
            if pid != os.getpid():
                found[pid] = start
                todo.append(pid)
    return found

parent, seen = int(sys.argv[1]), {}
before = descendants([parent], table())  # not started by the block: never touched
os.write(1, b"r")  # the block may begin: what it starts from now on is seen
while True:
    now = descendants([parent], table())
    seen.update((p, s) for p, s in now.items() if before.get(p) != s)
    ready, _, _ = select.select([0], [], [], float(sys.argv[2]))
    if ready and not os.read(0, 64):
        break
kids = table()
alive = {pid: start for family in kids.values() for pid, start in family}
live = [pid for pid, start in seen.items() if alive.get(pid) == start]
for pid, start in descendants(live, kids).items():  # started since the last look (the parent
    seen.setdefault(pid, start)  # itself is gone): under the processes seen
for pid, start in seen.items():
    if alive.get(pid) == start:  # the same process, not a new one with a reused pid
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""


@contextlib.contextmanager
def reaped_descendants() -> Iterator[None]:
    """Run the block with a watchdog that kills the processes it started once it ends or this
    process dies, however it dies."""
    if not Path("/proc/self/stat").is_file():
        yield
        return
    watchdog = subprocess.Popen(
        [sys.executable, "-c", WATCHDOG, str(os.getpid()), str(POLL_SECONDS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,  # a Ctrl-C to this process group must not stop it first
    )
    assert watchdog.stdout is not None
    watchdog.stdout.read(1)  # it has noted what ran before: a child started at once is seen
    try:
        yield
    finally:
        assert watchdog.stdin is not None
        watchdog.stdin.close()
        try:
            watchdog.wait(timeout=30)
        except subprocess.TimeoutExpired:
            watchdog.kill()
        watchdog.stdout.close()
