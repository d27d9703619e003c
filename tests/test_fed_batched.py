"""Local work is a pure per-batch step: every algorithm's objectives, vmapped over stacked client
states, give what they give one client at a time (what a many-clients-at-once engine needs)."""

import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

from trustvision.federated.algorithm import ClientContext, Setup, algorithm_class, list_algorithms
from trustvision.models import create_model
from trustvision.train.recipe import torch_threads

QUICK_OPTIONS = {"fedloge": {"ssec_steps": 10}}


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models train as fast on one thread, and far faster when other jobs share the CPU."""
    with torch_threads(1):
        yield


class Step(nn.Module):
    """Modules plus an objective as one callable module, so functional_call can swap tensors."""

    def __init__(self, net: nn.Module, objective) -> None:
        super().__init__()
        self.net, self.objective = net, objective

    def forward(self, x, y):
        loss, logits = self.objective(self.net, x, y)
        return loss, logits


@pytest.mark.parametrize("name", list_algorithms())
def test_objectives_vmap_over_clients(name):
    cls = algorithm_class(name)
    setup = Setup(
        model_fn=lambda: create_model("mnist_cnn", num_classes=10, in_channels=1),
        num_classes=10,
        seed=0,
        local_epochs=1,
        options=cls.Options(**QUICK_OPTIONS.get(name, {})),
    )
    algorithm = cls(setup)
    global_state = algorithm.init_global()
    ctx = ClientContext(0, 0, torch.arange(1, 11), global_state)
    x, y = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.arange(6)
    states = [{**global_state, **algorithm.init_client(k, global_state)} for k in range(3)]
    states[1] = {k: v + 0.01 if v.is_floating_point() else v for k, v in states[1].items()}

    for phase in algorithm.phases(ctx):
        step = Step(algorithm.build(), phase.objective).eval()  # eval: BatchNorm uses running stats
        tensors = [{f"net.{k}": v for k, v in s.items()} for s in states]
        one_by_one = [functional_call(step, t, (x, y)) for t in tensors]
        stacked = {k: torch.stack([t[k] for t in tensors]) for k in tensors[0]}
        losses, logits = vmap(lambda t, step=step: functional_call(step, t, (x, y)))(stacked)

        torch.testing.assert_close(losses, torch.stack([loss for loss, _ in one_by_one]))
        torch.testing.assert_close(logits, torch.stack([lg for _, lg in one_by_one]))
