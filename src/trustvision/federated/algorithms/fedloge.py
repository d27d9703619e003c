"""FedLoGe: Xiao et al., "FedLoGe: Joint Local and Generic Federated Learning under Long-tailed
Data", ICLR 2024 (arXiv 2401.08977), as read from the authors' code (shared METHODS.md, sec. 1).

SSE-C: a static sparse ETF classifier, built once on the server from the seed and frozen.
GLA-FR, every client, every batch, with h = f(x):
  1. backbone: CE(SSE-C(h), y);  2. global auxiliary head psi: CE(psi(h.detach()), y);
  3. personal head phi_k: CE(phi_k(h.detach()), y), phi_k never leaves client k.
The server averages the backbone and psi by sample counts (FedAvg).
Inference: universal `SSE-C(h)`; generic `psi_hat_c = scale * psi_c / ||psi_c||` (bias kept);
personalised `phi_k(h) + psi_tilde_k(h)` with `psi_tilde_kc = psi_c * ||phi_kc||` (norm
transfer, psi's bias kept). Masking of unseen classes is the evaluation's, the same for
every method (`mask_unseen`).

Choices of ours: SSE-C has no bias (the authors' code keeps PyTorch's untrained random
bias); psi is the model's own head (`model.head`), so `model(x)` is psi's raw prediction.
The three losses act on disjoint parameters (features are detached for both heads), so one
optimiser step on their sum equals the authors' three optimisers with the same settings.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from trustvision.config import StrictModel
from trustvision.federated.algorithm import (
    Algorithm,
    ClientContext,
    Modules,
    register_algorithm,
)
from trustvision.federated.etf import sparse_etf
from trustvision.federated.tensors import State
from trustvision.seeds import derive_seed
from trustvision.train.loop import Objective


class FedLoGeOptions(StrictModel):
    """FedLoGe's constants, with the authors' defaults."""

    sparsity: float = Field(default=0.6, ge=0, lt=1)  # fraction of SSE-C entries zeroed
    norm_target: float = Field(default=0.1, gt=0)  # SSE-C class-vector norm
    generic_scale: float = Field(default=1.7, gt=0)  # norm of every psi_hat class vector
    ssec_steps: int = Field(default=10_000, ge=0)  # Adam steps re-optimising SSE-C
    ssec_lr: float = Field(default=1e-4, gt=0)


@register_algorithm("fedloge")
class FedLoGe(Algorithm):
    """SSE-C-trained backbone, global auxiliary head psi, personal heads phi_k."""

    Options = FedLoGeOptions
    personal = ("phi",)
    frozen = ("ssec",)
    modes: ClassVar[dict[str, str]] = {"universal": "universal (SSE-C)"}
    trains = ("model", "phi")  # the backbone, psi (= model.head) and phi; never SSE-C

    def build(self) -> nn.ModuleDict:
        model = self.setup.model_fn()
        dim, classes = model.feature_dim, self.setup.num_classes
        ssec = nn.Linear(dim, classes, bias=False)
        ssec.weight.requires_grad_(False)
        return nn.ModuleDict({"model": model, "ssec": ssec, "phi": nn.Linear(dim, classes)})

    def init_global(self) -> State:
        """Round 0's state, with SSE-C built from (seed, "ssec") and stored as `ssec.weight`."""
        state = super().init_global()
        classes, dim = state["ssec.weight"].shape
        o = self.options
        matrix = sparse_etf(
            dim,
            classes,
            sparsity=o.sparsity,
            norm_target=o.norm_target,
            steps=o.ssec_steps,
            lr=o.ssec_lr,
            seed=derive_seed(self.setup.seed, "ssec"),
        )
        return {**state, "ssec.weight": matrix.T.contiguous()}

    def objective(self, ctx: ClientContext) -> Objective:
        """GLA-FR's three losses, summed; the reported logits are SSE-C's."""

        def loss(net: Modules, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            h = net["model"].features(x)
            logits = net["ssec"](h)
            h0 = h.detach()
            total = (
                self.ce(logits, y) + self.ce(net["model"].head(h0), y) + self.ce(net["phi"](h0), y)
            )
            return total, logits

        return loss

    def generic_heads(self, net: Modules, h: Tensor) -> dict[str, Tensor]:
        """psi_hat (`generic`: psi's class vectors rescaled to norm `generic_scale`), SSE-C
        (`universal`) and psi before rescaling (`aux`)."""
        psi = net["model"].head
        weight = self.options.generic_scale * F.normalize(psi.weight, dim=1)
        return {
            "generic": F.linear(h, weight, psi.bias),
            "universal": net["ssec"](h),
            "aux": psi(h),
        }

    def personal_head(self, net: Modules, h: Tensor) -> Tensor:
        """phi_k(h) + psi_tilde_k(h), psi_tilde_k's class vectors scaled by phi_k's norms."""
        psi, phi = net["model"].head, net["phi"]
        tilde = psi.weight * phi.weight.norm(dim=1, keepdim=True)
        return phi(h) + F.linear(h, tilde, psi.bias)
