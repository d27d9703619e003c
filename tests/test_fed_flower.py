"""The Flower engine: the same numbers as the in-process engine, tensors over ArrayRecords,
failed clients tolerated down to `min_clients`, and a real SuperLink with three SuperNodes."""

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trustvision.config import dump_config, load_config
from trustvision.errors import ConfigError, FederationError
from trustvision.federated.config import FedConfig
from trustvision.federated.engines import engine_class
from trustvision.federated.etf import one_thread
from trustvision.federated.runner import TIMING_KEYS, build_session, run_federated
from trustvision.federated.tensors import states_equal
from trustvision.train.runs import RunDir

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode, flwr: the venv's

# 3 clients, 2 a round: round 1 trains [1, 2], round 2 [0, 1], round 3 [0, 2] (seed 0).
FAULT = "faults=[{client: 1, round: 2}]"


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models train as fast on one thread, and far faster when other jobs share the CPU."""
    with one_thread():
        yield


def tiny_args(tmp_path, *extra):
    return [
        f"runs_dir={tmp_path}",
        "device=cpu",
        "data.name=fashion-mnist",
        "data.train_subset=300",
        "data.test_subset=200",
        "data.batch_size=32",
        "model.name=mnist_cnn",
        "num_clients=3",
        "participation=0.67",
        "rounds=3",
        "local_epochs=1",
        "eval_every=1",
        "algorithm.name=fedloge",
        "algorithm.options.ssec_steps=20",
        *extra,
    ]


def tiny_config(tmp_path, *extra):
    return load_config(FedConfig, None, tiny_args(tmp_path, *extra))


def comparable(run):
    """Records without timings, and failures by client only (the errors' wording differs)."""
    rows = []
    for record in run.read_metrics():
        row = {k: v for k, v in record.items() if k not in TIMING_KEYS}
        row["failures"] = [f["client"] for f in row.get("failures", [])]
        rows.append(row)
    return rows


def test_simulation_gives_the_inprocess_numbers_through_a_failed_client(tmp_path):
    # Client 1 trained in round 1 (it holds a personal head) and raises in round 2.
    inprocess = run_federated(tiny_config(tmp_path / "inprocess", FAULT))
    flower = run_federated(tiny_config(tmp_path / "flower", FAULT, "engine=flower"))

    expected, got = comparable(inprocess), comparable(flower)
    assert [r["failures"] for r in got] == [[], [1], []]
    assert json.dumps(got) == json.dumps(expected)  # bit-identical: float32 travels as float32
    assert all(0.0 <= r["local_acc"] <= 1.0 and 0.0 <= r["generic_acc"] <= 1.0 for r in got)
    assert "client 1" in flower.read_metrics()[1]["failures"][0]["error"]
    assert (flower.path / "flower").is_dir()  # Flower's home lies inside the run directory
    summary = flower.read_summary()
    assert summary["global_sha256"] == inprocess.read_summary()["global_sha256"]
    assert summary["ssec_sha256"] == inprocess.read_summary()["ssec_sha256"]


def test_a_failed_client_keeps_its_personal_state(tmp_path):
    session = build_session(tiny_config(tmp_path, FAULT))
    state = session.algorithm.init_global()
    session.engine.fit(state, [1, 2], round=0, lr=0.03)
    before = {k: v.clone() for k, v in session.engine.personal_states()[1].items()}

    result = session.engine.fit(state, [0, 1], round=1, lr=0.03)

    assert [u.client_id for u in result.updates] == [0]
    assert [f.client_id for f in result.failures] == [1]
    assert states_equal(session.engine.personal_states()[1], before)


def test_too_few_answers_stop_the_run_with_the_reason(tmp_path):
    cfg = tiny_config(tmp_path, "faults=[{client: 0, round: 2}, {client: 1, round: 2}]")
    with pytest.raises(FederationError) as err:
        run_federated(cfg)
    message = str(err.value)
    assert "round 2: 0 of 2 clients answered" in message and "`min_clients`" in message
    assert "client 0: ClientFault" in message


def test_min_clients_cannot_exceed_a_round():
    with pytest.raises(ConfigError, match="`min_clients` is 3"):
        load_config(FedConfig, None, ["num_clients=3", "participation=0.67", "min_clients=3"])


def test_tensors_cross_as_array_records_bit_for_bit():
    from trustvision.federated.engines.flower import from_record, to_record

    state = {
        "w": torch.randn(3, 4, generator=torch.Generator().manual_seed(0)),
        "n": torch.tensor(7, dtype=torch.int64),
        "seen": torch.tensor([True, False]),
    }
    back = from_record(to_record(state))
    assert states_equal(back, state)
    assert [back[k].dtype for k in state] == [torch.float32, torch.int64, torch.bool]


def test_unknown_engine_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"`ray`.*`flower`.*`inprocess`"):
        engine_class("ray")


# --- a real deployment: one SuperLink, three SuperNodes, `flwr run` -----------------------------


def free_ports(n):
    """`n` distinct ports free on 127.0.0.1 right now."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for_port(port, proc, *, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"process {proc.args[0]} exited with {proc.returncode}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


def stop(proc):
    """Stop a process and all it spawned: its own session's process group, whose id is its PID."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    time.sleep(0.5)  # helpers (SuperExec, app processes) got the SIGTERM too
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture
def spawn(tmp_path):
    """Start processes in their own sessions, logging to tmp_path; all are stopped at teardown."""
    started = []
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # Flower spawns its helpers
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "OMP_NUM_THREADS": "1",
    }

    def start(name, *args):
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115  (closed with the process)
        proc = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        started.append(proc)
        return proc

    start.env = env
    yield start
    for proc in started:
        stop(proc)


def test_fedloge_runs_on_a_superlink_and_three_supernodes(tmp_path, spawn):
    link_port, *node_ports = free_ports(4)
    cfg = tiny_config(tmp_path / "runs", "rounds=2", "eval_every=2", "engine=flower")
    config = tmp_path / "run.yaml"
    config.write_text(dump_config(cfg))
    app = tmp_path / "app"
    shutil.copytree(ROOT / "deploy/flower-app", app)
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local-test"\n\n[superlink.local-test]\n'
        f'address = "127.0.0.1:{link_port}"\ninsecure = true\n'
    )

    link = spawn(
        "superlink",
        "flower-superlink",
        "--insecure",
        "--host=127.0.0.1",
        f"--port={link_port}",
        "--disable-runtime-dependency-installation",
    )
    wait_for_port(link_port, link, seconds=60)
    for k, port in enumerate(node_ports):
        spawn(
            f"supernode-{k}",
            "flower-supernode",
            "--insecure",
            f"--superlink=127.0.0.1:{link_port}",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--node-config=partition-id={k} num-partitions=3",
        )
    submitted = subprocess.run(
        [str(BIN / "flwr"), "run", str(app), "local-test", "--run-config", f'config="{config}"'],
        env=spawn.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not list((tmp_path / "runs").glob("*/summary.json")):
        assert link.poll() is None, (tmp_path / "superlink.log").read_text()[-3000:]
        time.sleep(0.5)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "summary.json").is_file(), (tmp_path / "superlink.log").read_text()[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    final = records[-1]
    assert all(0.0 <= final[k] <= 1.0 for k in ("generic_acc", "universal_acc", "local_acc"))
    assert math.isfinite(final["train_loss"]) and final["train_images"] > 0

    reference = run_federated(tiny_config(tmp_path / "ref", "rounds=2", "eval_every=2"))
    assert json.dumps(comparable(RunDir.open(run_dir))) == json.dumps(comparable(reference))
