"""FedLC: Zhang et al., "Federated Learning with Label Distribution Skew via Logits
Calibration", ICML 2022, Eq. (9): each client trains on CE of the calibrated logits
z_c - tau * n_{k,c}^(-1/4), n_{k,c} its training images of class c (classes it lacks drop
out of the softmax); aggregation and prediction are FedAvg's (uncalibrated logits).
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from trustvision.config import StrictModel
from trustvision.federated.algorithm import ClientContext, Modules, register_algorithm
from trustvision.federated.algorithms.fedavg import FedAvg
from trustvision.federated.losses import calibrated_ce
from trustvision.train.loop import Objective


class FedLCOptions(StrictModel):
    """FedLC's calibration strength."""

    tau: float = Field(default=1.0, ge=0)


@register_algorithm("fedlc")
class FedLC(FedAvg):
    """FedAvg with logit-calibrated local cross-entropy."""

    Options = FedLCOptions

    def objective(self, ctx: ClientContext) -> Objective:
        tau, counts = self.options.tau, ctx.class_counts

        def loss(net: Modules, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            logits = net["model"](x)
            return calibrated_ce(logits, y, counts, tau=tau), logits

        return loss
