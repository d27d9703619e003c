"""A Flower deployment on 127.0.0.1: one SuperLink, one SuperNode per client, runs by `flwr run`.

A process harness, not an engine: for tests, benchmarks and trying a deployment on one
machine; it submits the checkout's Flower app bundle (`deploy/flower-app`, see `app_dir`).
Every process starts in a session of its own; stopping signals that session and, by PID,
every process found under the ones started here (the SuperLink starts its SuperExec in a
session of its own, and that runs the ServerApps). It runs without TLS (`--insecure`) on the loopback interface only;
docs/deploy-flower.md describes a real deployment.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from trustvision.errors import FederationError
from trustvision.federated.reaper import reaped_descendants

APP = Path("deploy/flower-app")  # the Flower app bundle, from a checkout's root
BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode, flwr: this environment's
CONNECTION = "local"  # the SuperLink connection's name in FLWR_HOME/config.toml


def app_dir() -> Path:
    """The checkout's Flower app bundle: the first `deploy/flower-app` holding a pyproject.toml
    in a directory above this module (an editable install) or, failing that, in the working
    directory or one above it."""
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for root in (start, *start.parents):
            if (root / APP / "pyproject.toml").is_file():
                return root / APP
    raise FederationError(
        f"no `{APP}` (with its pyproject.toml) above {Path(__file__).parent} or the working "
        "directory: run from a trustvision checkout, or pass the app's directory as `app`"
    )


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports free on 127.0.0.1 right now."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def process_tree(*roots: int) -> list[int]:
    """`roots` and every live descendant of theirs, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat_fields(int(entry))):
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...); [] if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def start_time(pid: int) -> str | None:
    """When `pid` started (clock ticks after boot), or None if it is gone or a zombie.

    With the PID it names one process, even once the PID is used again.
    """
    fields = stat_fields(pid)
    return fields[19] if fields and fields[0] != "Z" else None


class LocalDeployment:
    """Start with `with LocalDeployment(workdir, num_nodes=3) as flower:`; stopped on exit."""

    def __init__(self, workdir: Path, *, num_nodes: int, threads_per_node: int = 1) -> None:
        self.workdir = Path(workdir)
        self.num_nodes = num_nodes
        self.processes: list[subprocess.Popen[bytes]] = []
        self.reaper = contextlib.ExitStack()
        self.seen: dict[int, str] = {}  # PID -> start time of every process found under them
        self.link_port, *self.node_ports = free_ports(num_nodes + 1)
        home = self.workdir / "flwr-home"
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # Flower spawns its helpers
            "FLWR_HOME": str(home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # nothing is pip-installed
            "OMP_NUM_THREADS": str(threads_per_node),
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",  # seconds; Flower's default is 1
        }

    def __enter__(self) -> LocalDeployment:
        # a watchdog ends what was started here if this process is killed (no `stop` then):
        # each SuperLink and SuperNode runs in a session of its own, so nothing else would
        self.reaper.enter_context(reaped_descendants())
        try:
            self.start()
        except BaseException:
            self.stop()
            self.reaper.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            self.reaper.close()

    def start(self, *, timeout: float = 60.0) -> None:
        """Start the SuperLink, wait until it listens, then one SuperNode per partition."""
        home = Path(self.env["FLWR_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.link_port}"\ninsecure = true\n'
        )
        link = self._spawn(
            "superlink",
            "flower-superlink",
            "--insecure",
            "--host=127.0.0.1",
            f"--port={self.link_port}",
            "--disable-runtime-dependency-installation",
        )
        self._wait_for(self.link_port, link, timeout=timeout)
        for k, port in enumerate(self.node_ports):
            self._spawn(
                f"supernode-{k}",
                "flower-supernode",
                "--insecure",
                f"--superlink=127.0.0.1:{self.link_port}",
                "--host=127.0.0.1",
                f"--port={port}",
                f"--node-config=partition-id={k} num-partitions={self.num_nodes}",
            )

    def submit(self, config: Path, *, overrides: str = "", app: Path | None = None) -> str:
        """`flwr run` the app (default: the checkout's, `app_dir()`) with the run's YAML at
        `config`; returns what flwr printed."""
        app = app_dir() if app is None else app
        run_config = f'config="{Path(config).resolve()}" overrides="{overrides}"'
        done = subprocess.run(
            [str(BIN / "flwr"), "run", str(app), CONNECTION, "--run-config", run_config],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise FederationError(f"`flwr run` failed: {done.stdout}{done.stderr}")
        return done.stdout

    def wait_for_summary(self, runs_dir: Path, *, timeout: float) -> Path:
        """The run directory under `runs_dir` once its summary.json exists."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = sorted(Path(runs_dir).glob("*/summary.json"))
            if done:
                return done[0].parent
            if self.processes[0].poll() is not None:
                raise FederationError(f"the SuperLink exited: see {self.log('superlink')}")
            time.sleep(0.5)
        raise FederationError(f"no run finished in {timeout} s: see {self.log('superlink')}")

    def log(self, name: str) -> Path:
        """Where the process `name` (`superlink`, `supernode-K`) writes its output."""
        return self.workdir / f"{name}.log"

    def alive(self) -> list[int]:
        """PIDs of the live processes started here or found under them, in any session."""
        for proc in self.processes:
            self.seen.setdefault(proc.pid, start_time(proc.pid) or "")
        live = [pid for pid, started in self.seen.items() if started and start_time(pid) == started]
        for pid in process_tree(*live):
            self.seen.setdefault(pid, start_time(pid) or "")
        return [pid for pid, started in self.seen.items() if started and start_time(pid) == started]

    def stop(self) -> None:
        """SIGTERM every process started here (its group too) and under it, then SIGKILL."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.alive()  # before any signal: a dying parent's children move to init
            for proc in self.processes:
                if proc.returncode is None:  # not reaped: its PID still names its group
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, sig)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while self.alive() and time.monotonic() < deadline:
                for proc in self.processes:
                    proc.poll()  # reap the leaders we started
                time.sleep(0.1)
        for proc in self.processes:
            proc.wait()

    def _spawn(self, name: str, *command: str) -> subprocess.Popen[bytes]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log(name).open("wb") as out:
            proc = subprocess.Popen(
                [str(BIN / command[0]), *command[1:]],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # its own process group, with the PID as its id
            )
        self.processes.append(proc)
        return proc

    def _wait_for(self, port: int, proc: subprocess.Popen[bytes], *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise FederationError(f"the process on port {port} exited: see {self.workdir}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise FederationError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")
