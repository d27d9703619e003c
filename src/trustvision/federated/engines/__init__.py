"""Engines schedule clients and move named tensors; they know the algorithm protocol only.

`inprocess` (the default) simulates every client in this process. A Flower engine would
wrap the same `client_fit` / `client_evaluate` calls in a ClientApp, with each client's
personal state in its `context.state`.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from trustvision.federated.client import ClientEval, ClientUpdate
from trustvision.federated.engines.inprocess import InProcessEngine
from trustvision.federated.tensors import State


class Engine(Protocol):
    """Runs the client side of a round and of an evaluation."""

    def fit(
        self, global_state: State, client_ids: list[int], *, round: int, lr: float
    ) -> list[ClientUpdate]:
        """Train the sampled clients from `global_state`; returns their messages to the server."""
        ...

    def evaluate(
        self, global_state: State, *, round: int, lr: float, generic_logits: Tensor | None = None
    ) -> list[ClientEval]:
        """Every client with a local test set predicts it (personalised where the algorithm is)."""
        ...

    def personal_states(self) -> dict[int, State]:
        """Personal state of every client that has trained (for checkpoints)."""
        ...

    def restore(self, personal: dict[int, State]) -> None:
        """Put back personal states read from a checkpoint."""
        ...


ENGINES: dict[str, type] = {"inprocess": InProcessEngine}

__all__ = ["ENGINES", "Engine", "InProcessEngine"]
