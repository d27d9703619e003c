"""Federated learning on long-tailed, non-IID client data: FedLoGe and its baselines.

- `algorithm.py`: the protocol, FedAvg-shaped defaults, the registry;
  `algorithms/`: one module per algorithm.
- `tensors.py`: named-tensor states and the pure aggregation math.
- `client.py`: the one local-training routine and a client's fit / evaluate.
- `engines/`: who runs the clients (`inprocess`, the default).
- `runner.py`: the round loop, checkpoints, summary; `cli.py`: `trustvision fed`.
"""

from trustvision.federated.algorithm import (
    Algorithm,
    ClientContext,
    FederatedAlgorithm,
    Phase,
    Setup,
    algorithm_class,
    list_algorithms,
    register_algorithm,
)
from trustvision.federated.config import AlgorithmConfig, FedConfig
from trustvision.federated.tensors import State, weighted_average

__all__ = [
    "Algorithm",
    "AlgorithmConfig",
    "ClientContext",
    "FedConfig",
    "FederatedAlgorithm",
    "Phase",
    "Setup",
    "State",
    "algorithm_class",
    "list_algorithms",
    "register_algorithm",
    "weighted_average",
]
