"""Every registered algorithm learns on a small Fashion-MNIST federation; messages carry only
global tensors; the server weights clients by their training images."""

import numpy as np
import pytest
import torch
from benchmark_scripts import benchmark
from safetensors.torch import load_file

from trustvision.config import load_config
from trustvision.federated.algorithm import list_algorithms
from trustvision.federated.client import client_context
from trustvision.federated.config import FedConfig
from trustvision.federated.evaluate import generic_evaluation
from trustvision.federated.runner import build_session, run_federated
from trustvision.federated.session import sample_clients
from trustvision.federated.tensors import matches
from trustvision.train.recipe import torch_threads

# Per-algorithm cuts so each runs in a second or two (the defaults are the papers').
QUICK = {
    # phi starts random and learns only on its client: three 7-step rounds are too few for it
    "fedloge": [
        "algorithm.options.ssec_steps=1000",
        "algorithm.options.ssec_lr=1e-3",
        "local_epochs=3",
    ],
    "fedrep": ["algorithm.options.head_epochs=1"],
    "fedbabu": ["algorithm.options.finetune_epochs=1"],
    "fedetf": ["algorithm.options.finetune_epochs=1"],
}
PERSONAL = ["fedper", "fedrep", "fedloge", "fedrod", "ditto"]


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models train as fast on one thread, and far faster when other jobs share the CPU."""
    with torch_threads(1):
        yield


def small_config(tmp_path, algorithm, *extra):
    return load_config(
        FedConfig,
        None,
        [
            f"runs_dir={tmp_path}",
            "device=cpu",
            "data.name=fashion-mnist",
            "data.train_subset=1200",
            "data.test_subset=500",
            "data.batch_size=32",
            "data.augment={}",
            "model.name=mnist_cnn",
            "num_clients=6",
            "participation=1.0",
            "alpha=1.0",
            "rounds=3",
            "local_epochs=1",
            "eval_every=3",
            "checkpoint_every=3",
            "optim.lr=0.02",
            f"algorithm.name={algorithm}",
            *QUICK.get(algorithm, []),
            *extra,
        ],
    )


@pytest.mark.parametrize("algorithm", list_algorithms())
def test_every_algorithm_learns(tmp_path, algorithm):
    run = run_federated(small_config(tmp_path, algorithm))

    headline = run.read_summary()["headline"]
    if "generic_acc" in headline:  # FedPer and FedRep have no global classifier
        assert headline["generic_acc"] > 0.3, headline  # chance: 0.1
    assert headline["local_acc_unmasked"] > 0.3, headline
    assert headline["local_acc_masked"] >= headline["local_acc_unmasked"] - 1e-9


@pytest.mark.parametrize("algorithm", list_algorithms())
def test_a_client_trains_every_parameter_no_phase_fixes(tmp_path, algorithm):
    # A parameter no phase trains must be frozen or fixed on purpose, never left out by
    # mistake (FedLoGe's phi once was), and one round must change every one that trains.
    session = build_session(small_config(tmp_path, algorithm))
    algo, runner = session.algorithm, session.engine.runner
    start, initial = algo.init_global(), algo.init_client(0, algo.init_global())
    client = session.federation.clients[0]
    phases = algo.phases(
        client_context(client, round=0, global_state=start, device=torch.device("cpu"))
    )
    named = [name for name, _ in runner.workspace.net.named_parameters()]
    fixed = {n for n in named if matches(n, algo.frozen) or any(matches(n, p.fix) for p in phases)}
    trained = {n for n in named if n not in fixed and any(matches(n, p.train) for p in phases)}

    update, personal = runner.fit(0, global_state=start, personal=initial, round=0, lr=0.02)

    assert sorted(set(named) - fixed - trained) == []
    before, after = {**start, **initial}, {**update.update, **personal}
    assert [k for k in sorted(trained) if torch.equal(after[k], before[k])] == []


@pytest.mark.parametrize("algorithm", PERSONAL)
def test_personal_state_never_leaves_its_client(tmp_path, algorithm):
    session = build_session(small_config(tmp_path, algorithm))
    algo = session.algorithm
    global_state = algo.init_global()

    updates = session.engine.fit(global_state, [0, 2, 5], round=0, lr=0.02).updates

    assert algo.personal and not any(matches(k, algo.personal) for k in global_state)
    for update in updates:
        assert set(update.update) <= set(global_state)
        assert not any(matches(k, (*algo.personal, *algo.frozen)) for k in update.update)
    personal = session.engine.personal_states()
    assert sorted(personal) == [0, 2, 5]
    assert all(set(s) and all(matches(k, algo.personal) for k in s) for s in personal.values())


def test_server_weights_clients_by_training_images(tmp_path):
    session = build_session(small_config(tmp_path, "fedavg", "alpha=0.3"))
    clients = session.federation.clients
    global_state = session.algorithm.init_global()

    updates = session.engine.fit(global_state, [1, 3, 4], round=0, lr=0.02).updates
    result = session.algorithm.aggregate(global_state, [(u.update, u.weight) for u in updates])

    counts = [clients[k].num_samples for k in (1, 3, 4)]
    assert [u.weight for u in updates] == counts
    w = np.array(counts, dtype=np.float64) / sum(counts)
    for key, value in result.items():
        stack = np.stack([u.update[key].double().numpy() for u in updates])
        reference = np.tensordot(w, stack, axes=1)
        if value.dtype.is_floating_point:
            np.testing.assert_allclose(value.double().numpy(), reference, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(value, torch.tensor(np.round(reference)).to(value.dtype))


def test_client_sampling_is_seeded_per_round():
    first = sample_clients(40, 12, seed=0, round=3)
    assert first == sample_clients(40, 12, seed=0, round=3)
    assert first != sample_clients(40, 12, seed=0, round=4)
    assert len(set(first)) == 12 and all(0 <= k < 40 for k in first)


@pytest.mark.parametrize("algorithm", ["fedavg", "fedloge"])
def test_clients_without_images_or_test_sets_are_handled(tmp_path, algorithm):
    cfg = small_config(
        tmp_path,
        algorithm,
        "num_clients=40",
        "alpha=0.05",
        "data.train_subset=300",
        "rounds=1",
        "local_epochs=1",
    )
    session = build_session(cfg)
    empty = [c.client_id for c in session.federation.clients if c.num_samples == 0]
    assert empty  # the split has clients with nothing: FedLoGe's protocol allows it

    run = run_federated(cfg)

    record = run.read_metrics()[-1]
    trained = int(session.federation.train_counts.sum())  # 300 less the clients' hold-outs
    assert 250 < trained < 300 and record["train_images"] == trained
    # a client without test or validation images leaves them out, never a NaN (null) mean
    assert isinstance(record["local_acc"], float) and 0 <= record["local_acc"] <= 1
    assert isinstance(record["local_val_acc"], float) and 0 <= record["local_val_acc"] <= 1


def test_local_logits_read_off_the_generic_ones_match_per_client_prediction(tmp_path):
    session = build_session(small_config(tmp_path, "fedavg"))
    state = session.algorithm.init_global()
    generic = generic_evaluation(
        session.algorithm,
        session.server,
        global_state=state,
        federation=session.federation,
        accel=session.accel,
    )

    shortcut = session.evaluate_clients(state, round=0, generic_logits=generic.logits)
    direct = session.evaluate_clients(state, round=0)
    assert [e.client_id for e in shortcut.evals] == [e.client_id for e in direct.evals]
    for a, b in zip(shortcut.evals, direct.evals, strict=True):
        torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-4)
        assert torch.equal(a.labels, b.labels) and torch.equal(a.seen, b.seen)
    # the validation counts do not depend on where the local-test logits came from
    for a, b in zip(shortcut.validations, direct.validations, strict=True):
        assert np.array_equal(a.total, b.total)
        assert all(np.array_equal(a.correct[k], b.correct[k]) for k in a.correct)


@pytest.mark.parametrize("algorithm", ["fedloge", "fedrod", "fedper"])
def test_personal_heads_on_shared_test_features_match_per_client_prediction(tmp_path, algorithm):
    session = build_session(small_config(tmp_path, algorithm))
    assert session.algorithm.shares_features
    run = run_federated(small_config(tmp_path, algorithm, "rounds=1"))
    state = session.algorithm.init_global()
    session.engine.restore(_personal_states(run))  # heads that trained for a round
    generic = generic_evaluation(
        session.algorithm,
        session.server,
        global_state=state,
        federation=session.federation,
        accel=session.accel,
    )

    shared = session.evaluate_clients(state, round=0, test_features=generic.features)
    direct = session.evaluate_clients(state, round=0)
    assert len(shared.evals) == len(direct.evals) > 0
    for a, b in zip(shared.evals, direct.evals, strict=True):
        torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-4)
        assert torch.equal(a.labels, b.labels)


def _personal_states(run) -> dict:
    from trustvision.train import checkpoint as ckpt

    latest = ckpt.latest_checkpoint(run.checkpoints_dir)
    return ckpt.load_checkpoint(latest, device="cpu")["personal"]


def test_generic_validation_counts_equal_the_global_model_on_every_clients_images(tmp_path):
    from trustvision.federated.evaluate import validation_evaluation

    session = build_session(small_config(tmp_path, "fedloge"))
    state = session.algorithm.init_global()
    result = session.evaluate_clients(state, round=0)

    counted = validation_evaluation(result.validations)
    session.server.load(state)
    net = session.server.net.eval()
    preds, labels = [], []
    with torch.no_grad():
        for client in session.federation.clients:
            for x, y in client.val_loader(session.federation.spec).epoch(0):
                preds.append(session.algorithm.generic_logits(net, x).argmax(1))
                labels.append(y)
    pred, label = torch.cat(preds).numpy(), torch.cat(labels).numpy()
    per_class = [np.mean(pred[label == c] == c) for c in np.unique(label)]
    assert counted["images"] == len(label) > 0
    assert counted["generic"] == pytest.approx(float(np.mean(per_class)))


KNOB_ENDS = {  # each method's swept knob at two ends of its grid, small enough to run quickly
    "fedavg": (0.005, 0.2),
    "fedper": (0.005, 0.2),
    "fedrod": (0.005, 0.2),
    "fedprox": (0.001, 1.0),
    "fedrep": (1, 3),
    "fedbabu": (0, 2),
    "fedetf": (0.25, 16.0),
    "ditto": (0.01, 10.0),
    "fedlc": (0.1, 8.0),
    "fedloge": (0.05, 4.0),
}


def test_the_knob_check_below_covers_every_method():
    assert set(KNOB_ENDS) == set(list_algorithms()) == set(benchmark("fed_sweep_specs").KNOBS)


@pytest.mark.parametrize("algorithm", sorted(KNOB_ENDS))
def test_a_sweep_scores_generic_accuracy_only_where_its_knob_moves_the_global_model(
    tmp_path, algorithm
):
    """benchmarks/fed_sweep.py scores a method on generic validation accuracy only if it has a
    global model its knob can change; otherwise every value would tie and the tie-break would
    choose. Local accuracy, the other score, moves with every knob. Every round is evaluated,
    as evaluation (FedBABU's fine-tuning among it) must not move the global model either: two
    rounds, so that the second trains from the global model round 1's evaluation saw."""
    specs = benchmark("fed_sweep_specs")
    key = specs.KNOBS[algorithm][0]
    runs = [
        run_federated(
            small_config(
                tmp_path / str(value), algorithm, f"{key}={value}", "rounds=2", "eval_every=1"
            )
        )
        for value in KNOB_ENDS[algorithm]
    ]
    globals_ = [load_file(run.path / "global.safetensors") for run in runs]
    moved = any(not torch.equal(globals_[0][k], globals_[1][k]) for k in globals_[0])
    has_generic = "generic" in runs[0].read_summary()["selected"]
    scored = specs.objective(algorithm)[0].split(".")[1]
    assert scored == ("generic" if has_generic and moved else "local")
    local = [run.read_summary()["selected"]["local"]["local_val_acc"] for run in runs]
    assert local[0] != local[1]
