"""The Flower engine: the same numbers as the in-process engine, tensors over ArrayRecords,
failed clients tolerated down to `min_clients`, and a real SuperLink with three SuperNodes."""

import json
import math

import pytest
import torch

from trustvision.config import dump_config, load_config
from trustvision.errors import ConfigError, FederationError
from trustvision.federated.config import FedConfig
from trustvision.federated.engines import engine_class
from trustvision.federated.engines.flower_local import LocalDeployment
from trustvision.federated.etf import one_thread
from trustvision.federated.runner import TIMING_KEYS, build_session, evaluate_run, run_federated
from trustvision.federated.tensors import states_equal
from trustvision.train.runs import RunDir

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
    deployment.stop()
    assert len(pids) == 4 and deployment.alive() == []
