"""FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
Data", AISTATS 2017, Algorithm 1: each sampled client runs E epochs of SGD on cross-entropy
from the global weights; the server sets w_{t+1} = sum_k (n_k / n) w^k_{t+1}, n_k the
client's training images and n their sum over the round's clients.
"""

from __future__ import annotations

from trustvision.federated.algorithm import Algorithm, register_algorithm


@register_algorithm("fedavg")
class FedAvg(Algorithm):
    """FedAvg: the protocol's default behaviour, unchanged."""
