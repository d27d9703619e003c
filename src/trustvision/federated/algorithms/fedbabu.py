"""FedBABU: Oh et al., "FedBABU: Toward Enhanced Representation for Federated Image
Classification", ICLR 2022, Algorithm 1: the head keeps its random initialisation during
federated training (only the body is trained and averaged); to personalise, a client
fine-tunes the global model on its own data for tau_f epochs before predicting.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from trustvision.config import StrictModel
from trustvision.federated.algorithm import ClientContext, Phase, register_algorithm
from trustvision.federated.algorithms.fedavg import FedAvg


class FedBABUOptions(StrictModel):
    """Fine-tuning before a client predicts: how long, and which part."""

    finetune_epochs: int = Field(default=5, ge=0)  # the paper's tau_f
    finetune: Literal["full", "head"] = "full"


@register_algorithm("fedbabu")
class FedBABU(FedAvg):
    """FedAvg with a frozen random head, and local fine-tuning to personalise."""

    Options = FedBABUOptions
    frozen = ("model.head",)
    finetunes = True

    def finetune_phases(self, ctx: ClientContext) -> list[Phase]:
        if self.options.finetune_epochs == 0:
            return []
        train = ("model",) if self.options.finetune == "full" else ("model.head",)
        return [
            Phase(train=train, objective=self.objective(ctx), epochs=self.options.finetune_epochs)
        ]
