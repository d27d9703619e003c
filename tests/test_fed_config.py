"""The federated config: checked up front, errors name the value and the fix; every shipped YAML loads."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trustvision.config import dump_config, load_config
from trustvision.errors import ConfigError
from trustvision.federated.algorithm import list_algorithms
from trustvision.federated.cli import fed_app
from trustvision.federated.config import FedConfig
from trustvision.train.recipe import torch_threads

ROOT = Path(__file__).parents[1]
CONFIGS = sorted((ROOT / "configs/fed").glob("*.yaml"))
# The paper-scale settings on image lists (ImageNet-LT, iNaturalist-160): long-tailed already.
LIST_CONFIGS = [p for p in CONFIGS if p.stem in ("imagenet_lt", "inaturalist160")]
CONFIGS = [p for p in CONFIGS if p not in LIST_CONFIGS]


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models train as fast on one thread, and far faster when other jobs share the CPU."""
    with torch_threads(1):
        yield


def test_unknown_algorithm_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        load_config(FedConfig, None, ["algorithm.name=fedsgd"])
    message = str(info.value)
    assert "`algorithm.name`" in message and "`fedsgd`" in message
    assert all(f"`{name}`" in message for name in list_algorithms())


def test_options_are_checked_against_the_algorithm():
    with pytest.raises(ConfigError, match=r"`options\.mu`"):
        load_config(FedConfig, None, ["algorithm.name=fedprox", "algorithm.options.mu=-1"])
    with pytest.raises(ConfigError, match=r"`options\.sparsity`: unknown option.*algorithm=NAME"):
        load_config(FedConfig, None, ["algorithm.name=fedavg", "algorithm.options.sparsity=0.5"])


def test_options_get_the_authors_defaults_and_are_written_out():
    cfg = load_config(FedConfig, None, ["algorithm.name=fedloge", "algorithm.options.ssec_steps=5"])
    options = cfg.algorithm.parsed_options()
    assert (options.sparsity, options.norm_target, options.generic_scale) == (0.6, 0.1, 1.7)
    assert (options.ssec_steps, options.ssec_lr) == (5, 1e-4)
    assert "generic_scale: 1.7" in dump_config(cfg)


def test_switching_algorithm_drops_the_old_options():
    cfg = load_config(FedConfig, ROOT / "configs/fed/fmnist_lt_cpu.yaml", ["algorithm=fedprox"])
    assert cfg.algorithm.name == "fedprox" and cfg.algorithm.options == {"mu": 0.01}


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("participation=0", "participation"),
        ("num_clients=0", "num_clients"),
        ("alpha=0", "alpha"),
        ("rounds=-1", "rounds"),
        ("colour=red", "colour"),
    ],
)
def test_bad_values_name_their_field(override, field):
    with pytest.raises(ConfigError, match=f"`{field}`"):
        load_config(FedConfig, None, [override])


def test_clients_per_round_floors_like_the_authors():
    assert load_config(FedConfig, None, []).clients_per_round == 12  # 30% of 40
    assert (
        load_config(FedConfig, None, ["num_clients=100", "participation=0.29"]).clients_per_round
        == 29
    )
    assert (
        load_config(FedConfig, None, ["num_clients=3", "participation=0.1"]).clients_per_round == 1
    )


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load(path):
    cfg = load_config(FedConfig, path)
    assert cfg.algorithm.name == "fedloge" and cfg.data.imbalance_factor in (50, 100)
    assert (cfg.num_clients, cfg.participation, cfg.data.batch_size) == (40, 0.3, 8)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.03, 0.5, 0.0)


@pytest.mark.parametrize("path", LIST_CONFIGS, ids=lambda p: p.stem)
def test_image_list_configs_load(path):
    cfg = load_config(FedConfig, path)
    assert cfg.algorithm.name == "fedloge" and cfg.data.name == "image-folder"
    assert cfg.data.imbalance_factor is None and cfg.data.image_size == 64
    assert (cfg.num_clients, cfg.alpha) == (20, 0.5)


def test_cli_runs_and_evaluates(tmp_path):
    runner = CliRunner()
    overrides = [
        f"runs_dir={tmp_path}",
        "device=cpu",
        "data.train_subset=400",
        "data.test_subset=200",
        "data.batch_size=32",
        "num_clients=3",
        "participation=1.0",
        "rounds=1",
        "local_epochs=1",
        "algorithm=fedavg",
    ]
    result = runner.invoke(
        fed_app, ["run", str(ROOT / "configs/fed/fmnist_lt_cpu.yaml"), *overrides]
    )
    assert result.exit_code == 0, result.output
    (run_dir,) = tmp_path.iterdir()

    evaluated = runner.invoke(fed_app, ["eval", str(run_dir)])
    assert evaluated.exit_code == 0, evaluated.output
    assert "local_acc_masked" in evaluated.output
    again = json.loads((run_dir / "eval.json").read_text())["headline"]
    assert json.dumps(again) == json.dumps(
        json.loads((run_dir / "summary.json").read_text())["headline"]
    )

    bad = runner.invoke(
        fed_app, ["run", str(ROOT / "configs/fed/fmnist_lt_cpu.yaml"), "algorithm.name=nope"]
    )
    assert bad.exit_code == 2 and "`nope`" in bad.output


def test_a_fault_that_can_never_happen_is_refused():
    with pytest.raises(ConfigError, match=r"faults\[0\] \(client 40, round 2\) can never happen"):
        load_config(
            FedConfig, None, ["num_clients=40", "rounds=5", "faults=[{client: 40, round: 2}]"]
        )
    with pytest.raises(ConfigError, match=r"faults\[0\] \(client 1, round 9\)"):
        load_config(FedConfig, None, ["rounds=5", "faults=[{client: 1, round: 9}]"])


def test_a_crop_wider_than_the_images_is_refused_before_a_run_directory(tmp_path):
    from fed_tiny import tiny_config

    from trustvision.federated.runner import run_federated

    runs = tmp_path / "runs"
    with pytest.raises(ConfigError, match=r"`data\.augment\.crop_padding=100` is wider than the"):
        run_federated(tiny_config(runs, "data.augment.crop_padding=100"))
    assert not runs.exists() or not any(runs.iterdir())
