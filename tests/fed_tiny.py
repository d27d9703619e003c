"""The tiny federated run the federated tests share: 3 Fashion-MNIST clients, seconds a run."""

from trustvision.config import load_config
from trustvision.federated.config import FedConfig

TINY = [
    "device=cpu",
    "data.name=fashion-mnist",
    "data.train_subset=300",
    "data.test_subset=200",
    "data.batch_size=32",
    "model.name=mnist_cnn",
    "num_clients=3",
    "participation=0.67",
    "rounds=2",
    "local_epochs=1",
]


def tiny_args(runs_dir, *extra: str) -> list[str]:
    """Overrides of the default config for a tiny run into `runs_dir`; `extra` wins."""
    return [f"runs_dir={runs_dir}", *TINY, *extra]


def tiny_config(runs_dir, *extra: str) -> FedConfig:
    return load_config(FedConfig, None, tiny_args(runs_dir, *extra))
