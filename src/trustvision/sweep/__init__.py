"""`trustvision sweep`: hyperparameter search over any trustvision command, on Optuna.

Optuna, not a home-made loop: it is a well-kept library whose samplers (grid, TPE), median
pruner and SQLite study storage are tested far beyond what a project loop would be, and its
study file is what `optuna-dashboard` reads. What is ours is thin: a typed spec, one real
subprocess per trial (so a trial is exactly the command a person would type), resuming a
killed sweep, and a choice made on validation that cannot read the test metric.
"""

from trustvision.sweep.choose import choose_trial
from trustvision.sweep.spec import SweepSpec, load_spec

__all__ = ["SweepSpec", "choose_trial", "load_spec"]
