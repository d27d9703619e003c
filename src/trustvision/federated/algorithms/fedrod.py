"""FedRoD: Chen & Chao, "On Bridging Generic and Personalized Federated Learning for Image
Classification", ICLR 2022: the body and a generic head train with the balanced-softmax loss
on each client's class counts (Eq. 5) and are averaged; a personal head p_k trains with CE
on z_g.detach() + p_k(h.detach()) and stays on the client. Generic prediction z_g = g(h);
personalised z_g + p_k(h).
"""

from __future__ import annotations

from torch import Tensor, nn

from trustvision.federated.algorithm import Algorithm, ClientContext, Modules, register_algorithm
from trustvision.federated.losses import balanced_softmax_ce
from trustvision.train.loop import Objective


@register_algorithm("fedrod")
class FedRoD(Algorithm):
    """Balanced-softmax generic model plus a personal head on detached features."""

    personal = ("phead",)
    trains = ("model", "phead")

    def build(self) -> nn.ModuleDict:
        model = self.setup.model_fn()
        return nn.ModuleDict(
            {"model": model, "phead": nn.Linear(model.feature_dim, self.setup.num_classes)}
        )

    def objective(self, ctx: ClientContext) -> Objective:
        counts = ctx.class_counts

        def loss(net: Modules, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            h = net["model"].features(x)
            generic = net["model"].head(h)
            personal = generic.detach() + net["phead"](h.detach())
            return balanced_softmax_ce(generic, y, counts) + self.ce(personal, y), generic

        return loss

    def personal_head(self, net: Modules, h: Tensor) -> Tensor:
        return net["model"].head(h) + net["phead"](h)
