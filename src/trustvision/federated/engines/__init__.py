"""Engines schedule clients and move named tensors; they know the algorithm protocol only.

`inprocess` (the default) simulates every client in this process; `flower` sends each
client's work as a Flower Message to a SuperNode (Ray-simulated or deployed), with each
client's personal state in its `context.state`. Both implement session.py's `Engine` and
run its one round loop: an engine class's `host` calls the runner's `train` with a factory
for its engines, directly or from inside a Flower ServerApp. Engines never import the
runner (it sits above them) nor a concrete algorithm.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from trustvision.errors import ConfigError
from trustvision.federated.config import FedConfig
from trustvision.federated.session import Engine, EngineFactory


class EngineHost(Protocol):
    """An engine class: `host` runs `train(factory)` where its engines can work."""

    keeps_personal_states: bool  # whether checkpoints get the clients' personal states

    def host(self, cfg: FedConfig, run_dir: Path, train: Callable[[EngineFactory], Any]) -> Any:
        """Call `train` with a factory of this engine (inside whatever the engine needs running)."""
        ...


# name -> "module:class"; imported when used (Flower and Ray load slowly).
ENGINES: dict[str, str] = {
    "inprocess": "trustvision.federated.engines.inprocess:InProcessEngine",
    "flower": "trustvision.federated.engines.flower:FlowerEngine",
}


def engine_class(name: str) -> EngineHost:
    """The engine class registered as `name`; an unknown name lists the known ones."""
    if name not in ENGINES:
        known = ", ".join(f"`{n}`" for n in sorted(ENGINES))
        raise ConfigError(f"unknown engine `{name}`; choose one of: {known}")
    module, _, attr = ENGINES[name].partition(":")
    engine: EngineHost = getattr(importlib.import_module(module), attr)
    return engine


__all__ = ["ENGINES", "Engine", "EngineFactory", "EngineHost", "engine_class"]
