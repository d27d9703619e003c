"""The mixing network's settings (`mixnet` in `robust mix` and the pipeline): its shape, and
the authors' training recipe with its costliest numbers sized for a CPU (robust/mixtrain.py)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from trustvision.config import AugmentConfig, StrictModel, refuse_moved


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
        return refuse_moved(
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
