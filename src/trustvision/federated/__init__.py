"""Federated learning on long-tailed, non-IID client data: FedLoGe and its baselines.

- `algorithm.py`: the protocol, FedAvg-shaped defaults, the registry;
  `algorithms/`: one module per algorithm.
- `tensors.py`: named-tensor states and the pure aggregation math.
- `data.py`: the federation (clients' data, test sets); `evaluate.py`: the accuracies.
- `client.py`: the one local-training routine and a client's fit / evaluate;
  `messages.py`: what crosses between a client and the server.
- `session.py`: a run's parts and the one round loop (with an `on_round` hook), below
  the engines; `engines/`: who runs the clients (`inprocess`, the default; `flower`).
- `rundir.py`: a run recorded in its directory (metrics, checkpoints, resume, summary).
- `runner.py`: picks the engine and runs, resumes or re-evaluates a run, above the
  engines; `cli.py`: `trustvision fed`.
- `flower_harness.py`: a local Flower deployment in processes, for tests and benchmarks.
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
