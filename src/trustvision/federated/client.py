"""What a client does, for every algorithm and every engine: train its phases, predict.

`run_phases` is the one local-training routine: each phase freezes what does not train,
builds a fresh optimiser over what does, and runs the core's `train_epoch` (so the
device, AMP, divergence checks and step logic are the centralised loop's). Randomness
comes from (seed, client, round) only, so a resumed run repeats every round exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trustvision.config import OptimConfig
from trustvision.data.loader import BatchLoader, derive_seed
from trustvision.errors import DivergenceError
from trustvision.federated.algorithm import ClientContext, FederatedAlgorithm, Phase, seeded
from trustvision.federated.config import Fault, FedConfig
from trustvision.federated.data import ClientData, Federation
from trustvision.federated.tensors import State, drop, matches, select
from trustvision.train.loop import Accel, predict, train_epoch
from trustvision.train.optim import build_optimizer


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


class ClientFault(RuntimeError):
    """A failure the config's `faults` rehearse."""


def rehearse_faults(
    faults: Iterable[Fault], *, client_id: int, round: int, stage: str = "fit"
) -> None:
    """Raise ClientFault if `faults` name this client in this (0-based) round and stage."""
    if any(f.client == client_id and f.round == round + 1 and f.stage == stage for f in faults):
        raise ClientFault(
            f"client {client_id} fails in round {round + 1} ({stage}), as `faults` asks"
        )


@dataclass(frozen=True)
class ClientEval:
    """A client's predictions on its local test set (CPU), and which classes it trained on."""

    client_id: int
    logits: Tensor
    labels: Tensor
    seen: Tensor  # (C,) bool: classes with at least one training image at this client


@dataclass(frozen=True)
class EvalResult:
    """What came back from an evaluation's clients: predictions, and who failed to answer."""

    evals: list[ClientEval]
    failures: list[ClientFailure]


class Workspace:
    """An algorithm's modules on one device, loaded from named tensors and read back into them."""

    def __init__(self, algorithm: FederatedAlgorithm, accel: Accel) -> None:
        with seeded(0):  # the values are always overwritten by `load`
            net = algorithm.build()
        self.net = accel.prepare_model(net)
        self.keys = frozenset(self.net.state_dict())

    def load(self, state: State) -> None:
        """Copy `state` into the modules; keys it lacks keep their values."""
        unknown = set(state) - self.keys
        if unknown:
            raise KeyError(f"state has keys the modules lack: {sorted(unknown)[:5]}")
        self.net.load_state_dict(state, strict=False)

    def read(self) -> State:
        """Detached copies of every tensor."""
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}


def set_trainable(
    net: nn.Module, *, train: Sequence[str], fix: Sequence[str]
) -> list[nn.Parameter]:
    """Let exactly the parameters under `train` and not under `fix` require gradients."""
    chosen = []
    for name, param in net.named_parameters():
        param.requires_grad_(matches(name, train) and not matches(name, fix))
        if param.requires_grad:
            chosen.append(param)
    return chosen


def build_phase_optimizer(
    params: list[nn.Parameter], *, optim: OptimConfig, lr: float
) -> torch.optim.Optimizer:
    """The configured optimiser at this round's `lr`; no weight decay on biases and norms."""
    groups = [
        {"params": [p for p in params if p.ndim > 1], "decay": True},
        {"params": [p for p in params if p.ndim <= 1], "decay": False},
    ]
    groups = [g for g in groups if g["params"]]
    return build_optimizer(optim.model_copy(update={"lr": lr}), groups)


def run_phases(
    net: nn.Module,
    phases: Sequence[Phase],
    *,
    epoch_batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]],
    optim: OptimConfig,
    lr: float,
    accel: Accel,
    always_fixed: Sequence[str] = (),
) -> dict[str, float]:
    """Train `phases` in order; epochs are numbered across phases for `epoch_batches(epoch)`."""
    images, epoch = 0, 0
    loss_sum, correct_sum, seconds = 0.0, 0.0, 0.0
    for phase in phases:
        params = set_trainable(net, train=phase.train, fix=(*phase.fix, *always_fixed))
        if not params:
            raise ValueError(f"phase trains {phase.train} but no parameter there may train")
        optimizer = build_phase_optimizer(params, optim=optim, lr=lr)
        for _ in range(phase.epochs):
            record = train_epoch(
                net,
                epoch_batches(epoch),
                optimizer=optimizer,
                objective=phase.objective,
                accel=accel,
                grad_clip=optim.grad_clip,
            )
            epoch += 1
            n = int(record["train_images"])
            images += n
            loss_sum += record["train_loss"] * n
            correct_sum += record["train_acc"] * n
            seconds += record["train_seconds"]
    return {
        "train_loss": loss_sum / max(images, 1),
        "train_acc": correct_sum / max(images, 1),
        "train_images": images,
        "train_seconds": seconds,
    }


def client_context(
    data: ClientData, *, round: int, global_state: State, device: torch.device
) -> ClientContext:
    """The context an algorithm sees on client `data.client_id` in `round`."""
    counts = torch.as_tensor(data.class_counts, dtype=torch.int64, device=device)
    return ClientContext(
        client_id=data.client_id, round=round, class_counts=counts, global_state=global_state
    )


class ClientRunner:
    """A client's round and its local evaluation, for any client of one federation.

    Every engine owns one (the in-process engine for all its clients, a Flower SuperNode for
    its own) and hands it the states; the runner keeps none of them.
    """

    def __init__(
        self,
        algorithm: FederatedAlgorithm,
        federation: Federation,
        *,
        optim: OptimConfig,
        seed: int,
        accel: Accel,
        faults: Iterable[Fault] = (),
    ) -> None:
        self.algorithm = algorithm
        self.federation = federation
        self.optim = optim
        self.seed = seed
        self.accel = accel
        self.faults = tuple(faults)
        self.workspace = Workspace(algorithm, accel)

    @classmethod
    def for_config(
        cls,
        cfg: FedConfig,
        algorithm: FederatedAlgorithm,
        federation: Federation,
        accel: Accel,
    ) -> ClientRunner:
        """The runner of a run's config (optimiser, seed and rehearsed faults)."""
        return cls(
            algorithm, federation, optim=cfg.optim, seed=cfg.seed, accel=accel, faults=cfg.faults
        )

    def fit(
        self, client_id: int, *, global_state: State, personal: State, round: int, lr: float
    ) -> tuple[ClientUpdate, State]:
        """Load, train the algorithm's phases, split the result.

        Returns the message for the server (global, non-frozen tensors) and the new personal
        state, which stays with the client. Raises ClientFault where `faults` say so.
        """
        rehearse_faults(self.faults, client_id=client_id, round=round)
        algorithm, data = self.algorithm, self.federation.clients[client_id]
        self.workspace.load({**global_state, **personal})
        metrics: dict[str, float] = {"train_images": 0}
        if data.num_samples > 0:
            ctx = client_context(
                data, round=round, global_state=global_state, device=self.accel.device
            )
            loader = self._train_loader(data, "client", round)
            torch.manual_seed(derive_seed(self.seed, "torch", round, client_id))  # dropout
            try:
                metrics = self._run(
                    algorithm.phases(ctx), loader, lr, always_fixed=algorithm.frozen
                )
            except DivergenceError as err:
                raise DivergenceError(f"client {client_id} in round {round + 1}: {err}") from None
        state = self.workspace.read()
        shared = drop(state, (*algorithm.personal, *algorithm.frozen))
        update = ClientUpdate(
            client_id=client_id, update=shared, weight=float(data.num_samples), metrics=metrics
        )
        return update, select(state, algorithm.personal)

    def evaluate(
        self, client_id: int, *, global_state: State, personal: State, round: int, lr: float
    ) -> ClientEval:
        """Personalised logits on the client's local test set (fine-tuning first if the
        algorithm does). Raises ClientFault where `faults` say so."""
        rehearse_faults(self.faults, client_id=client_id, round=round, stage="evaluate")
        algorithm, data = self.algorithm, self.federation.clients[client_id]
        net = self.workspace.net
        self.workspace.load({**global_state, **personal})
        if algorithm.finetunes and data.num_samples > 0:
            ctx = client_context(
                data, round=round, global_state=global_state, device=self.accel.device
            )
            loader = self._train_loader(data, "finetune", round)
            torch.manual_seed(derive_seed(self.seed, "torch-finetune", round, client_id))
            self._run(algorithm.finetune_phases(ctx), loader, lr)
        net.eval()
        logits, labels, _ = predict(
            lambda x: algorithm.personal_logits(net, x),
            self.federation.client_test_loader(data).epoch(0),
            accel=self.accel,
        )
        seen = torch.from_numpy(data.class_counts > 0)
        return ClientEval(client_id=client_id, logits=logits, labels=labels, seen=seen)

    def _train_loader(self, data: ClientData, purpose: str, round: int) -> BatchLoader:
        seed = derive_seed(self.seed, purpose, data.client_id, round)
        return data.train_loader(self.federation.spec, seed=seed)

    def _run(
        self,
        phases: Sequence[Phase],
        loader: BatchLoader,
        lr: float,
        *,
        always_fixed: Sequence[str] = (),
    ) -> dict[str, float]:
        return run_phases(
            self.workspace.net,
            phases,
            epoch_batches=loader.epoch,
            optim=self.optim,
            lr=lr,
            accel=self.accel,
            always_fixed=always_fixed,
        )


def evals_from_generic(federation: Federation, *, generic_logits: Tensor) -> EvalResult:
    """Every client with a local test set, for an algorithm that does not personalise: a
    client's model is the global one, so its local logits are read off `generic_logits`."""
    labels = federation.test_labels.cpu()
    evals = []
    for client in federation.clients:
        if len(client.test_indices) == 0:
            continue
        index = torch.as_tensor(client.test_indices)
        seen = torch.from_numpy(client.class_counts > 0)
        evals.append(ClientEval(client.client_id, generic_logits[index], labels[index], seen))
    return EvalResult(evals=evals, failures=[])
