"""FedLoGe's SSE-C: ETF geometry, exact sparsity, norms 0.1, built from the seed, frozen forever."""

import math

import pytest
import torch

import trustvision.federated.client as client_module
from trustvision.config import load_config
from trustvision.federated.config import FedConfig
from trustvision.federated.etf import etf_geometry, simplex_etf, sparse_etf
from trustvision.federated.runner import build_session, run_federated
from trustvision.federated.tensors import state_hash
from trustvision.train import checkpoint as ckpt
from trustvision.train.recipe import torch_threads


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models train as fast on one thread, and far faster when other jobs share the CPU."""
    with torch_threads(1):
        yield


def tiny_fedloge(tmp_path, *extra):
    return load_config(
        FedConfig,
        None,
        [
            f"runs_dir={tmp_path}",
            "device=cpu",
            "data.name=fashion-mnist",
            "data.train_subset=600",
            "data.test_subset=200",
            "data.batch_size=32",
            "data.augment={}",
            "model.name=mnist_cnn",
            "num_clients=4",
            "participation=0.5",
            "rounds=2",
            "local_epochs=1",
            "eval_every=2",
            "algorithm.name=fedloge",
            "algorithm.options.ssec_steps=50",
            *extra,
        ],
    )


def test_simplex_etf_is_equiangular_with_unit_columns():
    m = simplex_etf(64, 10, generator=torch.Generator().manual_seed(0)).double()
    gram = m.T @ m
    torch.testing.assert_close(
        gram.diagonal(), torch.ones(10, dtype=torch.float64), atol=1e-6, rtol=0
    )
    off = gram[~torch.eye(10, dtype=torch.bool)]
    torch.testing.assert_close(off, torch.full_like(off, -1 / 9), atol=1e-6, rtol=0)


def test_sse_c_geometry_with_the_authors_constants():
    weight = sparse_etf(128, 10, sparsity=0.6, norm_target=0.1, steps=10_000, lr=1e-4, seed=3)

    geometry = etf_geometry(weight.T)

    assert (weight == 0).sum().item() == int(0.6 * 128 * 10)  # exactly 60% of entries
    assert geometry["norm_min"] > 0.099 and geometry["norm_max"] < 0.102
    assert 95.5 < geometry["angle_mean"] < 97.5  # the authors' logs: 96.4 degrees for C=10
    assert geometry["angle_min"] > 90.0


def test_sse_c_is_a_pure_function_of_the_seed():
    a = sparse_etf(32, 5, sparsity=0.6, norm_target=0.1, steps=20, lr=1e-4, seed=1)
    b = sparse_etf(32, 5, sparsity=0.6, norm_target=0.1, steps=20, lr=1e-4, seed=1)
    c = sparse_etf(32, 5, sparsity=0.6, norm_target=0.1, steps=20, lr=1e-4, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_too_narrow_features_are_a_config_error():
    from trustvision.errors import ConfigError

    with pytest.raises(ConfigError, match="feature_dim"):
        simplex_etf(5, 10, generator=torch.Generator())


def test_sse_c_is_frozen_through_training(tmp_path, monkeypatch):
    trained = []
    original = client_module.build_phase_optimizer

    def recording(params, **kwargs):
        trained.extend(params)
        return original(params, **kwargs)

    monkeypatch.setattr(client_module, "build_phase_optimizer", recording)
    session = build_session(tiny_fedloge(tmp_path))
    initial = session.algorithm.init_global()
    ssec = session.engine.runner.workspace.net["ssec"].weight

    state = initial
    for r in range(2):
        state, _ = session.train_round(state, round=r)

    assert torch.equal(state["ssec.weight"], initial["ssec.weight"])
    assert not ssec.requires_grad and trained and all(p is not ssec for p in trained)
    assert session.engine.runner.workspace.net["ssec"].bias is None
    assert math.isclose((initial["ssec.weight"] == 0).double().mean().item(), 0.6, abs_tol=1e-9)


def test_run_records_the_sse_c_hash(tmp_path):
    run = run_federated(tiny_fedloge(tmp_path))
    summary = run.read_summary()
    final = ckpt.load_checkpoint(ckpt.latest_checkpoint(run.checkpoints_dir))

    expected = build_session(tiny_fedloge(tmp_path)).algorithm.init_global()["ssec.weight"]
    assert summary["ssec_sha256"] == state_hash({"ssec.weight": expected})
    assert torch.equal(final["global"]["ssec.weight"], expected)
    assert {"universal_acc", "generic_acc", "local_acc"} <= set(summary["headline"])


def test_fedloge_inference_modes_follow_the_paper():
    from trustvision.federated.algorithm import Setup, algorithm_class
    from trustvision.models import create_model

    cls = algorithm_class("fedloge")
    algorithm = cls(
        Setup(
            model_fn=lambda: create_model("mnist_cnn", num_classes=10, in_channels=1),
            num_classes=10,
            seed=0,
            local_epochs=1,
            options=cls.Options(ssec_steps=0, generic_scale=1.7),
        )
    )
    net = algorithm.build().eval()
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        h = net["model"].features(x)
        psi, phi = net["model"].head, net["phi"]
        generic = algorithm.generic_logits(net, x)
        personal = algorithm.personal_logits(net, x)
        outputs = algorithm.generic_heads(net, algorithm.features(net, x))
        universal = outputs["universal"]

    psi_hat = 1.7 * psi.weight / psi.weight.norm(dim=1, keepdim=True)
    torch.testing.assert_close(generic, h @ psi_hat.T + psi.bias)
    psi_tilde = psi.weight * phi.weight.norm(dim=1, keepdim=True)
    torch.testing.assert_close(personal, phi(h) + h @ psi_tilde.T + psi.bias)
    torch.testing.assert_close(universal, h @ net["ssec"].weight.T)
    torch.testing.assert_close(outputs["generic"], generic)
    torch.testing.assert_close(outputs["aux"], net["model"](x))
