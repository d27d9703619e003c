"""Aggregation math over named tensors, against a NumPy reference; it never mutates its inputs."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trustvision.federated.algorithm import Setup
from trustvision.federated.algorithms.fedavg import FedAvg
from trustvision.federated.tensors import (
    clone,
    drop,
    matches,
    merge_into,
    select,
    state_hash,
    states_equal,
    weighted_average,
)

FAST = settings(max_examples=30, deadline=None)


def random_states(rng: np.random.Generator, n: int) -> list[dict[str, torch.Tensor]]:
    return [
        {
            "model.w": torch.from_numpy(rng.normal(size=(3, 4)).astype(np.float32)),
            "model.b": torch.from_numpy(rng.normal(size=4)),  # float64
            "model.bn.num_batches_tracked": torch.tensor(int(rng.integers(0, 100))),
        }
        for _ in range(n)
    ]


def numpy_average(states, weights):
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    return {
        k: sum(wi * s[k].double().numpy() for wi, s in zip(w, states, strict=True))
        for k in states[0]
    }


@FAST
@given(
    n=st.integers(1, 6),
    seed=st.integers(0, 2**31),
    weights=st.lists(st.integers(0, 5000), min_size=6, max_size=6),
)
def test_weighted_average_matches_numpy(n, seed, weights):
    weights = weights[:n]
    if sum(weights) == 0:
        weights[0] = 1
    states = random_states(np.random.default_rng(seed), n)
    before = [clone(s) for s in states]

    result = weighted_average(states, weights)

    reference = numpy_average(states, weights)
    for key, value in result.items():
        assert value.dtype == states[0][key].dtype and value.shape == states[0][key].shape
        if value.dtype.is_floating_point:
            np.testing.assert_allclose(value.double().numpy(), reference[key], rtol=1e-6, atol=1e-6)
        else:
            assert int(value) == int(np.round(reference[key]))
    assert all(states_equal(a, b) for a, b in zip(states, before, strict=True))  # not mutated


def test_one_client_with_all_the_weight_wins():
    states = random_states(np.random.default_rng(0), 3)
    result = weighted_average(states, [0, 7, 0])
    assert states_equal(result, states[1])


@pytest.mark.parametrize("weights", [[0, 0], [-1, 2], [1]])
def test_bad_weights_are_refused(weights):
    states = random_states(np.random.default_rng(0), 2)
    with pytest.raises(ValueError):
        weighted_average(states, weights)


def test_states_must_agree_on_keys():
    a, b = random_states(np.random.default_rng(0), 2)
    del b["model.b"]
    with pytest.raises(ValueError, match=r"model\.b"):
        weighted_average([a, b], [1, 1])


def test_fedavg_aggregate_weights_by_samples_and_keeps_unsent_keys():
    states = random_states(np.random.default_rng(1), 3)
    global_state = {**clone(states[0]), "ssec.weight": torch.ones(2, 2)}
    updates = [(s, n) for s, n in zip(states, [10, 30, 60], strict=True)]
    algorithm = FedAvg(Setup(model_fn=lambda: None, num_classes=2, seed=0, local_epochs=1))
    before = clone(global_state)

    result = algorithm.aggregate(global_state, [*updates, (states[0], 0.0)])

    reference = numpy_average(states, [10, 30, 60])
    np.testing.assert_allclose(result["model.w"].double().numpy(), reference["model.w"], rtol=1e-6)
    assert torch.equal(result["ssec.weight"], global_state["ssec.weight"])
    assert states_equal(global_state, before)
    assert states_equal(algorithm.aggregate(global_state, []), global_state)


def test_key_selection_by_prefix():
    state = {
        "model.head.weight": torch.zeros(1),
        "model.headx": torch.zeros(1),
        "phi.bias": torch.zeros(1),
    }
    assert matches("model.head.weight", ["model.head"]) and not matches(
        "model.headx", ["model.head"]
    )
    assert set(select(state, ["model.head", "phi"])) == {"model.head.weight", "phi.bias"}
    assert set(drop(state, ["model.head"])) == {"model.headx", "phi.bias"}
    with pytest.raises(ValueError):
        merge_into({"a": torch.zeros(1)}, {"b": torch.zeros(1)})


def test_state_hash_sees_values_and_names():
    a = {"x": torch.arange(4.0), "y": torch.tensor(3)}
    assert state_hash(a) == state_hash(clone(a))
    assert state_hash(a) != state_hash({**a, "x": torch.arange(4.0) + 1e-6})
    assert state_hash(a) != state_hash({"z": a["x"], "y": a["y"]})
