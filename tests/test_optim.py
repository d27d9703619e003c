"""Schedules and parameter groups."""

import math
from itertools import pairwise

import pytest
import torch

from trustvision.config import OptimConfig
from trustvision.models import create_model
from trustvision.train.optim import build_optimizer, build_scheduler, lr_factor, parameter_groups


def factors(cfg, total=100, per_epoch=10):
    return [
        lr_factor(s, cfg=cfg, total_steps=total, steps_per_epoch=per_epoch)
        for s in range(total + 1)
    ]


def test_onecycle_warms_up_then_decays_to_zero():
    f = factors(OptimConfig(schedule="onecycle", warmup_fraction=0.2))
    assert f[0] == pytest.approx(0.1)
    assert f[20] == pytest.approx(1.0) and max(f) == pytest.approx(1.0)
    assert f[-1] == pytest.approx(0.0)
    assert all(a <= b for a, b in pairwise(f[:21]))
    assert all(a >= b for a, b in pairwise(f[20:]))


def test_cosine_and_step_and_constant():
    cos = factors(OptimConfig(schedule="cosine"))
    assert cos[0] == 1.0 and cos[50] == pytest.approx(0.5) and cos[100] == pytest.approx(0.0)
    step = factors(OptimConfig(schedule="step", milestones=[3, 6], gamma=0.1))
    assert step[29] == 1.0 and step[30] == pytest.approx(0.1) and step[60] == pytest.approx(0.01)
    assert set(factors(OptimConfig(schedule="constant"))) == {1.0}


def test_no_weight_decay_on_biases_and_norms():
    model = create_model("resnet8", num_classes=10)
    groups = parameter_groups(model.layer_groups(), lr_scales=[0.5] * len(model.layer_groups()))
    optimizer = build_optimizer(OptimConfig(lr=0.1, weight_decay=1e-3), groups)
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(0.05)
        assert group["weight_decay"] == (1e-3 if group["decay"] else 0.0)
        assert all((p.ndim > 1) == group["decay"] for p in group["params"])
    listed = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert listed == model.num_parameters()


def test_scheduler_state_is_plain_numbers():
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(OptimConfig(), parameter_groups([model]))
    scheduler = build_scheduler(optimizer, OptimConfig(), total_steps=10, steps_per_epoch=5)
    optimizer.step()
    scheduler.step()
    state = scheduler.state_dict()
    assert state["last_epoch"] == 1
    assert all(isinstance(v, int | float | list | dict | bool | type(None)) for v in state.values())
    assert not any(isinstance(v, float) and math.isnan(v) for v in state.values())
