"""What a client does, for every algorithm and every engine: train its phases, predict.

`run_phases` is the one local-training routine: each phase freezes what does not train,
builds a fresh optimiser over what does, and runs the core's `train_epoch` (so the
device, AMP, divergence checks and step logic are the centralised loop's). Randomness
comes from (seed, client, round) only, so a resumed run repeats every round exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn

from trustvision.config import OptimConfig
from trustvision.data.loader import BatchLoader
from trustvision.errors import DivergenceError
from trustvision.federated.algorithm import ClientContext, FederatedAlgorithm, Phase, seeded
from trustvision.federated.config import Fault, FedConfig
from trustvision.federated.data import ClientData, Federation
from trustvision.federated.messages import ClientEval, ClientUpdate, ClientValidation
from trustvision.federated.tensors import State, clone, drop, matches, select
from trustvision.seeds import derive_seed
from trustvision.train.loop import Accel, predict, train_epoch
from trustvision.train.optim import build_optimizer


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

    def personal_state(self, client_id: int, global_state: State, stored: State | None) -> State:
        """A client's personal state: `stored` where it has one, else the algorithm's initial
        one (before the client first trains), on this runner's device."""
        if stored is not None:
            return stored
        return clone(self.algorithm.init_client(client_id, global_state), device=self.accel.device)

    def fit(
        self,
        client_id: int,
        *,
        global_state: State,
        personal: State | None,
        round: int,
        lr: float,
    ) -> tuple[ClientUpdate, State]:
        """Load, train the algorithm's phases, split the result.

        `personal` is the client's personal state (None before it first trains). Returns the
        message for the server (global, non-frozen tensors) and the new personal state, which
        stays with the client. Raises ClientFault where `faults` say so.
        """
        rehearse_faults(self.faults, client_id=client_id, round=round)
        algorithm, data = self.algorithm, self.federation.clients[client_id]
        personal = self.personal_state(client_id, global_state, personal)
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
        self,
        client_id: int,
        *,
        global_state: State,
        personal: State | None,
        round: int,
        lr: float,
        local_test: bool = True,
        test_features: Tensor | None = None,
    ) -> tuple[ClientEval | None, ClientValidation]:
        """The client's validation counts, and its personalised logits on its local test set
        (None when `local_test` is False: the server reads them off the global model's).

        `test_features`, the global backbone's features of the whole balanced test set, spare
        a client that predicts with a head on them (`shares_features`) a pass of the
        backbone. Raises ClientFault where `faults` say so.
        """
        rehearse_faults(self.faults, client_id=client_id, round=round, stage="evaluate")
        data = self.federation.clients[client_id]
        personal = self.personal_state(client_id, global_state, personal)
        self.workspace.load({**global_state, **personal})
        self.workspace.net.eval()
        validation = self._validate(data, global_state=global_state, round=round, lr=lr)
        if not local_test or len(data.test_indices) == 0:
            return None, validation
        logits, labels = self._local_test_logits(data, test_features=test_features)
        seen = torch.from_numpy(data.class_counts > 0)
        return ClientEval(client_id, logits, labels, seen), validation

    def _validate(
        self, data: ClientData, *, global_state: State, round: int, lr: float
    ) -> ClientValidation:
        """Per-class counts on the validation images: the global predictors are counted before
        any fine-tuning, the client's own model after it (FedBABU fine-tunes before it predicts)."""
        unseen = ~torch.from_numpy(data.class_counts > 0).to(self.accel.device)
        outputs = partial(self._predictions, unseen=unseen)
        finetune = self.algorithm.finetunes and data.num_samples > 0
        correct = self._count_correct(partial(outputs, generic=True, own=not finetune), data)
        if finetune:
            self._finetune(data, global_state=global_state, round=round, lr=lr)
            correct |= self._count_correct(partial(outputs, generic=False, own=True), data)
        total = np.bincount(data.val_labels.cpu().numpy(), minlength=self.federation.num_classes)
        return ClientValidation(data.client_id, total.astype(np.int64), correct)

    def _predictions(
        self, x: Tensor, *, unseen: Tensor, generic: bool, own: bool
    ) -> dict[str, Tensor]:
        """The global predictors' logits (`generic`) and the client's own, masked and not (`own`)."""
        algorithm, net = self.algorithm, self.workspace.net
        shared = algorithm.shares_features
        h = algorithm.features(net, x) if generic or shared else None
        out = algorithm.generic_heads(net, h) if generic and h is not None else {}
        if own:
            mine = (
                algorithm.personal_head(net, h)
                if shared and h is not None
                else algorithm.personal_logits(net, x)
            )
            out |= {"local_unmasked": mine, "local_masked": mine.masked_fill(unseen, -math.inf)}
        return out

    def _finetune(self, data: ClientData, *, global_state: State, round: int, lr: float) -> None:
        """The algorithm's local training before the client predicts, seeded by (client, round)."""
        ctx = client_context(data, round=round, global_state=global_state, device=self.accel.device)
        loader = self._train_loader(data, "finetune", round)
        torch.manual_seed(derive_seed(self.seed, "torch-finetune", round, data.client_id))
        self._run(self.algorithm.finetune_phases(ctx), loader, lr)
        self.workspace.net.eval()

    def _local_test_logits(
        self, data: ClientData, *, test_features: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """The client's logits and labels on its local test set (on the CPU)."""
        algorithm, net = self.algorithm, self.workspace.net
        if test_features is not None and algorithm.shares_features:
            index = torch.as_tensor(data.test_indices, device=test_features.device)
            with torch.no_grad(), self.accel.autocast():
                logits = algorithm.personal_head(net, test_features[index]).float().cpu()
            return logits, self.federation.test_labels[index].cpu()
        logits, labels, _ = predict(
            lambda x: algorithm.personal_logits(net, x),
            self.federation.client_test_loader(data).epoch(0),
            accel=self.accel,
        )
        return logits, labels

    def _count_correct(
        self, outputs: Callable[[Tensor], dict[str, Tensor]], data: ClientData
    ) -> dict[str, np.ndarray]:
        """Per-class right predictions of every named output on the client's validation images
        (empty without validation images: the server counts a missing name as zeros)."""
        num_classes = self.federation.num_classes
        counts: dict[str, Tensor] = {}
        with torch.no_grad(), self.accel.autocast():
            for x, y in data.val_loader(self.federation.spec).epoch(0):
                for name, logits in outputs(self.accel.prepare_batch(x)).items():
                    right = torch.bincount(y[logits.argmax(1) == y], minlength=num_classes)
                    counts[name] = counts.get(name, 0) + right
        return {name: c.cpu().numpy().astype(np.int64) for name, c in counts.items()}

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
