"""FedPer: Arivazhagan et al., "Federated Learning with Personalization Layers", arXiv
1912.00818, 2019: base layers are trained by every client and averaged (FedAvg); the
personalization layers (here the classifier head) stay on their client; a client predicts
with head_k(body(x)). There is no global classifier, so no generic accuracy is reported.
"""

from __future__ import annotations

from trustvision.federated.algorithm import register_algorithm
from trustvision.federated.algorithms.fedavg import FedAvg


@register_algorithm("fedper")
class FedPer(FedAvg):
    """FedAvg with the model's head kept on each client."""

    personal = ("model.head",)
    has_generic = False
