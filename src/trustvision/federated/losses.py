"""Losses that use a client's class counts; classes it has no image of get -inf logits."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _offset_ce(logits: Tensor, y: Tensor, offset: Tensor) -> Tensor:
    """CE of `logits + offset`; -inf offsets (absent classes) drop out of the softmax."""
    return F.cross_entropy(logits.float() + offset.to(logits.device), y)


def balanced_softmax_ce(logits: Tensor, y: Tensor, counts: Tensor) -> Tensor:
    """Balanced softmax (Ren et al., NeurIPS 2020): CE(z_c + log n_c, y)."""
    offset = torch.where(counts > 0, counts.float().log(), -math.inf)
    return _offset_ce(logits, y, offset)


def calibrated_ce(logits: Tensor, y: Tensor, counts: Tensor, *, tau: float) -> Tensor:
    """FedLC's calibrated CE (Zhang et al., ICML 2022, Eq. 9): CE(z_c - tau * n_c^(-1/4), y)."""
    offset = torch.where(counts > 0, -tau * counts.float().pow(-0.25), -math.inf)
    return _offset_ce(logits, y, offset)
