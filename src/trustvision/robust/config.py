"""Typed configs of `trustvision robust`: base-model training, mixing, evaluation, certification.

Each command's config is a "what" (run directories of the models it works on) plus a "how"
(a settings section); the pipeline (`robust demo`, the benchmark) embeds the same settings
sections and fills in the run directories as it goes.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from trustvision.config import (
    AugmentConfig,
    ModelConfig,
    RunName,
    RunSettings,
    StrictModel,
    TrainConfig,
)

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


def _refuse_moved(data: Any, moved: dict[str, str]) -> Any:
    """Stop a config that still uses a key this version moved, saying where it went."""
    if isinstance(data, dict):
        old = [key for key in moved if key in data]
        if old:
            raise ValueError("; ".join(f"`{key}` {moved[key]}" for key in old))
    return data


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
        return _refuse_moved(
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


class MixNetSettings(StrictModel):
    """The mixing network (adaptive smoothing) and how it is trained: the recipe of the authors'
    code (Bai-YT/AdaptiveSmoothing: trainer.py, attacks.py, losses.py, comp_model.py), with its
    costliest numbers sized for a CPU where the defaults say so (robust/mixtrain.py)."""

    width: int = Field(default=64, ge=4)  # channels of the mixing network's blocks
    # The bases' stages whose feature maps it reads: (earlier, later); the authors', (0, 1).
    stages: tuple[int, int] = (0, 1)
    epochs: int = Field(default=2, ge=1)
    train_subset: int | None = Field(default=10000, gt=0)  # None: every image both bases trained on
    batch_size: int = Field(default=128, gt=1)  # clean images per optimiser step
    augment: AugmentConfig = AugmentConfig()  # of the clean images (authors, CIFAR: crop + flip)
    # Optimiser, as the authors': AdamW, linear warm-up over `warmup_fraction` of the steps, then
    # cosine; gradient norm clipped at `grad_clip`.
    lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=1e-5, ge=0)
    warmup_fraction: float = Field(default=0.04, ge=0, lt=1)
    grad_clip: float | None = Field(default=10.0, gt=0)
    # Loss per image: c_bce BCE(gamma', attacked) + c_ce CE(out, y) + c_prod BCE * CE, clean images
    # weighted `clean_weight` (the authors' small-model constants).
    c_bce: float = Field(default=1.0, ge=0)
    c_ce: float = Field(default=0.5, ge=0)
    c_prod: float = Field(default=0.1, ge=0)
    clean_weight: float = Field(default=2.0, gt=0)
    # Training adversaries, per clean image: one untargeted CE attack plus one targeted DLR
    # attack towards each of the `target_classes` most likely other classes (authors: 9 on
    # CIFAR-10 with APGD, 0 with PGD), every one kept. Each attack draws per image
    # eps * U(eps_low, eps_high), a momentum U(0, momentum_max) and a loss weight
    # w ~ U(0, bce_weight_max) (it maximises (1 - w) L + w BCE(gamma', 1)), and per attack
    # round(chi2(steps_df) + steps_const) steps (at least 1) of size step_factor * eps_i / steps
    # (authors' CIFAR-10 configs: chi2(20) with PGD, chi2(75) with APGD; factor 5).
    target_classes: int = Field(default=2, ge=0)
    eps_low: float = Field(default=0.4, ge=0)
    eps_high: float = Field(default=1.1, ge=0)
    steps_df: float = Field(default=10.0, gt=0)
    steps_const: float = Field(default=0.0, ge=0)
    step_factor: float = Field(default=1.8, gt=0)
    momentum_max: float = Field(default=0.9, ge=0, lt=1)  # momentum ~ U(0, momentum_max)
    bce_weight_max: float = Field(default=0.4, ge=0, le=1)
    # Ours, not the authors': the first `blind_epochs` epochs make their attacks on the bases'
    # 50/50 mix, which the gate does not steer (w = 0), so the gate first learns to detect
    # attacks, then to hold against attacks that see it (docs/robust.md: the gate probe).
    blind_epochs: int = Field(default=0, ge=0)
    # The gate (robust/mixing.py): in training the raw gamma is clamped to its mini-batch mean
    # +- gamma_clamp std before the BatchNorm (null: no clamp); gamma' = BN * scale + bias.
    gamma_clamp: float | None = Field(default=0.6, gt=0)
    gamma_scale: float = Field(default=1.0, gt=0)
    gamma_bias: float = 0.0
    # After training, every gamma bias x scale x alpha range x `sweep.temperatures_std` x
    # `sweep.temperatures_rob` is judged on validation images and the best (the sweep's rule) is
    # kept; an empty `bias_sweep` keeps `gamma_bias`, `gamma_scale`, the full range and the
    # training temperatures. An alpha range (low, high) maps sigmoid(gamma') onto [low, high].
    bias_sweep: tuple[float, ...] = ()
    scale_sweep: tuple[float, ...] = ()  # empty: `gamma_scale` only
    alpha_ranges: tuple[tuple[float, float], ...] = ((0.0, 1.0),)
    temperature_std: float = Field(default=1.0, gt=0)  # s_g while the mixing network trains
    temperature_rob: float = Field(default=1.0, gt=0)  # s_h while the mixing network trains
    # After every epoch: the gate's mean alpha in evaluation mode on this many validation
    # images, clean and under PGD (`monitor_steps` steps at the full eps) on the mix.
    monitor_images: int = Field(default=200, ge=1)
    monitor_steps: int = Field(default=10, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        steps = (
            "was replaced by `steps_df` and `steps_const`: every training attack takes "
            "round(chi2(steps_df) + steps_const) steps, as in the authors' code"
        )
        return _refuse_moved(
            data,
            {
                "steps_low": steps,
                "steps_high": steps,
                "targeted_fraction": "was replaced by `target_classes`: every clean image gets "
                "one untargeted attack plus a targeted one per each of its `target_classes` most "
                "likely other classes",
            },
        )

    @model_validator(mode="after")
    def _ranges(self) -> MixNetSettings:
        if self.eps_low > self.eps_high:
            raise ValueError(f"need `eps_low` <= `eps_high` (got {self.eps_low}, {self.eps_high})")
        bad = [r for r in self.alpha_ranges if not 0.0 <= r[0] < r[1] <= 1.0]
        if bad or not self.alpha_ranges:
            raise ValueError(
                f"`alpha_ranges` must be a non-empty list of [low, high] with 0 <= low < high "
                f"<= 1, got {list(self.alpha_ranges)}"
            )
        if any(v <= 0 for v in self.scale_sweep):
            raise ValueError(f"`scale_sweep` values must be > 0, got {list(self.scale_sweep)}")
        if self.blind_epochs > self.epochs:
            raise ValueError(
                f"`blind_epochs` ({self.blind_epochs}) must not exceed `epochs` ({self.epochs})"
            )
        if not 0 <= self.stages[0] < self.stages[1]:
            raise ValueError(
                f"`stages` must be [earlier, later] with 0 <= earlier < later, got "
                f"{list(self.stages)}"
            )
        return self

    @property
    def minibatches(self) -> int:
        """Forward passes per optimiser step: the clean images and their attacked copies,
        shuffled together, in 2 x (attacks per image) parts, so that the gate's BatchNorm sees
        clean and attacked images mixed and updates its statistics that often (the authors')."""
        return 2 * (self.target_classes + 1)


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
    eps_multiples: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0)
    eps_sweep_subset: int = Field(default=100, ge=1)
    zero_accuracy: float = Field(default=0.05, ge=0, le=1)  # "~0" at the largest eps


class CertifySettings(StrictModel):
    """Certified radii of the mixed classifier (l2)."""

    method: Literal["smoothing", "lipschitz"] = "smoothing"
    alphas: tuple[float, ...] = (1.0, 0.95, 0.9, 0.8, 0.7)
    subset: int = Field(default=200, ge=1)
    n0: int = Field(default=100, ge=1)  # Monte-Carlo samples that pick the class (Cohen et al.)
    n: int = Field(default=1000, ge=1)  # samples that bound its probability
    confidence: float = Field(default=0.001, gt=0, lt=1)  # failure probability of the bound
    batch_size: int = Field(default=500, ge=1)
    lipschitz: float | None = Field(default=None, gt=0)  # known l2 bound of each p^h_i
    sigma: float | None = Field(default=None, gt=0)  # None: the base's training sigma
    attack_check: int = Field(default=50, ge=0)  # images attacked inside their radius


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
        return _refuse_moved(data, MOVED_TEMPERATURES)


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
        return _refuse_moved(data, MOVED_TEMPERATURES)
