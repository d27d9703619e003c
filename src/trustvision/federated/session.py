"""A federated session: the parts of a run and its rounds, below the engines and the runner.

`build_parts` makes what the server and every client build alike from a config (the device,
the federation, the algorithm); `open_session` adds an engine and the server's evaluation
modules. `Session.run` is the one round loop: sample clients, let the engine train them,
aggregate, evaluate every `eval_every` rounds (and the last), then hand each finished round
to `on_round`, which the runner uses to log and checkpoint and a benchmark to measure. Every
random draw of round r comes from (seed, r[, client]), so rounds replayed from a checkpoint
repeat exactly (no RNG state is saved).

An engine only schedules clients and moves named tensors (`Engine` below); which clients an
evaluation asks, and what the server reads off the global model instead, is decided here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np
from torch import Tensor

from trustvision.config import OptimConfig
from trustvision.data.dataset import load_data
from trustvision.errors import FederationError
from trustvision.federated.algorithm import Algorithm, Setup, algorithm_class
from trustvision.federated.client import Workspace
from trustvision.federated.config import FedConfig
from trustvision.federated.data import Federation, build_federation
from trustvision.federated.evaluate import (
    clients_to_evaluate,
    evals_from_generic,
    evaluation,
    flat_metrics,
    generic_evaluation,
)
from trustvision.federated.messages import ClientFailure, ClientUpdate, EvalResult, FitResult
from trustvision.federated.tensors import State, clone
from trustvision.models import create_model_for
from trustvision.seeds import derive_seed
from trustvision.train.loop import Accel, Reporter, SilentReporter, select_device
from trustvision.train.optim import lr_factor

# The fields of a round's record that time it (left out wherever records are compared).
TIMING_KEYS = frozenset({"train_seconds", "round_seconds", "eval_seconds"})


class Engine(Protocol):
    """Runs the client side of a round and of an evaluation (engines/ implements it)."""

    def fit(
        self, global_state: State, client_ids: list[int], *, round: int, lr: float
    ) -> FitResult:
        """Train the sampled clients from `global_state`: their messages and their failures."""
        ...

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
        """`client_ids` count their validation images and, with `local_test`, predict their
        local test sets (personalised where the algorithm is); failures are listed, not raised.

        `test_features` are the global backbone's features of the balanced test set, which an
        engine may reuse for the local test sets (they are index lists into it).
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


class Parts(NamedTuple):
    """What the server and every client build alike from one config."""

    accel: Accel
    federation: Federation
    algorithm: Algorithm


def build_parts(cfg: FedConfig, *, source: str | None = None) -> Parts:
    """The device, the federation (a pure function of the config) and the algorithm.

    The server and every Flower client build the same parts from the same config;
    `source` reads the data set from another place than `cfg.data.source`.
    """
    device = select_device(cfg.device)
    accel = Accel(device, amp=cfg.amp, channels_last=cfg.channels_last)
    dataset = load_data(cfg.data, source=source)
    federation = build_federation(
        dataset,
        cfg.data,
        num_clients=cfg.num_clients,
        alpha=cfg.alpha,
        seed=cfg.seed,
        device=device,
    )

    def model_fn() -> Any:
        return create_model_for(
            cfg.model.name,
            num_classes=dataset.num_classes,
            image_shape=dataset.image_shape,
            **cfg.model.kwargs,
        )

    setup = Setup(
        model_fn=model_fn,
        num_classes=dataset.num_classes,
        seed=cfg.seed,
        local_epochs=cfg.local_epochs,
        options=cfg.algorithm.parsed_options(),
        label_smoothing=cfg.optim.label_smoothing,
    )
    return Parts(accel, federation, algorithm_class(cfg.algorithm.name)(setup))


def sample_clients(num_clients: int, per_round: int, *, seed: int, round: int) -> list[int]:
    """The clients of `round`: `per_round` distinct ids drawn from (seed, "sample", round)."""
    rng = np.random.default_rng(derive_seed(seed, "sample", round))
    return sorted(int(k) for k in rng.choice(num_clients, size=per_round, replace=False))


def round_lr(optim: OptimConfig, *, round: int, rounds: int) -> float:
    """The learning rate of `round`: the configured schedule stepped once per round."""
    return optim.lr * lr_factor(round, cfg=optim, total_steps=rounds, steps_per_epoch=1)


@dataclass(frozen=True)
class RoundResult:
    """One finished round, as `Session.run` hands it to `on_round`."""

    round: int  # 0-based
    state: State  # the global state after it
    record: dict[str, Any]  # its metrics.jsonl row, timings included
    evaluation: dict[str, Any] | None  # the full evaluation, on the rounds `eval_every` picks


OnRound = Callable[[RoundResult], None]


@dataclass
class Session:
    """Everything a run needs, built from its config by `open_session`."""

    cfg: FedConfig
    accel: Accel
    federation: Federation
    algorithm: Algorithm
    engine: Engine
    server: Workspace  # the server's own modules, for generic evaluation
    reporter: Reporter = field(default_factory=SilentReporter)

    def initial_state(self) -> State:
        """The global state of round 0, on the session's device."""
        return clone(self.algorithm.init_global(), device=self.accel.device)

    def lr(self, round: int) -> float:
        """The learning rate of `round` (0-based)."""
        return round_lr(self.cfg.optim, round=round, rounds=self.cfg.rounds)

    def evaluates(self, round: int) -> bool:
        """Whether `round` (0-based) is evaluated: every `eval_every` rounds, and the last."""
        return (round + 1) % self.cfg.eval_every == 0 or round + 1 == self.cfg.rounds

    def run(
        self,
        state: State,
        *,
        start: int = 0,
        stop: int | None = None,
        on_round: OnRound | None = None,
    ) -> State:
        """Rounds `start` to `stop` (default: the config's last) from `state`; each finished
        round goes to `on_round`. Returns the global state after the last of them."""
        for r in range(start, self.cfg.rounds if stop is None else stop):
            done = self.run_round(state, round=r)
            state = done.state
            self.reporter.finish(done.record)
            if on_round is not None:
                on_round(done)
        return state

    def run_round(self, global_state: State, *, round: int) -> RoundResult:
        """Train one round, and evaluate it when due."""
        cfg = self.cfg
        self.reporter.start(f"round {round + 1}/{cfg.rounds}", cfg.clients_per_round)
        started = time.perf_counter()
        global_state, record = self.train_round(global_state, round=round)
        result = None
        if self.evaluates(round):
            eval_start = time.perf_counter()
            result = self.evaluate(global_state, round=round)
            record.update(flat_metrics(result, mask_unseen=cfg.mask_unseen))
            if "failures" in result:
                record["eval_failures"] = result["failures"]
            record["eval_seconds"] = time.perf_counter() - eval_start
        record["round_seconds"] = time.perf_counter() - started
        return RoundResult(round, global_state, record, result)

    def train_round(self, global_state: State, *, round: int) -> tuple[State, dict[str, Any]]:
        """Sample, train the clients, aggregate. Returns the new state and the round's record.

        The clients that answered are aggregated when there are `min_clients` of them; the
        others are listed under `failures` in the record.
        """
        cfg = self.cfg
        sampled = sample_clients(cfg.num_clients, cfg.clients_per_round, seed=cfg.seed, round=round)
        lr = self.lr(round)
        result = self.engine.fit(global_state, sampled, round=round, lr=lr)
        updates = result.updates
        if len(updates) < cfg.min_clients:
            raise too_few_clients(
                round=round, sampled=len(sampled), minimum=cfg.min_clients, failures=result.failures
            )
        new_state = self.algorithm.aggregate(global_state, [(u.update, u.weight) for u in updates])
        record = {"round": round + 1, "lr": lr, "clients": sampled, **train_numbers(updates)}
        if result.failures:
            record["failures"] = failure_list(result.failures)
        return new_state, record

    def evaluate(self, global_state: State, *, round: int) -> dict[str, Any]:
        """Generic and local evaluation of `global_state` after `round` (0-based); clients that
        failed to predict are listed under `failures`."""
        generic = generic_evaluation(
            self.algorithm,
            self.server,
            global_state=global_state,
            federation=self.federation,
            accel=self.accel,
        )
        local = self.evaluate_clients(
            global_state,
            round=round,
            generic_logits=generic.logits,
            test_features=generic.features,
        )
        result = evaluation(
            generic.results, local.evals, federation=self.federation, validations=local.validations
        )
        if local.failures:
            result["failures"] = failure_list(local.failures)
        return result

    def evaluate_clients(
        self,
        global_state: State,
        *,
        round: int,
        generic_logits: Tensor | None = None,
        test_features: Tensor | None = None,
    ) -> EvalResult:
        """Every client's validation counts and local-test predictions.

        For an algorithm that does not personalise, a client's model is the global one: given
        `generic_logits` (the global model's on the balanced test set), clients only count
        their validation images and their local-test logits are read off those. A client that
        fails is listed as a failure and left out of validation; it is left out of local
        accuracy only where it runs its own model (personalised, or without `generic_logits`):
        otherwise its local-test logits are the global model's, which did not fail.
        """
        local_test = generic_logits is None or self.algorithm.personalised
        result = self.engine.evaluate(
            global_state,
            clients_to_evaluate(self.federation, local_test=local_test),
            round=round,
            lr=self.lr(round),
            local_test=local_test,
            test_features=test_features,
        )
        if local_test:
            return result
        assert generic_logits is not None
        from_generic = evals_from_generic(self.federation, generic_logits=generic_logits)
        return EvalResult([*result.evals, *from_generic], result.failures, result.validations)


def open_session(
    cfg: FedConfig, *, make_engine: EngineFactory, reporter: Reporter | None = None
) -> Session:
    """Load the data, split it over the clients, build the algorithm and the engine."""
    accel, federation, algorithm = build_parts(cfg)
    on_client = reporter.advance if reporter is not None else None
    engine = make_engine(algorithm, federation, cfg=cfg, accel=accel, on_client=on_client)
    server = Workspace(algorithm, accel)
    return Session(cfg, accel, federation, algorithm, engine, server, reporter or SilentReporter())


def failure_list(failures: list[ClientFailure]) -> list[dict[str, Any]]:
    """Failed clients as a record lists them."""
    return [{"client": f.client_id, "error": f.error} for f in failures]


def too_few_clients(
    *, round: int, sampled: int, minimum: int, failures: list[ClientFailure]
) -> FederationError:
    """Why a round could not be aggregated, client by client."""
    answered = sampled - len(failures)
    reasons = "; ".join(f"client {f.client_id}: {f.error}" for f in failures)
    return FederationError(
        f"round {round + 1}: {answered} of {sampled} clients answered, fewer than "
        f"`min_clients` ({minimum}): {reasons}. Fix the clients and resume from the last "
        "checkpoint with `--resume RUN_DIR`; to go on with fewer, lower `min_clients` in "
        "RUN_DIR/config.yaml first (a resume takes no overrides)."
    )


def train_numbers(updates: list[ClientUpdate]) -> dict[str, float]:
    """Image-weighted training loss and accuracy over a round's clients."""
    images = sum(u.metrics.get("train_images", 0) for u in updates)

    def mean(key: str) -> float:
        total = sum(u.metrics.get(key, 0.0) * u.metrics.get("train_images", 0) for u in updates)
        return total / images if images else math.nan

    return {
        "train_loss": mean("train_loss"),
        "train_acc": mean("train_acc"),
        "train_images": images,
        "train_seconds": sum(u.metrics.get("train_seconds", 0.0) for u in updates),
    }
