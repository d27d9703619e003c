"""Ditto: Li et al., "Ditto: Fair and Robust Federated Learning Through Personalization",
ICML 2021, Algorithm 1: the global model trains as in FedAvg; each client also keeps a
personal model v_k trained on F_k(v) + lambda/2 ||v - w^t||^2 (Eq. 2), w^t the global
model it received this round; a client predicts with v_k.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

from trustvision.config import StrictModel
from trustvision.federated.algorithm import ClientContext, Modules, Phase, register_algorithm
from trustvision.federated.algorithms.fedavg import FedAvg
from trustvision.federated.algorithms.fedprox import proximal_term
from trustvision.federated.tensors import State, select
from trustvision.train.loop import Objective


class DittoOptions(StrictModel):
    """Ditto's regularisation towards the global model, and the personal model's epochs."""

    lam: float = Field(default=0.1, ge=0)
    personal_epochs: int | None = Field(default=None, ge=1)  # None: `local_epochs`


@register_algorithm("ditto")
class Ditto(FedAvg):
    """FedAvg plus a personal model per client, pulled towards the global one."""

    Options = DittoOptions
    personal = ("personal",)

    def build(self) -> nn.ModuleDict:
        return nn.ModuleDict({"model": self.setup.model_fn(), "personal": self.setup.model_fn()})

    def init_client(self, client_id: int, global_state: State) -> State:
        """The personal model starts as the global model the client first receives."""
        model = select(global_state, ("model",))
        return {"personal" + k.removeprefix("model"): v.detach().clone() for k, v in model.items()}

    def personal_objective(self, ctx: ClientContext) -> Objective:
        lam, anchor = self.options.lam, ctx.global_state

        def loss(net: Modules, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            logits = net["personal"](x)
            prox = proximal_term(net["personal"], anchor, prefix="model")
            return self.ce(logits, y) + lam / 2 * prox, logits

        return loss

    def phases(self, ctx: ClientContext) -> list[Phase]:
        epochs = self.options.personal_epochs or self.setup.local_epochs
        return [
            *super().phases(ctx),
            Phase(train=("personal",), objective=self.personal_objective(ctx), epochs=epochs),
        ]

    def personal_logits(self, net: Modules, x: Tensor) -> Tensor:
        return net["personal"](x)
