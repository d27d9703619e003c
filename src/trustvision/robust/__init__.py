"""Adaptive smoothing (Bai et al. 2024): mix a standard and a robust classifier, certify the mix,
learn the mixing weight per input, and evaluate it all with AutoAttack.

Modules: `attacks` (our training-time PGD / FGSM-RS), `adversarial` (training objectives for
the core's `fit`), `training` (`robust train`), `mixing` (mixed classifier, mixing network),
`mixtrain` (training the mixing network), `sweep` (alpha trade-off), `certify` (certified
radii), `autoattack` (pyautoattack, attack by attack, adaptive attack), `evaluate` (reports
and gradient-masking checks), `commands` / `pipeline` / `cli` (the commands).
"""
