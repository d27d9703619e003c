"""The default engine: every client simulated in this process, one after another, on one device."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, TypeVar

from torch import Tensor

from trustvision.errors import DivergenceError
from trustvision.federated.algorithm import FederatedAlgorithm
from trustvision.federated.client import (
    ClientEval,
    ClientFailure,
    ClientRunner,
    FitResult,
    eval_from_generic,
)
from trustvision.federated.config import FedConfig
from trustvision.federated.data import ClientData, Federation
from trustvision.federated.tensors import State, clone
from trustvision.train.loop import Accel

T = TypeVar("T")


class InProcessEngine:
    """Holds the clients' data and personal states; one `ClientRunner` trains them in turn."""

    keeps_personal_states: ClassVar[bool] = True

    def __init__(
        self,
        algorithm: FederatedAlgorithm,
        federation: Federation,
        *,
        cfg: FedConfig,
        accel: Accel,
        on_client: Callable[[], None] | None = None,
    ) -> None:
        self.algorithm = algorithm
        self.federation = federation
        self.accel = accel
        self.on_client = on_client
        self.runner = ClientRunner.for_config(cfg, algorithm, federation, accel)
        self._personal: dict[int, State] = {}

    def _client_state(self, client: ClientData, global_state: State) -> State:
        if client.client_id not in self._personal:
            initial = self.algorithm.init_client(client.client_id, global_state)
            return clone(initial, device=self.accel.device)
        return self._personal[client.client_id]

    def fit(
        self, global_state: State, client_ids: list[int], *, round: int, lr: float
    ) -> FitResult:
        """Train each sampled client in turn; personal states stay here, updates go back.

        A client that raises (divergence aside: that stops the run) is a failure of its
        own; its personal state stays as it was.
        """
        result = FitResult(updates=[], failures=[])
        for k in client_ids:
            client = self.federation.clients[k]
            try:
                update, personal = self.runner.fit(
                    k,
                    global_state=global_state,
                    personal=self._client_state(client, global_state),
                    round=round,
                    lr=lr,
                )
            except DivergenceError:
                raise
            except Exception as err:  # any client bug or crash is that client's failure
                result.failures.append(ClientFailure(k, f"{type(err).__name__}: {err}"))
            else:
                if personal:
                    self._personal[k] = personal
                result.updates.append(update)
            if self.on_client is not None:
                self.on_client()
        return result

    def evaluate(
        self, global_state: State, *, round: int, lr: float, generic_logits: Tensor | None = None
    ) -> list[ClientEval]:
        """Local-test predictions of every client with a local test set.

        For an algorithm that does not personalise, a client's model is the global one, so
        its logits are read off `generic_logits` (the balanced test set's) when given.
        """
        evals = []
        for client in self.federation.clients:
            if len(client.test_indices) == 0:
                continue
            if generic_logits is not None and not self.algorithm.personalised:
                evals.append(
                    eval_from_generic(client, self.federation, generic_logits=generic_logits)
                )
                continue
            evals.append(
                self.runner.evaluate(
                    client.client_id,
                    global_state=global_state,
                    personal=self._client_state(client, global_state),
                    round=round,
                    lr=lr,
                )
            )
        return evals

    def personal_states(self) -> dict[int, State]:
        """Every trained client's personal state (shared references; the caller copies)."""
        return dict(self._personal)

    def restore(self, personal: dict[int, State]) -> None:
        """Replace all personal states (from a checkpoint)."""
        self._personal = {k: clone(v, device=self.accel.device) for k, v in personal.items()}

    @classmethod
    def host(
        cls, cfg: FedConfig, run_dir: Path, train: Callable[[Callable[..., InProcessEngine]], T]
    ) -> T:
        """Nothing to start: `train` runs here, with this class as its engine factory."""
        return train(cls)
