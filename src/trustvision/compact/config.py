"""`trustvision compact`: the typed config of a lightweight-CNN run (two stages, baselines, export)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from trustvision.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunName,
    RunSettings,
    StrictModel,
)

Row = Literal["plain", "no_unfreeze", "full"]
UnifyMode = Literal["augmented", "original", "average"]


class DualConfig(StrictModel):
    """Stage 1: two branches, one fed original images, one fed augmented ones, trained jointly."""

    epochs: int = Field(default=10, gt=0)
    loss_weights: tuple[float, float] = (1.0, 1.0)  # (original branch, augmented branch)
    optim: OptimConfig = OptimConfig(lr=0.1)

    @model_validator(mode="after")
    def _weights(self) -> DualConfig:
        if min(self.loss_weights) < 0 or sum(self.loss_weights) <= 0:
            raise ValueError(
                f"`loss_weights={list(self.loss_weights)}` must be >= 0 with a positive sum"
            )
        return self


class UnifyConfig(StrictModel):
    """How the deployed model is built from the two trained branches (always with a new head)."""

    mode: UnifyMode = "original"  # chosen on held-out images: docs/compact.md
    bn_batches: int = Field(default=50, ge=0)  # batches to re-estimate BN statistics (average)

    @model_validator(mode="after")
    def _statistics(self) -> UnifyConfig:
        if self.mode == "average" and self.bn_batches == 0:
            raise ValueError(
                "`unify.mode=average` re-estimates BatchNorm statistics from `unify.bn_batches` "
                "batches: 0 would deploy them reset (mean 0, variance 1); give at least 1"
            )
        return self


class FinetuneConfig(StrictModel):
    """Stage 2: transfer to the unified model with progressive (ULMFiT) unfreezing."""

    epochs: int = Field(default=5, gt=0)
    epochs_per_group: int = Field(default=1, gt=0)  # unfreeze one more group every N epochs
    unfreeze_at: list[int] | None = None  # epoch each group (head first) unfreezes; overrides
    discriminative: bool = True  # lr of a group = lr of the group above / `lr_decay`
    lr_decay: float = Field(default=2.6, ge=1)
    # Chance that a stage-2 image is replaced by its augmented copy. 0 (chosen on held-out
    # images, docs/compact.md): fine-tune on original images, the ones the model will see.
    augment_prob: float = Field(default=0.0, ge=0, le=1)
    optim: OptimConfig = OptimConfig(lr=0.02)

    @model_validator(mode="after")
    def _schedule(self) -> FinetuneConfig:
        at = self.unfreeze_at
        if at is not None and (not at or at[0] != 0 or at != sorted(at) or min(at) < 0):
            raise ValueError(
                f"`unfreeze_at={at}` must start at 0 (the head trains first) and never decrease"
            )
        if at is not None and at[-1] >= self.epochs:
            raise ValueError(
                f"`unfreeze_at={at}` unfreezes a group at epoch {at[-1]}, but stage 2 has "
                f"`epochs={self.epochs}` (0 to {self.epochs - 1}): that group would never train"
            )
        return self


class ExportConfig(StrictModel):
    """ONNX export, the parity check and static int8 quantization."""

    opset: int = Field(default=18, ge=17)
    calibration_images: int = Field(default=1024, gt=0)  # training images, seeded choice
    per_channel: bool = True
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    max_abs_diff: float = Field(default=1e-4, gt=0)  # ONNX fp32 vs PyTorch logits
    min_agreement: float = Field(default=0.999, gt=0, le=1)  # identical predictions
    max_int8_drop: float = Field(default=0.5, ge=0)  # accuracy points, int8 vs PyTorch


class BenchConfig(StrictModel):
    """Latency: batch-1 percentiles and large-batch throughput, after warm-up."""

    threads: tuple[int, ...] = (1, 2)
    warmup: int = Field(default=50, ge=0)
    iterations: int = Field(default=500, gt=0)  # batch-1 calls timed per engine and thread count
    batch_size: int = Field(default=256, gt=0)
    batch_iterations: int = Field(default=20, gt=0)


class CompactConfig(RunSettings):
    """`trustvision compact train`: dual-input-output training, unification, unfreezing, baselines."""

    experiment: ClassVar[str] = "compact"

    name: RunName = "compact"
    device: str = "cpu"  # tiny nets: the CPU is the deployment target
    threads: int | None = Field(default=1, ge=1, le=4096)  # torch intra-op threads, training
    budget: int = Field(default=14_862, gt=0)  # max parameters of the deployed model
    checkpoint_every: int = Field(default=1, gt=0)
    rows: tuple[Row, ...] = ("plain", "no_unfreeze", "full")  # what to train; `full` is deployed
    augment_prob: float = Field(default=0.5, ge=0, le=1)  # of an image, in plain batches
    data: DataConfig = DataConfig()  # `data.augment`: the augmented branch's transform
    model: ModelConfig = ModelConfig(name="compact_mnist")
    dual: DualConfig = DualConfig()
    unify: UnifyConfig = UnifyConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    export: ExportConfig = ExportConfig()
    bench: BenchConfig = BenchConfig()

    @model_validator(mode="after")
    def _rows(self) -> CompactConfig:
        if not self.rows or len(set(self.rows)) != len(self.rows):
            raise ValueError(
                f"`rows={list(self.rows)}` must name each of plain, no_unfreeze, full once"
            )
        return self

    @property
    def total_epochs(self) -> int:
        """Epochs of the whole method (stage 1 + stage 2): the plain baseline trains as long."""
        return self.dual.epochs + self.finetune.epochs
