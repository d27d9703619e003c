"""Small random bases for the robust tests: a SmallCNN on 16x16 grey images whose linear layers
are drawn wide enough that its predictions differ from seed to seed."""

from __future__ import annotations

import torch
from torch import nn

from trustvision.models import create_model
from trustvision.robust.pixels import Normalized


def toy_base(seed: int) -> Normalized:
    torch.manual_seed(seed)
    net = create_model("smallcnn", num_classes=10, in_channels=1, image_size=16)
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.3)
    return Normalized(net, (0.5,), (0.25,))
