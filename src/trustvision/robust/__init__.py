"""Adaptive smoothing (Bai et al. 2024): mix a standard and a robust classifier, certify the mix,
learn the mixing weight per input, and evaluate it all with AutoAttack.

The method, one module each: `attacks` (our training-time PGD / FGSM-RS), `adversarial`
(training objectives for the core's `fit`), `pixels` (models in pixel space), `mixing` (mixed
classifier, mixing network), `mixtrain` (training the mixing network), `sweep` (knobs chosen on
validation images), `certify` (certified radii), `autoattack` (pyautoattack, attack by attack,
adaptive attack), `evaluate` (validation images, reports, gradient-masking checks), `stats`,
`plots`, `runs` (what a run directory holds). The verbs: `commands/` (one module per verb),
mounted by `cli`.
"""
