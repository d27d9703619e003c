"""Typed configs of `trustvision robust`: base-model training, mixing, evaluation, certification.

Each command's config is a "what" (run directories of the models it works on) plus a "how"
(a settings section); the pipeline (`robust demo`, the benchmark) embeds the same settings
sections and fills in the run directories as it goes.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from trustvision.config import (
    ModelConfig,
    RunName,
    RunSettings,
    StrictModel,
    TrainConfig,
    refuse_moved,
)
from trustvision.robust.mixnet_settings import MixNetSettings

AttackMethod = Literal["standard", "pgd", "trades", "fgsm_rs", "gaussian"]
Norm = Literal["linf", "l2"]
AutoAttackName = Literal["apgd-ce", "apgd-t", "fab-t", "square"]
STANDARD_ATTACKS: tuple[AutoAttackName, ...] = ("apgd-ce", "apgd-t", "fab-t", "square")

# The usual l_inf budgets (pixels in [0, 1]); a run without `eps` uses its data set's.
DEFAULT_EPS = {"mnist": 0.3, "fashion-mnist": 0.1, "cifar10": 8 / 255, "cifar100": 8 / 255}


class AttackConfig(StrictModel):
    """How `robust train` perturbs each training batch (pixels in [0, 1])."""

    method: AttackMethod = "pgd"
    norm: Norm = "linf"
    eps: float = Field(default=0.3, ge=0)
    steps: int = Field(default=10, ge=1)  # PGD / TRADES inner steps
    step_size: float | None = Field(default=None, gt=0)  # None: 2.5 eps / steps; FGSM-RS 1.25 eps
    beta: float = Field(default=6.0, ge=0)  # TRADES: weight of the KL term
    sigma: float = Field(default=0.25, gt=0)  # Gaussian noise (randomized-smoothing base), l2
    ramp_epochs: float = Field(default=0.0, ge=0)  # eps grows linearly from 0 over this many

    @model_validator(mode="after")
    def _norm_supported(self) -> AttackConfig:
        if self.norm == "l2" and self.method == "fgsm_rs":
            raise ValueError(
                "`attack.method=fgsm_rs` is an l_inf attack (sign steps in a box): use "
                "`attack.norm=linf`, or `pgd` / `trades` for l_2"
            )
        return self

    def resolved_step_size(self) -> float:
        """The step size in pixels: given, else 1.25 eps (FGSM-RS) or 2.5 eps / steps (PGD)."""
        if self.step_size is not None:
            return self.step_size
        if self.method == "fgsm_rs":
            return 1.25 * self.eps
        return 2.5 * self.eps / self.steps


class RobustTrainConfig(TrainConfig):
    """`trustvision robust train`: one base model, standard or adversarially trained."""

    experiment: ClassVar[str] = "robust"

    name: RunName = "robust-train"
    model: ModelConfig = ModelConfig(name="smallcnn")
    attack: AttackConfig = AttackConfig()

    @model_validator(mode="before")
    @classmethod
    def _data_set_eps(cls, tree: Any) -> Any:
        """An `attack` without `eps` takes its data set's usual budget (`DEFAULT_EPS`), as
        evaluation and mixing do (0.3 is MNIST's: 77/255 on CIFAR-10)."""
        if not isinstance(tree, dict) or not isinstance(tree.get("data"), dict):
            return tree
        attack, name = tree.get("attack", {}), tree["data"].get("name")
        if isinstance(attack, dict) and "eps" not in attack and name in DEFAULT_EPS:
            return {**tree, "attack": {**attack, "eps": DEFAULT_EPS[name]}}
        return tree


# The mix's logit scales s_g, s_h are knobs chosen on validation images, no longer settings.
MOVED_TEMPERATURES = {
    "temperature_std": "is chosen on validation images now: list its candidates in "
    "`sweep.temperatures_std` (one value fixes it); the mixing network trains with "
    "`mixnet.temperature_std`",
    "temperature_rob": "is chosen on validation images now: list its candidates in "
    "`sweep.temperatures_rob` (one value fixes it); the mixing network trains with "
    "`mixnet.temperature_rob`",
}


class APGDSettings(StrictModel):
    """AutoAttack's attacks as used by a quick evaluation (sweeps, the demo)."""

    attacks: tuple[AutoAttackName, ...] = ("apgd-ce", "apgd-t")
    n_iter: int = Field(default=100, ge=1)
    n_target_classes: int = Field(default=9, ge=1)
    square_queries: int = Field(default=5000, ge=1)
    batch_size: int = Field(default=250, ge=1)


class SweepSettings(StrictModel):
    """The validation sweep that chooses a mix's knobs: alpha, s_g and s_h of the fixed mix (a
    grid over all three), the gamma bias and s_g, s_h of the adaptive mix (`mixnet.bias_sweep`
    times the temperature grids).

    Every grid point is judged on validation images, training images both bases held out
    (`data.validation`): clean accuracy on the first `clean_subset` of them, robust accuracy
    under `attack` on the first `subset`. Test images are never read. A grid point costs at
    most one attack on `subset` images, and much less when it cannot be chosen (the attacks run
    in order of clean accuracy and stop early: `sweep.attack_in_order`); at alpha 0 and 1 one
    temperature is unused, so those points are attacked once per value of the other.
    """

    alphas: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
    temperatures_std: tuple[float, ...] = (1.0,)  # s_g candidates (logit scale of g)
    temperatures_rob: tuple[float, ...] = (1.0,)  # s_h candidates (logit scale of h)
    subset: int = Field(default=100, ge=1)  # first N validation images attacked per grid point
    clean_subset: int | None = Field(default=None, ge=1)  # clean accuracy: first N (None: all)
    attack: APGDSettings = APGDSettings()
    tolerance: float = Field(default=0.03, ge=0)  # robust accuracy the choice may give up

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return refuse_moved(
            data,
            {
                "test_subset": "was renamed `clean_subset`: the sweep's clean accuracy is measured "
                "on validation images (held out of training), never on test images"
            },
        )

    @model_validator(mode="after")
    def _grids(self) -> SweepSettings:
        bad = [a for a in self.alphas if not 0.0 <= a <= 1.0]
        if bad or not self.alphas:
            raise ValueError(f"`alphas` must be a non-empty list in [0, 1], got {self.alphas}")
        for key in ("temperatures_std", "temperatures_rob"):
            values = getattr(self, key)
            if not values or min(values) <= 0:
                raise ValueError(f"`{key}` must be a non-empty list of values > 0, got {values}")
        if self.clean_subset is not None and self.clean_subset < self.subset:
            raise ValueError(
                f"`clean_subset={self.clean_subset}` is smaller than `subset={self.subset}`: the "
                "attacked images are the first of the clean ones; raise it or set it to null (all)"
            )
        return self


class EvalSettings(StrictModel):
    """AutoAttack evaluation of one model, with the gradient-masking checks."""

    eps: float | None = Field(default=None, ge=0)  # None: the data set's usual budget
    subset: int = Field(default=500, ge=1)  # the first N test images, the same for every model
    test_subset: int | None = Field(default=None, ge=1)  # clean accuracy: first N (None: all)
    version: Literal["standard", "custom"] = "standard"
    custom: APGDSettings = APGDSettings()  # used when version is `custom`
    adaptive: bool = True  # for adaptive mixes: also APGD-CE/T with loss + w BCE(gamma, 1)
    adaptive_weight: float = Field(default=0.3, ge=0, le=1)
    chunk: int = Field(default=100, ge=1)  # images per resumable unit of work
    pgd_steps: int = Field(default=20, ge=1)  # our PGD, the reference AutoAttack must beat
    eps_multiples: tuple[Annotated[float, Field(gt=0)], ...] = Field(
        default=(0.5, 1.0, 2.0, 3.0), min_length=1
    )
    eps_sweep_subset: int = Field(default=100, ge=1)
    zero_accuracy: float = Field(default=0.05, ge=0, le=1)  # "~0" at the largest eps

    @field_validator("eps_multiples")
    @classmethod
    def _growing(cls, multiples: tuple[float, ...]) -> tuple[float, ...]:
        """The masking check reads them in order, the last as the largest eps."""
        if any(b <= a for a, b in pairwise(multiples)):
            raise ValueError(f"`eps_multiples` must increase, got {multiples}")
        return multiples


class CertifySettings(StrictModel):
    """Certified radii of the mixed classifier (l2)."""

    method: Literal["smoothing", "lipschitz"] = "smoothing"
    alphas: tuple[float, ...] = (1.0, 0.95, 0.9, 0.8, 0.7)
    subset: int = Field(default=200, ge=1)
    n0: int = Field(default=100, ge=1)  # Monte-Carlo samples that pick the class (Cohen et al.)
    n: int = Field(default=1000, ge=1)  # samples that bound its probability
    # The failure probability of the bound (Cohen et al.'s alpha), not a confidence level: a
    # value of 1/2 or more would turn the lower bound of pA into an upper one.
    confidence: float = Field(default=0.001, gt=0, lt=0.5)
    batch_size: int = Field(default=500, ge=1)
    lipschitz: float | None = Field(default=None, gt=0)  # known l2 bound of each p^h_i
    sigma: float | None = Field(default=None, gt=0)  # None: the base's training sigma
    attack_check: int = Field(default=50, ge=0)  # images attacked inside their radius

    @model_validator(mode="after")
    def _alphas(self) -> CertifySettings:
        """Refused up front, not after every image is certified: alphas outside (0, 1], none,
        or two that print alike (results are keyed by `f"{alpha:g}"`)."""
        keys = [f"{a:g}" for a in self.alphas]
        if not self.alphas or any(not 0.0 < a <= 1.0 for a in self.alphas):
            raise ValueError(f"`alphas` must be a non-empty list in (0, 1], got {self.alphas}")
        if len(set(keys)) < len(keys):
            raise ValueError(f"`alphas` {self.alphas} has values that print alike: {keys}")
        return self


class MixConfig(RunSettings):
    """`trustvision robust mix`: a fixed mix (alpha sweep) or an adaptive mix (mixing network)."""

    experiment: ClassVar[str] = "robust"

    name: RunName = "robust-mix"
    standard: str  # run directory of the standard base model
    robust: str  # run directory of the robust base model
    kind: Literal["fixed", "adaptive"] = "fixed"
    eps: float | None = Field(default=None, ge=0)
    sweep: SweepSettings = SweepSettings()  # alpha, s_g, s_h (and the bias) chosen on validation
    mixnet: MixNetSettings = MixNetSettings()

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return refuse_moved(data, MOVED_TEMPERATURES)


class EvalConfig(RunSettings):
    """`trustvision robust eval`: AutoAttack and the masking checks on one model."""

    experiment: ClassVar[str] = "robust"

    name: RunName = "robust-eval"
    model: str  # run directory of a base model (`robust train`) or a mix (`robust mix`)
    eval: EvalSettings = EvalSettings()


class CertifyConfig(RunSettings):
    """`trustvision robust certify`: certified accuracy against radius for several alphas."""

    experiment: ClassVar[str] = "robust"

    name: RunName = "robust-certify"
    standard: str
    robust: str  # a Gaussian-noise base (smoothing) or a model with a known Lipschitz bound
    # Certification chooses nothing: the alphas are a list, the certificate does not depend on
    # s_g, and s_h only matters for the Lipschitz route.
    temperature_std: float = Field(default=1.0, gt=0)
    temperature_rob: float = Field(default=1.0, gt=0)
    certify: CertifySettings = CertifySettings()


STAGE_SETTINGS = ("seed", "device", "threads")


class PipelineConfig(RunSettings):
    """`trustvision robust demo` and the benchmark: train both bases, mix, evaluate, report.

    The pipeline's `seed`, `device` and `threads` apply to every stage, the base models'
    training included; a base config that sets one of them to something else is an error
    (set it once, at the top)."""

    experiment: ClassVar[str] = "robust"

    name: RunName = "robust-demo"
    standard: RobustTrainConfig
    robust: RobustTrainConfig  # must hold out the same images as `standard` (seed, data)
    sweep: SweepSettings = SweepSettings()
    adaptive: bool = False  # also train and evaluate the mixing network
    mixnet: MixNetSettings = MixNetSettings()
    eval: EvalSettings = EvalSettings()
    smoothing: RobustTrainConfig | None = None  # a Gaussian base for the certification curves
    certify: CertifySettings = CertifySettings()

    @model_validator(mode="after")
    def _stages_share_the_run_settings(self) -> PipelineConfig:
        shared = {key: getattr(self, key) for key in STAGE_SETTINGS}
        stages = {"standard": self.standard, "robust": self.robust, "smoothing": self.smoothing}
        for label, stage in stages.items():
            if stage is None:
                continue
            clash = [
                f"`{label}.{key}={getattr(stage, key)}`"
                for key in STAGE_SETTINGS
                if key in stage.model_fields_set and getattr(stage, key) != shared[key]
            ]
            if clash:
                raise ValueError(
                    f"{', '.join(clash)} differ from the pipeline's "
                    f"({', '.join(f'`{k}={v}`' for k, v in shared.items())}): the pipeline's "
                    "seed, device and threads apply to every stage; set them once, at the top"
                )
            object.__setattr__(self, label, stage.model_copy(update=shared))
        return self

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return refuse_moved(data, MOVED_TEMPERATURES)
