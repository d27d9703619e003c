"""Engines schedule clients and move named tensors; they know the algorithm protocol only.

`inprocess` (the default) simulates every client in this process; `flower` sends each
client's work as a Flower Message to a SuperNode (Ray-simulated or deployed), with each
client's personal state in its `context.state`. Both run runner.py's one round loop:
an engine class's `host` calls that loop with a factory for its engines, directly or
from inside a Flower ServerApp.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor

from trustvision.errors import ConfigError
from trustvision.federated.client import EvalResult, FitResult
from trustvision.federated.config import FedConfig
from trustvision.federated.tensors import State


class Engine(Protocol):
    """Runs the client side of a round and of an evaluation."""

    def fit(
        self, global_state: State, client_ids: list[int], *, round: int, lr: float
    ) -> FitResult:
        """Train the sampled clients from `global_state`: their messages and their failures."""
        ...

    def evaluate(
        self,
        global_state: State,
        *,
        round: int,
        lr: float,
        generic_logits: Tensor | None = None,
        test_features: Tensor | None = None,
    ) -> EvalResult:
        """Every client counts its validation images and predicts its local test set
        (personalised where the algorithm is); the clients that failed are listed, not raised.

        `generic_logits` and `test_features` are the global model's logits and backbone
        features on the balanced test set, which an engine may reuse for local test sets.
        """
        ...

    def personal_states(self) -> dict[int, State]:
        """Personal state of every client that has trained and lets the server see it (checkpoints)."""
        ...

    def restore(self, personal: dict[int, State]) -> None:
        """Put back personal states read from a checkpoint."""
        ...


# Builds an engine: (algorithm, federation, *, cfg, accel, on_client) -> Engine.
EngineFactory = Callable[..., Engine]


class EngineHost(Protocol):
    """An engine class: `host` runs `train(factory)` where its engines can work."""

    keeps_personal_states: bool  # whether checkpoints get the clients' personal states

    def host(self, cfg: FedConfig, run_dir: Path, train: Callable[[EngineFactory], Any]) -> Any:
        """Call `train` with a factory of this engine (inside whatever the engine needs running)."""
        ...


# name -> "module:class"; imported when used (Flower and Ray load slowly).
ENGINES: dict[str, str] = {
    "inprocess": "trustvision.federated.engines.inprocess:InProcessEngine",
    "flower": "trustvision.federated.engines.flower:FlowerEngine",
}


def engine_class(name: str) -> EngineHost:
    """The engine class registered as `name`; an unknown name lists the known ones."""
    if name not in ENGINES:
        known = ", ".join(f"`{n}`" for n in sorted(ENGINES))
        raise ConfigError(f"unknown engine `{name}`; choose one of: {known}")
    module, _, attr = ENGINES[name].partition(":")
    engine: EngineHost = getattr(importlib.import_module(module), attr)
    return engine


__all__ = ["ENGINES", "Engine", "EngineFactory", "EngineHost", "engine_class"]
