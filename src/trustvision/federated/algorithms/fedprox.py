"""FedProx: Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020, Eq. (2):
each client minimises h_k(w; w^t) = F_k(w) + mu/2 ||w - w^t||^2, w^t the global weights it
received; aggregation is FedAvg's.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

from trustvision.config import StrictModel
from trustvision.federated.algorithm import ClientContext, Modules, register_algorithm
from trustvision.federated.algorithms.fedavg import FedAvg
from trustvision.federated.tensors import State
from trustvision.train.loop import Objective


class FedProxOptions(StrictModel):
    """FedProx's proximal weight."""

    mu: float = Field(default=0.01, ge=0)  # the paper searches {0.001, 0.01, 0.1, 1}


def proximal_term(module: nn.Module, anchor: State, *, prefix: str) -> Tensor:
    """sum ||w - w_anchor||^2 over the trainable parameters of `module` (keys `prefix.name`)."""
    terms = [
        (p - anchor[f"{prefix}.{name}"]).pow(2).sum()
        for name, p in module.named_parameters()
        if p.requires_grad
    ]
    return sum(terms, start=next(module.parameters()).new_zeros(()))


@register_algorithm("fedprox")
class FedProx(FedAvg):
    """FedAvg plus the proximal term mu/2 ||w - w^t||^2 in every client's loss."""

    Options = FedProxOptions

    def objective(self, ctx: ClientContext) -> Objective:
        base, mu, anchor = super().objective(ctx), self.options.mu, ctx.global_state

        def loss(net: Modules, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            value, logits = base(net, x, y)
            return value + mu / 2 * proximal_term(net["model"], anchor, prefix="model"), logits

        return loss
