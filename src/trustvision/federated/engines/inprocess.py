"""The default engine: every client simulated in this process, one after another, on one device."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, TypeVar

from torch import Tensor

from trustvision.errors import DivergenceError
from trustvision.federated.algorithm import FederatedAlgorithm
from trustvision.federated.client import ClientRunner
from trustvision.federated.config import FedConfig
from trustvision.federated.data import Federation
from trustvision.federated.messages import (
    ClientEval,
    ClientFailure,
    ClientUpdate,
    ClientValidation,
    EvalResult,
    FitResult,
)
from trustvision.federated.tensors import State, clone
from trustvision.train.loop import Accel

T = TypeVar("T")
R = TypeVar("R")


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

    def fit(
        self, global_state: State, client_ids: list[int], *, round: int, lr: float
    ) -> FitResult:
        """Train each sampled client in turn; personal states stay here, updates go back.

        A client that raises (divergence aside: that stops the run) is a failure of its
        own; its personal state stays as it was.
        """

        def fit_one(k: int) -> ClientUpdate:
            update, personal = self.runner.fit(
                k,
                global_state=global_state,
                personal=self._personal.get(k),
                round=round,
                lr=lr,
            )
            if personal:
                self._personal[k] = personal
            return update

        updates, failures = self._each(client_ids, fit_one, progress=True)
        return FitResult(updates=updates, failures=failures)

    def evaluate(
        self,
        global_state: State,
        client_ids: list[int],
        *,
        round: int,
        lr: float,
        local_test: bool = True,
        test_features: Tensor | None = None,
    ) -> EvalResult:
        """Each client's validation counts and, with `local_test`, its local-test predictions.

        Where clients predict with a head of their own on the global features, the heads read
        `test_features`. A client that raises is listed as a failure.
        """

        def evaluate_one(k: int) -> tuple[ClientEval | None, ClientValidation]:
            return self.runner.evaluate(
                k,
                global_state=global_state,
                personal=self._personal.get(k),
                round=round,
                lr=lr,
                local_test=local_test,
                test_features=test_features,
            )

        done, failures = self._each(client_ids, evaluate_one)
        evals = [e for e, _ in done if e is not None]
        return EvalResult(evals=evals, failures=failures, validations=[v for _, v in done])

    def _each(
        self, client_ids: list[int], work: Callable[[int], R], *, progress: bool = False
    ) -> tuple[list[R], list[ClientFailure]]:
        """`work(k)` for each client in turn; any exception but divergence is k's failure."""
        done: list[R] = []
        failures: list[ClientFailure] = []
        for k in client_ids:
            try:
                done.append(work(k))
            except DivergenceError:
                raise
            except Exception as err:  # any client bug or crash is that client's failure
                failures.append(ClientFailure(k, f"{type(err).__name__}: {err}"))
            if progress and self.on_client is not None:
                self.on_client()
        return done, failures

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
