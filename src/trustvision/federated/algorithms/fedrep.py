"""FedRep: Collins et al., "Exploiting Shared Representations for Personalized Federated
Learning", ICML 2021, Algorithm 1: each round a client first trains its personal head for
tau_h epochs with the shared representation fixed, then the representation for tau epochs
with the head fixed; the server averages the representation only.
"""

from __future__ import annotations

from pydantic import Field

from trustvision.config import StrictModel
from trustvision.federated.algorithm import ClientContext, Phase, register_algorithm
from trustvision.federated.algorithms.fedper import FedPer


class FedRepOptions(StrictModel):
    """Epochs of head training before the body's `local_epochs`."""

    head_epochs: int = Field(default=10, ge=1)  # the paper's tau_h for CIFAR


@register_algorithm("fedrep")
class FedRep(FedPer):
    """FedPer with head-then-body local training."""

    Options = FedRepOptions

    def phases(self, ctx: ClientContext) -> list[Phase]:
        objective = self.objective(ctx)
        return [
            Phase(train=("model.head",), objective=objective, epochs=self.options.head_epochs),
            Phase(
                train=("model",),
                fix=("model.head",),
                objective=objective,
                epochs=self.setup.local_epochs,
            ),
        ]
