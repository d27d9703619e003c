"""Adaptive smoothing (Bai et al. 2024): mix a standard and a robust classifier, certify the mix,
learn the mixing weight per input, and evaluate it all with AutoAttack.

Modules: `attacks` (our training-time PGD / FGSM-RS), `adversarial` (training objectives for
the core's `fit`), `training` (`robust train`), `mixing` (mixed classifier, mixing network),
`mixtrain` (training the mixing network), `sweep` (alpha trade-off), `certify` (certified
radii), `autoattack` (pyautoattack, attack by attack, adaptive attack), `evaluate` (reports
and gradient-masking checks), `commands` / `pipeline` / `cli` (the commands).
"""

from importlib import import_module
from typing import Any

# Exported names, imported on first use: `trustvision.robust.cli` must stay torch-free to import.
_EXPORTS = {
    "AdaptiveMixedClassifier": "trustvision.robust.mixing",
    "MixedClassifier": "trustvision.robust.mixing",
    "MixingNetwork": "trustvision.robust.mixing",
    "mix_log_probs": "trustvision.robust.mixing",
    "Normalized": "trustvision.robust.pixels",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module `trustvision.robust` has no attribute `{name}`")
    return getattr(import_module(_EXPORTS[name]), name)
