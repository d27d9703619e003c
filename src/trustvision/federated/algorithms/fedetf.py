"""FedETF: Li et al., "No Fear of Classifier Biases: Neural Collapse Inspired Federated
Learning with Synthetic and Fixed Classifier", ICCV 2023, read from the authors' code: the
features pass a learnable projection g (here the model's head, Linear(d, C)), are
L2-normalised and classified by a fixed C x C simplex ETF M with a learnable temperature
beta: z = beta * M^T g(h) / ||g(h)||; clients train with the balanced-softmax loss on their
class counts; the server averages everything but M. To personalise, a client fine-tunes
(CE) first M, then the projection, on its own data (the authors alternate this 20 times
with 3 epochs each at their own learning rates; `finetune_cycles` / `finetune_epochs` here,
at the round's learning rate).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from trustvision.config import StrictModel
from trustvision.federated.algorithm import (
    Algorithm,
    ClientContext,
    Modules,
    Phase,
    register_algorithm,
)
from trustvision.federated.etf import simplex_etf
from trustvision.federated.losses import balanced_softmax_ce
from trustvision.federated.tensors import State
from trustvision.seeds import derive_seed
from trustvision.train.loop import Objective


class FedETFOptions(StrictModel):
    """Initial temperature and the local fine-tuning schedule."""

    temperature: float = Field(default=1.0, gt=0)  # the authors' ResNet initial beta
    finetune_cycles: int = Field(default=1, ge=0)
    finetune_epochs: int = Field(default=3, ge=1)


class Scalar(nn.Module):
    """One learnable number (FedETF's temperature)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(value)))


@register_algorithm("fedetf")
class FedETF(Algorithm):
    """Projection, normalisation, fixed ETF, learnable temperature, balanced softmax."""

    Options = FedETFOptions
    frozen = ("etf",)
    trains = ("model", "beta")
    finetunes = True

    def build(self) -> nn.ModuleDict:
        classes = self.setup.num_classes
        etf = nn.Linear(classes, classes, bias=False)
        etf.weight.requires_grad_(False)
        return nn.ModuleDict(
            {"model": self.setup.model_fn(), "etf": etf, "beta": Scalar(self.options.temperature)}
        )

    def init_global(self) -> State:
        state = super().init_global()
        classes = state["etf.weight"].shape[0]
        generator = torch.Generator().manual_seed(derive_seed(self.setup.seed, "etf"))
        return {
            **state,
            "etf.weight": simplex_etf(classes, classes, generator=generator).T.contiguous(),
        }

    def generic_heads(self, net: Modules, h: Tensor) -> dict[str, Tensor]:
        projected = F.normalize(net["model"].head(h), dim=1)
        return {"generic": net["beta"].value * net["etf"](projected)}

    def personal_head(self, net: Modules, h: Tensor) -> Tensor:
        """The fine-tuned global model's logits: a client keeps no head of its own."""
        return self.generic_heads(net, h)["generic"]

    def objective(self, ctx: ClientContext) -> Objective:
        counts = ctx.class_counts

        def loss(net: Modules, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            logits = self.generic_logits(net, x)
            return balanced_softmax_ce(logits, y, counts), logits

        return loss

    def finetune_phases(self, ctx: ClientContext) -> list[Phase]:
        def ce(net: Modules, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            logits = self.generic_logits(net, x)
            return self.ce(logits, y), logits

        epochs = self.options.finetune_epochs
        cycle = [
            Phase(train=("etf",), objective=ce, epochs=epochs),
            Phase(train=("model.head",), objective=ce, epochs=epochs),
        ]
        return cycle * self.options.finetune_cycles
