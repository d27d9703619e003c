"""`trustvision fed run` config: the core's data/model/optim sections plus the federation's knobs.

Defaults are FedLoGe's paper setting (CIFAR-10-LT, ResNet-18, 40 clients, 30% a round,
batch 8, 5 local epochs, SGD lr 0.03 momentum 0.5, no weight decay, 500 rounds). The
optimiser's schedule runs over rounds: the learning rate of round r is
`optim.lr * factor(r / rounds)`, constant within a round.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from trustvision.config import (
    AugmentConfig,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunName,
    RunSettings,
    StrictModel,
)
from trustvision.errors import ConfigError


class AlgorithmConfig(StrictModel):
    """Which algorithm, and its own options section (checked against that algorithm)."""

    name: str = "fedavg"
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _resolve_options(cls, data: Any) -> Any:
        """Accept `algorithm: fedprox`; fill and check `options` with the algorithm's model."""
        if isinstance(data, str):
            data = {"name": data}
        if not isinstance(data, dict):
            return data
        from trustvision.federated.algorithm import algorithm_class

        name = data.get("name", "fedavg")
        if not isinstance(name, str):
            return data  # `name`'s own validator says it must be a string
        try:
            options_model = algorithm_class(name).Options
        except ConfigError:
            return data  # `name`'s own validator reports it, with the known names
        try:
            options = options_model.model_validate(data.get("options") or {})
        except ValidationError as err:
            raise ValueError(_describe_options(name, options_model, err)) from None
        return {**data, "options": options.model_dump(mode="json")}

    @field_validator("name")
    @classmethod
    def _known_name(cls, name: str) -> str:
        from trustvision.federated.algorithm import algorithm_class

        try:
            algorithm_class(name)
        except ConfigError as err:
            raise ValueError(str(err)) from None
        return name

    def parsed_options(self) -> StrictModel:
        """The options as the algorithm's own typed model."""
        from trustvision.federated.algorithm import algorithm_class

        return algorithm_class(self.name).Options.model_validate(self.options)


def _describe_options(name: str, model: type[StrictModel], err: ValidationError) -> str:
    known = ", ".join(f"`{k}`" for k in model.model_fields) or "none"
    problems = []
    for problem in err.errors():
        where = ".".join(str(p) for p in problem["loc"]) or "(options)"
        reason = "unknown option" if problem["type"] == "extra_forbidden" else problem["msg"]
        problems.append(f"`options.{where}`: {reason}")
    hint = ""
    if any(p["type"] == "extra_forbidden" for p in err.errors()):
        hint = "; to switch algorithms and drop the old options, override `algorithm=NAME`"
    return f"algorithm `{name}`: {'; '.join(problems)} (its options: {known}){hint}"


PAPER_DATA = DataConfig(
    name="cifar10",
    imbalance_factor=100,
    batch_size=8,
    eval_batch_size=500,
    augment=AugmentConfig(crop_padding=4, hflip=True),
)
PAPER_OPTIM = OptimConfig(
    name="sgd", lr=0.03, momentum=0.5, nesterov=False, weight_decay=0.0, schedule="constant"
)


class FlowerConfig(StrictModel):
    """The `flower` engine: Ray's resources in simulation, and how long a round waits."""

    workers: int = Field(default=1, ge=1)  # clients trained at once in simulation (Ray actors)
    cpus_per_client: float = Field(default=1.0, gt=0)  # Ray CPUs each actor holds
    timeout: float | None = Field(default=None, gt=0)  # seconds a round waits; None: forever
    connect_timeout: float = Field(default=120.0, gt=0)  # seconds to wait for every SuperNode
    poll_interval: float = Field(default=0.1, gt=0)  # seconds between the server's reply checks


class Fault(StrictModel):
    """A rehearsed failure: client `client` raises in round `round` (1-based), as a crash
    would, while it trains (`fit`) or while it predicts its local test set (`evaluate`)."""

    client: int = Field(ge=0)
    round: int = Field(ge=1)
    stage: Literal["fit", "evaluate"] = "fit"


class FedConfig(RunSettings):
    """`trustvision fed run`: one algorithm on a long-tailed, Dirichlet-partitioned data set."""

    experiment: ClassVar[str] = "fed"

    name: RunName = "fed"
    amp: bool = True  # bfloat16 autocast, on CUDA only
    channels_last: bool = True  # on every device: docs/results/memory-format.md
    engine: Literal["inprocess", "flower"] = "inprocess"
    num_clients: int = Field(default=40, ge=1)
    participation: float = Field(default=0.3, gt=0, le=1)  # fraction of clients each round
    rounds: int = Field(default=500, ge=1)
    local_epochs: int = Field(default=5, ge=1)
    alpha: float = Field(default=0.5, gt=0)  # Dirichlet concentration of the client split
    eval_every: int = Field(default=10, ge=1)  # rounds; the last round is always evaluated
    checkpoint_every: int = Field(default=10, ge=1)  # rounds; the last round is always saved
    mask_unseen: bool = True  # headline local accuracy masks classes a client never saw
    min_clients: int = Field(default=1, ge=1)  # answers a round needs; fewer stop the run
    faults: tuple[Fault, ...] = ()  # rehearsed client failures (fault-tolerance tests, drills)
    flower: FlowerConfig = FlowerConfig()
    data: DataConfig = PAPER_DATA
    model: ModelConfig = ModelConfig(name="resnet18")
    optim: OptimConfig = PAPER_OPTIM
    algorithm: AlgorithmConfig = AlgorithmConfig()

    @property
    def clients_per_round(self) -> int:
        """`max(floor(participation * num_clients), 1)`, as FedLoGe's code."""
        return max(int(self.participation * self.num_clients + 1e-9), 1)  # 0.29 * 100 is 28.99..

    @model_validator(mode="after")
    def _reachable_minimum(self) -> FedConfig:
        if self.min_clients > self.clients_per_round:
            raise ValueError(
                f"`min_clients` is {self.min_clients} but a round samples only "
                f"{self.clients_per_round} clients: lower it or raise `participation`"
            )
        unreachable = [
            f"faults[{i}] (client {f.client}, round {f.round})"
            for i, f in enumerate(self.faults)
            if f.client >= self.num_clients or f.round > self.rounds
        ]
        if unreachable:
            raise ValueError(
                f"{', '.join(unreachable)} can never happen: clients are numbered 0 to "
                f"{self.num_clients - 1} and rounds 1 to {self.rounds}"
            )
        return self
