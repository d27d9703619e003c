"""The protocol every federated algorithm follows, its FedAvg-shaped defaults, and the registry.

An algorithm is described by data and small pure functions, never by a training loop:

- `build()` names its modules (`model`, plus heads such as `phi`); the keys of their
  `state_dict` are the names of every tensor the algorithm has.
- `personal` and `frozen` are key prefixes: personal tensors never leave their client;
  frozen global tensors are set by the server once and no client sends them back.
- `phases(ctx)` says what a client does in a round: for each phase, which tensors train,
  for how many epochs, and the per-batch objective `(modules, x, y) -> (loss, logits)`.
  Engines run the phases (federated/client.py); a future engine may run many clients at
  once with `torch.func` over the same objectives.
- `aggregate` combines the clients' updates on the server (pure, over named tensors).
- `generic_logits` / `personal_logits` predict with the loaded modules, as heads
  (`generic_heads`, `personal_head`) on the global backbone's `features`; `modes` names
  the further global predictors reports show beside `generic` (FedLoGe's `universal`).

Engines (federated/engines/) depend on this protocol only, never on a concrete algorithm.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import Tensor, nn

from trustvision.config import StrictModel
from trustvision.errors import ConfigError
from trustvision.federated.tensors import State, drop, merge_into, select, weighted_average
from trustvision.models.base import ImageClassifier
from trustvision.seeds import derive_seed
from trustvision.train.loop import Objective

# An algorithm's modules: the nn.ModuleDict its `build` returns. Typed `Any` because torch
# types attribute access on modules (`net["model"].features`) as `Tensor | Module`.
Modules = Any
AlgorithmT = TypeVar("AlgorithmT", bound=type)


class NoOptions(StrictModel):
    """The options section of an algorithm that has none."""


@dataclass(frozen=True)
class Phase:
    """A stretch of local training: the tensors under `train` (less those under `fix`) train
    on `objective` for `epochs` passes over the client's data, with a fresh optimiser."""

    train: tuple[str, ...]
    objective: Objective
    epochs: int
    fix: tuple[str, ...] = ()


@dataclass(frozen=True)
class Setup:
    """What an algorithm is built from; the same on the server and on every client."""

    model_fn: Callable[[], ImageClassifier]  # a fresh model (features, head, feature_dim)
    num_classes: int
    seed: int
    local_epochs: int
    options: BaseModel = field(default_factory=NoOptions)
    label_smoothing: float = 0.0


@dataclass(frozen=True)
class ClientContext:
    """What a client knows when it trains: who it is, the round, its data, the global state."""

    client_id: int
    round: int
    class_counts: Tensor  # (C,) int64 training images per class, on the training device
    global_state: State  # the global state the round started from (read-only: an anchor)


class FederatedAlgorithm(Protocol):
    """What an engine may call. `Algorithm` below implements it with FedAvg's behaviour."""

    name: ClassVar[str]
    personal: ClassVar[tuple[str, ...]]
    frozen: ClassVar[tuple[str, ...]]
    modes: ClassVar[dict[str, str]]
    has_generic: ClassVar[bool]
    finetunes: ClassVar[bool]

    @property
    def personalised(self) -> bool: ...
    @property
    def shares_features(self) -> bool: ...
    def build(self) -> nn.ModuleDict: ...
    def init_global(self) -> State: ...
    def init_client(self, client_id: int, global_state: State) -> State: ...
    def phases(self, ctx: ClientContext) -> list[Phase]: ...
    def finetune_phases(self, ctx: ClientContext) -> list[Phase]: ...
    def aggregate(self, global_state: State, updates: Sequence[tuple[State, float]]) -> State: ...
    def features(self, net: Modules, x: Tensor) -> Tensor: ...
    def generic_heads(self, net: Modules, h: Tensor) -> dict[str, Tensor]: ...
    def personal_head(self, net: Modules, h: Tensor) -> Tensor: ...
    def generic_logits(self, net: Modules, x: Tensor) -> Tensor: ...
    def personal_logits(self, net: Modules, x: Tensor) -> Tensor: ...


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's CPU generator seeded, restoring the caller's state after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def tensors_of(net: nn.Module) -> State:
    """Detached copies of every parameter and buffer of `net`, keyed as its state_dict."""
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


class Algorithm:
    """FedAvg's behaviour (McMahan et al. 2017): one model, local SGD, sample-weighted mean.

    Subclasses override only what differs: `Options` (their config section), `build`,
    `personal` / `frozen`, `objective` or `phases`, `aggregate`, and the predictors.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[StrictModel]] = NoOptions
    personal: ClassVar[tuple[str, ...]] = ()  # key prefixes kept by each client
    frozen: ClassVar[tuple[str, ...]] = ()  # global key prefixes no client changes
    # Global predictors `generic_heads` returns beside `generic` that reports show, name ->
    # label (FedLoGe: {"universal": "universal (SSE-C)"}); any other head is logged only.
    modes: ClassVar[dict[str, str]] = {}
    trains: ClassVar[tuple[str, ...]] = ("model",)  # what the default phase trains
    has_generic: ClassVar[bool] = True  # whether a global model predicts without a client
    finetunes: ClassVar[bool] = False  # whether personalising needs local training first

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.options: Any = setup.options

    @property
    def personalised(self) -> bool:
        """Whether a client predicts differently from the global model."""
        return bool(self.personal) or self.finetunes

    # --- structure -------------------------------------------------------------------------

    def build(self) -> nn.ModuleDict:
        """The modules, freshly initialised from torch's global generator."""
        return nn.ModuleDict({"model": self.setup.model_fn()})

    def init_global(self) -> State:
        """The global state of round 0, from (seed, "init")."""
        with seeded(derive_seed(self.setup.seed, "init")):
            net = self.build()
        return drop(tensors_of(net), self.personal)

    def init_client(self, client_id: int, global_state: State) -> State:
        """A client's personal state before it first trains, from (seed, "init-client", id)."""
        if not self.personal:
            return {}
        with seeded(derive_seed(self.setup.seed, "init-client", client_id)):
            net = self.build()
        return select(tensors_of(net), self.personal)

    # --- client ----------------------------------------------------------------------------

    def ce(self, logits: Tensor, y: Tensor) -> Tensor:
        """Cross-entropy with the configured label smoothing."""
        return F.cross_entropy(logits, y, label_smoothing=self.setup.label_smoothing)

    def objective(self, ctx: ClientContext) -> Objective:
        """The per-batch loss of the default phase: cross-entropy of the model."""

        def loss(net: Modules, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            logits = net["model"](x)
            return self.ce(logits, y), logits

        return loss

    def phases(self, ctx: ClientContext) -> list[Phase]:
        """One phase: everything under `trains` trains for `local_epochs` (frozen keys stay fixed)."""
        return [
            Phase(train=self.trains, objective=self.objective(ctx), epochs=self.setup.local_epochs)
        ]

    def finetune_phases(self, ctx: ClientContext) -> list[Phase]:
        """Local training done before a client predicts (e.g. FedBABU); none by default."""
        return []

    # --- server ----------------------------------------------------------------------------

    def aggregate(self, global_state: State, updates: Sequence[tuple[State, float]]) -> State:
        """The sample-weighted mean of the updates over the global state (a new dict)."""
        updates = [(u, w) for u, w in updates if w > 0]
        if not updates:
            return dict(global_state)
        average = weighted_average([u for u, _ in updates], [w for _, w in updates])
        return merge_into(global_state, average)

    # --- inference -------------------------------------------------------------------------
    # Predictors are heads on the global backbone's features, so an evaluation computes the
    # features of an image once and applies every head to them. An algorithm changes a head
    # (`generic_heads`, `personal_head`); one whose clients predict with more than a head of
    # their own (Ditto's personal model) overrides `personal_logits` instead.

    def features(self, net: Modules, x: Tensor) -> Tensor:
        """The global backbone's features of a batch."""
        return net["model"].features(x)

    def generic_heads(self, net: Modules, h: Tensor) -> dict[str, Tensor]:
        """Every global predictor's logits from the features `h`: `generic` (where there is a
        global model) and further named modes worth reporting (e.g. FedLoGe's `universal`)."""
        return {"generic": net["model"].head(h)} if self.has_generic else {}

    def personal_head(self, net: Modules, h: Tensor) -> Tensor:
        """A client's logits from the features `h` (global and personal tensors loaded)."""
        return net["model"].head(h)

    def generic_logits(self, net: Modules, x: Tensor) -> Tensor:
        """Logits of the global model."""
        return self.generic_heads(net, self.features(net, x))["generic"]

    def personal_logits(self, net: Modules, x: Tensor) -> Tensor:
        """Logits of a client's model (global and personal tensors loaded)."""
        return self.personal_head(net, self.features(net, x))

    @property
    def shares_features(self) -> bool:
        """Whether a client predicts with `personal_head` on the global backbone's features
        (no fine-tuning, no model of its own): then the features of an image seen by several
        clients are computed once."""
        return not self.finetunes and type(self).personal_logits is Algorithm.personal_logits


# --- registry ----------------------------------------------------------------------------------

_ALGORITHMS: dict[str, type[Algorithm]] = {}


def register_algorithm(name: str) -> Callable[[type[Algorithm]], type[Algorithm]]:
    """Class decorator: make an algorithm known under `name` (once)."""

    def decorate(cls: type[Algorithm]) -> type[Algorithm]:
        if name in _ALGORITHMS:
            raise ValueError(f"algorithm `{name}` is already registered")
        cls.name = name
        _ALGORITHMS[name] = cls
        return cls

    return decorate


def list_algorithms() -> list[str]:
    """Names of every registered algorithm, sorted."""
    _load_all()
    return sorted(_ALGORITHMS)


def reported_modes() -> dict[str, str]:
    """Every registered algorithm's `modes` (name -> label), for reports that show runs of
    several algorithms: a run's metrics hold `NAME_acc` for its own modes only."""
    _load_all()
    return {
        name: label for a in sorted(_ALGORITHMS) for name, label in _ALGORITHMS[a].modes.items()
    }


def algorithm_class(name: str) -> type[Algorithm]:
    """The class registered as `name`; an unknown name is a ConfigError listing the known ones."""
    _load_all()
    if name not in _ALGORITHMS:
        known = ", ".join(f"`{n}`" for n in sorted(_ALGORITHMS))
        raise ConfigError(f"unknown algorithm `{name}`; choose one of: {known}")
    return _ALGORITHMS[name]


def _load_all() -> None:
    import trustvision.federated.algorithms  # noqa: F401  (registers every algorithm)
