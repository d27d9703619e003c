"""The Flower engine: the same numbers as the in-process engine, tensors over ArrayRecords,
failed clients tolerated down to `min_clients`, and a real SuperLink with three SuperNodes."""

import json
import math
import os
import re
import signal
import time
from functools import partial
from pathlib import Path

import fed_tiny
import pytest
import torch
from flwr.app import Context, MessageType, RecordDict
from flwr.supercore import telemetry
from flwr.supercore.task_identity import TaskIdentity

from trustvision.config import dump_config, load_config
from trustvision.errors import ConfigError, FederationError
from trustvision.federated.cli import format_round
from trustvision.federated.config import FedConfig
from trustvision.federated.engines import engine_class
from trustvision.federated.engines.flower import (
    FlowerEngine,
    client_app,
    connect,
    flower_environment,
    from_record,
    server_app,
    to_record,
)
from trustvision.federated.flower_harness import LocalDeployment
from trustvision.federated.runner import build_session, evaluate_run, run_federated
from trustvision.federated.session import TIMING_KEYS
from trustvision.federated.tensors import states_equal
from trustvision.runs import RunDir
from trustvision.train.recipe import torch_threads

# 3 clients, 2 a round: round 1 trains [1, 2], round 2 [0, 1], round 3 [0, 2] (seed 0).
FAULT = "faults=[{client: 1, round: 2}]"
# ... and client 2 fails to predict its local test set after round 3.
FAULTS = "faults=[{client: 1, round: 2}, {client: 2, round: 3, stage: evaluate}]"


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models train as fast on one thread, and far faster when other jobs share the CPU."""
    with torch_threads(1):
        yield


def tiny_args(tmp_path, *extra):
    return fed_tiny.tiny_args(
        tmp_path,
        "rounds=3",
        "eval_every=1",
        "algorithm.name=fedloge",
        "algorithm.options.ssec_steps=20",
        *extra,
    )


def tiny_config(tmp_path, *extra):
    return load_config(FedConfig, None, tiny_args(tmp_path, *extra))


def comparable(run):
    """Records without timings, and failures by client only (the errors' wording differs)."""
    rows = []
    for record in run.read_metrics():
        row = {k: v for k, v in record.items() if k not in TIMING_KEYS}
        row["failures"] = [f["client"] for f in row.get("failures", [])]
        row["eval_failures"] = [f["client"] for f in row.get("eval_failures", [])]
        rows.append(row)
    return rows


def test_simulation_gives_the_inprocess_numbers_through_failed_clients(tmp_path):
    # Client 1 trained in round 1 (it holds a personal head) and raises in round 2.
    inprocess = run_federated(tiny_config(tmp_path / "inprocess", FAULTS))
    flower = run_federated(tiny_config(tmp_path / "flower", FAULTS, "engine=flower"))

    expected, got = comparable(inprocess), comparable(flower)
    assert [r["failures"] for r in got] == [[], [1], []]
    assert [r["eval_failures"] for r in got] == [[], [], [2]]
    final = flower.read_summary()["final"]["local"]["masked"]["clients"]
    assert sorted(int(k) for k in final) == [0, 1]  # local accuracy of those that answered
    assert json.dumps(got) == json.dumps(expected)  # bit-identical: float32 travels as float32
    assert all(0.0 <= r["local_acc"] <= 1.0 and 0.0 <= r["generic_acc"] <= 1.0 for r in got)
    assert "client 1" in flower.read_metrics()[1]["failures"][0]["error"]
    assert (flower.path / "flower").is_dir()  # Flower's home lies inside the run directory
    summary = flower.read_summary()
    assert summary["global_sha256"] == inprocess.read_summary()["global_sha256"]
    assert summary["ssec_sha256"] == inprocess.read_summary()["ssec_sha256"]
    with pytest.raises(ConfigError, match="personal states"):  # they stayed on the clients
        evaluate_run(flower.path)


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
    (run_dir,) = tmp_path.iterdir()
    summary = RunDir(run_dir).read_summary()
    assert summary["status"] == "too few clients" and summary["round"] == 2


def test_min_clients_cannot_exceed_a_round():
    with pytest.raises(ConfigError, match="`min_clients` is 3"):
        load_config(FedConfig, None, ["num_clients=3", "participation=0.67", "min_clients=3"])


def test_tensors_cross_as_array_records_bit_for_bit():
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


@pytest.fixture
def task_identity(monkeypatch):
    """Who is sending: Flower's Message needs it (its runtimes set it; this test has none)."""
    for key, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, key, value)


class LoopbackGrid:
    """A Grid whose SuperNodes run the ClientApp in this process; `silent` ones answer who they
    are but never a train message, as SuperNodes killed mid-round."""

    def __init__(self, num_nodes, *, silent=()):
        self.contexts = {
            100 + k: Context(
                run_id=1,
                node_id=100 + k,
                node_config={"partition-id": k},
                state=RecordDict(),
                run_config={},
            )
            for k in range(num_nodes)
        }
        self.silent = {100 + k for k in silent}
        self.replies = []

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        ids = []
        for i, message in enumerate(messages):
            message.metadata.__dict__["_message_id"] = f"m{len(self.replies)}-{i}-{id(message)}"
            ids.append(message.metadata.message_id)
            node = message.metadata.dst_node_id
            if node not in self.silent or message.metadata.message_type != MessageType.TRAIN:
                self.replies.append(client_app(message, self.contexts[node]))
        return ids

    def pull_messages(self, message_ids):
        arrived = [r for r in self.replies if r.metadata.reply_to_message_id in message_ids]
        self.replies = [r for r in self.replies if r not in arrived]
        return arrived


def test_a_silent_client_times_out_and_the_others_arrive_bit_for_bit(tmp_path, task_identity):
    cfg = tiny_config(tmp_path, "flower.timeout=0.5", "flower.connect_timeout=5")
    grid = LoopbackGrid(3, silent=[1])
    flower = build_session(cfg, make_engine=partial(FlowerEngine, grid=grid))
    inprocess = build_session(cfg)
    state = inprocess.algorithm.init_global()

    got = flower.engine.fit(state, [0, 1, 2], round=0, lr=0.03)
    expected = inprocess.engine.fit(state, [0, 2], round=0, lr=0.03)

    assert [f.client_id for f in got.failures] == [1]
    assert "no reply within `flower.timeout` (0.5 s)" in got.failures[0].error
    assert [u.client_id for u in got.updates] == [0, 2]
    for a, b in zip(got.updates, expected.updates, strict=True):
        assert states_equal(a.update, b.update) and a.weight == b.weight
    personal = from_record(grid.contexts[100].state.array_records["personal"])
    assert states_equal(personal, inprocess.engine.personal_states()[0])
    assert "personal" not in grid.contexts[101].state  # the silent client kept its state


def test_two_supernodes_as_one_client_are_refused(task_identity):
    grid = LoopbackGrid(3)
    grid.contexts[102].node_config["partition-id"] = 0
    with pytest.raises(FederationError, match=r"several SuperNodes answered as client\(s\) \[0\]"):
        connect(grid, num_clients=3, timeout=5, poll=0.01)


def test_flower_runs_with_telemetry_off_and_its_home_in_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(telemetry, "FLWR_TELEMETRY_ENABLED", "1")  # Flower imported first
    monkeypatch.delenv("FLWR_HOME", raising=False)
    with flower_environment(tmp_path / "flower"):
        assert os.environ["FLWR_HOME"] == str(tmp_path / "flower")
        assert os.environ["FLWR_TELEMETRY_ENABLED"] == "0"
        assert telemetry.FLWR_TELEMETRY_ENABLED == "0"
    assert "FLWR_HOME" not in os.environ


def test_the_deployed_app_asks_for_its_config(tmp_path):
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(ConfigError, match="--run-config"):
        server_app(LoopbackGrid(1), context)
    config = tmp_path / "run.yaml"
    config.write_text(dump_config(tiny_config(tmp_path)))  # engine: inprocess
    context.run_config = {"config": str(config), "overrides": ""}
    with pytest.raises(ConfigError, match="`engine: flower`"):
        server_app(LoopbackGrid(1), context)


# --- a real deployment: one SuperLink, three SuperNodes, `flwr run` -----------------------------


@pytest.fixture
def deployment(tmp_path):
    """A SuperLink and three SuperNodes on 127.0.0.1; every process is stopped at teardown."""
    flower = LocalDeployment(tmp_path / "flower", num_nodes=3)
    try:
        flower.start()
        yield flower
    finally:
        flower.stop()


def test_fedloge_runs_on_a_superlink_and_three_supernodes(tmp_path, deployment):
    config = tmp_path / "run.yaml"
    config.write_text(dump_config(tiny_config(tmp_path / "runs", "rounds=2", "eval_every=2")))

    printed = deployment.submit(config, overrides="engine=flower")
    run_dir = deployment.wait_for_summary(tmp_path / "runs", timeout=240)

    assert "Successfully started run" in printed
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    final = records[-1]
    assert all(0.0 <= final[k] <= 1.0 for k in ("generic_acc", "universal_acc", "local_acc"))
    assert math.isfinite(final["train_loss"]) and final["train_images"] > 0
    reference = run_federated(tiny_config(tmp_path / "ref", "rounds=2", "eval_every=2"))
    assert json.dumps(comparable(RunDir.open(run_dir))) == json.dumps(comparable(reference))

    pids = [proc.pid for proc in deployment.processes]
    marked = with_flower_home(deployment)  # found apart from alive(): by their environment
    assert set(pids) < set(marked)  # the SuperExecs Flower started carry the mark too
    deployment.stop()
    assert len(pids) == 4 and deployment.alive() == []
    assert len(deployment.seen) > len(pids)  # Flower's SuperExecs were found and stopped too
    assert with_flower_home(deployment) == []


def test_a_supernode_killed_mid_round_fails_its_client_and_the_run_goes_on(tmp_path, deployment):
    # Rounds train [1, 2] then [0, 1]: client 2 dies in round 1 and is not asked to train again.
    # The SuperNodes start a ClientApp process for every message; on a loaded machine (two
    # benchmarks running) that took over 15 s, and a live client was counted as failed. The
    # SuperLink gives up on a silent node within 2 x 30 s of its last heartbeat: the timeout
    # is longer, so that answer comes first (with 45 s the two raced, and CI saw both).
    config = tmp_path / "run.yaml"
    args = ("rounds=2", "eval_every=2", "min_clients=1", "flower.timeout=90")
    config.write_text(dump_config(tiny_config(tmp_path / "runs", *args)))
    node = deployment.processes[3]  # SuperNode with partition-id 2, after the SuperLink
    log = deployment.log("supernode-2")

    deployment.submit(config, overrides="engine=flower")
    deadline = time.monotonic() + 120
    while "Receiving: train message" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline and node.poll() is None, log.read_text()
        time.sleep(0.05)
    deployment.alive()  # note its SuperExec and ClientApp before they lose their parent
    os.kill(node.pid, signal.SIGKILL)
    run_dir = deployment.wait_for_summary(tmp_path / "runs", timeout=180)

    text = log.read_text(errors="replace")
    assert re.search(r"ROUND 1\]\s*\n.*Receiving: train message", text)
    assert "Sending: train message" not in text  # killed before it could answer round 1
    first, second = RunDir.open(run_dir).read_metrics()
    assert first["clients"] == [1, 2] and second["clients"] == [0, 1]
    assert [f["client"] for f in first["failures"]] == [2]
    assert "Node Unavailable" in first["failures"][0]["error"], first["failures"][0]
    assert first["train_images"] > 0  # client 1's update was aggregated without client 2
    assert "failures" not in second, second["failures"]
    assert second["train_images"] > 0
    assert 0.0 <= second["local_acc"] <= 1.0  # from clients 0 and 1: client 2 is left out
    assert [f["client"] for f in second["eval_failures"]] == [2]
    assert RunDir.open(run_dir).read_summary()["status"] == "finished"

    deployment.stop()
    assert deployment.alive() == [] and with_flower_home(deployment) == []


def with_flower_home(deployment) -> list[int]:
    """Live processes whose environment holds this deployment's FLWR_HOME: every process it
    started and everything those started, found by a scan of /proc that shares nothing with
    `alive()` (which follows process trees from the processes it knows)."""
    mark = f"FLWR_HOME={deployment.env['FLWR_HOME']}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:  # a zombie's environment reads empty; a process gone reads as an error
            if mark in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_the_round_line_names_failed_clients():
    record = {"round": 2, "train_loss": 1.0, "round_seconds": 3.0}
    failed = {**record, "failures": [{"client": 1, "error": "x"}, {"client": 4, "error": "y"}]}
    unevaluated = {**record, "eval_failures": [{"client": 3, "error": "z"}]}

    assert "failed" not in format_round(record)
    assert "failed: clients 1, 4" in format_round(failed)
    assert "not evaluated: client 3" in format_round(unevaluated)
