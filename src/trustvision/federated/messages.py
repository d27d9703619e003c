"""What crosses between a client and the server: updates, local-test predictions, validation
counts, and the clients that failed to send them. Engines carry these, whatever the wire."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

from trustvision.federated.tensors import State


@dataclass(frozen=True)
class ClientUpdate:
    """A client's message to the server: global tensors only, its weight and its numbers."""

    client_id: int
    update: State
    weight: float  # training images used (FedAvg's n_k)
    metrics: dict[str, float]


@dataclass(frozen=True)
class ClientFailure:
    """A sampled client that did not answer: it raised, crashed or timed out."""

    client_id: int
    error: str


@dataclass(frozen=True)
class FitResult:
    """What came back from a round's clients, in the order they were asked."""

    updates: list[ClientUpdate]
    failures: list[ClientFailure]


@dataclass(frozen=True)
class ClientEval:
    """A client's predictions on its local test set (CPU), and which classes it trained on."""

    client_id: int
    logits: Tensor
    labels: Tensor
    seen: Tensor  # (C,) bool: classes with at least one training image at this client


@dataclass(frozen=True)
class ClientValidation:
    """Per-class counts on a client's validation images: all the server learns of them.

    `correct[name]` counts the right predictions of one predictor: every global predictor
    of the algorithm (`generic`, and modes such as FedLoGe's `universal`) and the client's
    own model, `local_masked` / `local_unmasked`.
    """

    client_id: int
    total: np.ndarray  # (C,) int64 validation images per class
    correct: dict[str, np.ndarray]  # predictor -> (C,) int64


@dataclass(frozen=True)
class EvalResult:
    """What came back from an evaluation's clients: local-test predictions, validation counts,
    and who failed to answer."""

    evals: list[ClientEval]
    failures: list[ClientFailure]
    validations: list[ClientValidation] = field(default_factory=list)
