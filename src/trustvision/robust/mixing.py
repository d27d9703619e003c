"""The mixed classifier of adaptive smoothing (Bai et al. 2024) and its mixing network.

out(x) = log[(1 - a) softmax(s_g g(x)) + a softmax(s_h h(x))], g the accurate standard
model, h the robust one, a = sigmoid(gamma). The log is computed as a logsumexp of
log-probabilities, so it is exact where a probability underflows and its gradient is finite
for a in {0, 1}. `forward` returns one tensor (log-probabilities serve as logits) so that
AutoAttack and cross-entropy use a mix as they use any classifier.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustvision.errors import ConfigError
from trustvision.robust.pixels import Normalized, device_of, freeze


def mix_log_probs(
    logits_std: Tensor,
    logits_rob: Tensor,
    *,
    log_alpha: Tensor | float,
    log_one_minus_alpha: Tensor | float,
    temperature_std: float = 1.0,
    temperature_rob: float = 1.0,
) -> Tensor:
    """log[(1 - a) softmax(s_g g) + a softmax(s_h h)] given log a and log(1 - a) (scalars or (B,))."""
    log_a = torch.as_tensor(log_alpha, dtype=logits_rob.dtype, device=logits_rob.device)
    log_b = torch.as_tensor(log_one_minus_alpha, dtype=logits_std.dtype, device=logits_std.device)
    if log_a.ndim == 1:
        log_a, log_b = log_a[:, None], log_b[:, None]
    parts = torch.stack(
        [
            log_b + F.log_softmax(temperature_std * logits_std, dim=1),
            log_a + F.log_softmax(temperature_rob * logits_rob, dim=1),
        ]
    )
    return torch.logsumexp(parts, dim=0)


def gate_log_weights(
    gamma: Tensor, *, alpha_low: float | Tensor = 0.0, alpha_high: float | Tensor = 1.0
) -> tuple[Tensor, Tensor]:
    """(log a, log(1 - a)) for a = alpha_low + (alpha_high - alpha_low) sigmoid(gamma), exact
    where a reaches 0 or 1 (log-sigmoids, combined with logaddexp)."""
    low = torch.as_tensor(alpha_low, dtype=gamma.dtype, device=gamma.device)
    high = torch.as_tensor(alpha_high, dtype=gamma.dtype, device=gamma.device)
    log_width = torch.log(high - low)
    return (
        torch.logaddexp(torch.log(low), log_width + F.logsigmoid(gamma)),
        torch.logaddexp(torch.log1p(-high), log_width + F.logsigmoid(-gamma)),
    )


def log_weights(alpha: float) -> tuple[float, float]:
    """(log a, log(1 - a)) with log 0 = -inf."""
    return (math.log(alpha) if alpha > 0 else -math.inf), (
        math.log1p(-alpha) if alpha < 1 else -math.inf
    )


class MixedClassifier(nn.Module):
    """A constant-alpha mix of two frozen pixel-space models (alpha 0: g alone, 1: h alone)."""

    def __init__(
        self,
        standard: nn.Module,
        robust: nn.Module,
        *,
        alpha: float,
        temperature_std: float = 1.0,
        temperature_rob: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        self.standard, self.robust = freeze(standard), freeze(robust)
        self.alpha = alpha
        self.temperature_std, self.temperature_rob = temperature_std, temperature_rob

    def forward(self, x: Tensor) -> Tensor:
        """Log mixed probabilities; a base with weight 0 is not evaluated."""
        if self.alpha == 0.0:
            return F.log_softmax(self.temperature_std * self.standard(x), dim=1)
        if self.alpha == 1.0:
            return F.log_softmax(self.temperature_rob * self.robust(x), dim=1)
        log_a, log_b = log_weights(self.alpha)
        return mix_log_probs(
            self.standard(x),
            self.robust(x),
            log_alpha=log_a,
            log_one_minus_alpha=log_b,
            temperature_std=self.temperature_std,
            temperature_rob=self.temperature_rob,
        )

    def train(self, mode: bool = True) -> MixedClassifier:
        """The bases stay in evaluation mode whatever the mix's mode."""
        super().train(mode)
        self.standard.eval()
        self.robust.eval()
        return self


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a (1x1 conv where shapes change) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, *, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if in_ch != out_ch or stride != 1:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(act)
        return self.conv2(F.relu(self.bn2(self.conv1(act)))) + skip


def _concat(maps: list[Tensor]) -> Tensor:
    """Concatenate maps along channels, pooled to the smallest spatial size among them."""
    size = min((int(m.shape[-2]), int(m.shape[-1])) for m in maps)
    return torch.cat(
        [F.adaptive_avg_pool2d(m, size) if tuple(m.shape[-2:]) != size else m for m in maps], 1
    )


class MixingNetwork(nn.Module):
    """Feature maps of two stages of both bases -> one scalar gamma per image.

    The earlier stage's maps (both models, concatenated) go through a strided pre-activation
    block; the later stage's through a 1x1 convolution; their sum through one more block,
    then BN-ReLU, global average pooling and a bias-free linear layer.
    """

    def __init__(self, *, low_channels: int, high_channels: int, width: int) -> None:
        super().__init__()
        self.low = PreActBlock(low_channels, width, stride=2)
        self.high = nn.Conv2d(high_channels, width, 1, bias=False)
        self.body = PreActBlock(width, 2 * width)
        self.norm = nn.BatchNorm2d(2 * width)
        self.linear = nn.Linear(2 * width, 1, bias=False)

    def forward(self, low_maps: list[Tensor], high_maps: list[Tensor]) -> Tensor:
        """gamma, shape (B,)."""
        high = self.high(_concat(high_maps))
        low = self.low(_concat(low_maps))
        if low.shape[-2:] != high.shape[-2:]:
            low = F.adaptive_avg_pool2d(low, (int(high.shape[-2]), int(high.shape[-1])))
        out = F.relu(self.norm(self.body(low + high)))
        return self.linear(out.mean(dim=(2, 3))).squeeze(1)


class AdaptiveMixedClassifier(nn.Module):
    """A mix whose alpha comes from the mixing network's gamma, shaped by the gate:

        gamma' = BN(clamp(gamma)) * scale + bias,   alpha = sigmoid(gamma')
        in evaluation mode: alpha = alpha_low + (alpha_high - alpha_low) * sigmoid(gamma')

    As in the authors' code (comp_model.py), only training clamps the raw gamma, to its batch
    mean +- `gamma_clamp` standard deviations (bounds without gradient), so that a few extreme
    values do not dominate the BatchNorm's statistics; scale, bias and the alpha range are knobs
    set after training. The bases are frozen and stay in evaluation mode; only the mixing
    network (and the running statistics of the BatchNorm on gamma) train. Gradients flow
    through everything, so an attack on this module attacks the mixing network too.
    """

    gamma_scale: Tensor
    gamma_bias: Tensor
    alpha_low: Tensor
    alpha_high: Tensor

    def __init__(
        self,
        standard: Normalized,
        robust: Normalized,
        mixnet: MixingNetwork,
        *,
        temperature_std: float = 1.0,
        temperature_rob: float = 1.0,
        gamma_scale: float = 1.0,
        gamma_bias: float = 0.0,
        gamma_clamp: float | None = None,
        stages: tuple[int, int] = (0, 1),
    ) -> None:
        super().__init__()
        self.standard, self.robust = standard, robust
        freeze(standard)
        freeze(robust)
        self.mixnet = mixnet
        self.gamma_norm = nn.BatchNorm1d(1, affine=False, momentum=0.01)
        self.register_buffer("gamma_scale", torch.tensor(float(gamma_scale)))
        self.register_buffer("gamma_bias", torch.tensor(float(gamma_bias)))
        self.register_buffer("alpha_low", torch.tensor(0.0))
        self.register_buffer("alpha_high", torch.tensor(1.0))
        self.temperature_std, self.temperature_rob = temperature_std, temperature_rob
        self.gamma_clamp = gamma_clamp
        self.stages = stages

    def raw_gamma(self, maps_std: list[Tensor], maps_rob: list[Tensor]) -> Tensor:
        """The mixing network's output on the bases' maps, before the gate, shape (B,)."""
        low, high = self.stages
        return self.mixnet([maps_std[low], maps_rob[low]], [maps_std[high], maps_rob[high]])

    def gate(self, raw: Tensor) -> Tensor:
        """gamma' = BN(raw, clamped in training) * scale + bias, the logit of the unranged alpha."""
        if self.training and self.gamma_clamp is not None and len(raw) > 1:
            mean, std = float(raw.detach().mean()), float(raw.detach().std())
            raw = raw.clamp(mean - self.gamma_clamp * std, mean + self.gamma_clamp * std)
        return self.gamma_norm(raw[:, None])[:, 0] * self.gamma_scale + self.gamma_bias

    def log_weights(self, gamma: Tensor) -> tuple[Tensor, Tensor]:
        """(log a, log(1 - a)) of gamma'; the alpha range applies in evaluation mode only."""
        if self.training:
            return F.logsigmoid(gamma), F.logsigmoid(-gamma)
        return gate_log_weights(gamma, alpha_low=self.alpha_low, alpha_high=self.alpha_high)

    def forward_with_gamma(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Log mixed probabilities and gamma' (the logit of the unranged alpha), shape (B,)."""
        logits_std, maps_std = self.standard.forward_with_maps(x)
        logits_rob, maps_rob = self.robust.forward_with_maps(x)
        gamma = self.gate(self.raw_gamma(maps_std, maps_rob))
        log_alpha, log_one_minus_alpha = self.log_weights(gamma)
        out = mix_log_probs(
            logits_std,
            logits_rob,
            log_alpha=log_alpha,
            log_one_minus_alpha=log_one_minus_alpha,
            temperature_std=self.temperature_std,
            temperature_rob=self.temperature_rob,
        )
        return out, gamma

    def alpha(self, gamma: Tensor) -> Tensor:
        """alpha of gamma' in the mix's current mode (ranged in evaluation mode)."""
        return self.log_weights(gamma)[0].exp()

    def forward(self, x: Tensor) -> Tensor:
        """Log mixed probabilities (one tensor, for AutoAttack)."""
        return self.forward_with_gamma(x)[0]

    def mixing_state(self) -> dict[str, Tensor]:
        """The tensors a saved adaptive mix needs besides its bases."""
        return {
            k: v for k, v in self.state_dict().items() if not k.startswith(("standard.", "robust."))
        }

    def train(self, mode: bool = True) -> AdaptiveMixedClassifier:
        """The bases stay in evaluation mode whatever the mix's mode."""
        super().train(mode)
        self.standard.eval()
        self.robust.eval()
        return self


def stage_channels(model: Normalized, input_shape: tuple[int, ...]) -> list[int]:
    """Channels of every stage's maps of a pixel-space model, from one dummy pass."""
    param = next(model.parameters())
    with torch.no_grad():
        _, maps = model.forward_with_maps(torch.zeros(2, *input_shape, device=param.device))
    return [m.shape[1] for m in maps]


def check_stages(stages: tuple[int, int], counts: tuple[int, int]) -> None:
    """The mixing network reads two `stages` (earlier, later) that both bases, with `counts`
    stages each, have: a ConfigError otherwise."""
    low, high = stages
    if not 0 <= low < high or min(counts) <= high:
        raise ConfigError(
            f"the mixing network reads the bases' stages {list(stages)}, but they have "
            f"{counts[0]} and {counts[1]} stages (numbered from 0): choose `mixnet.stages` "
            "among them, the earlier first"
        )


def build_adaptive(
    standard: Normalized,
    robust: Normalized,
    *,
    input_shape: tuple[int, ...],
    width: int,
    temperature_std: float = 1.0,
    temperature_rob: float = 1.0,
    gamma_scale: float = 1.0,
    gamma_bias: float = 0.0,
    gamma_clamp: float | None = None,
    stages: tuple[int, int] = (0, 1),
) -> AdaptiveMixedClassifier:
    """An adaptive mix with a fresh mixing network sized to the bases' `stages` (earlier,
    later; by default their first two)."""
    std_ch, rob_ch = stage_channels(standard, input_shape), stage_channels(robust, input_shape)
    check_stages(stages, (len(std_ch), len(rob_ch)))
    low, high = stages
    mixnet = MixingNetwork(
        low_channels=std_ch[low] + rob_ch[low],
        high_channels=std_ch[high] + rob_ch[high],
        width=width,
    )
    device = device_of(robust)
    return AdaptiveMixedClassifier(
        standard,
        robust,
        mixnet.to(device),
        temperature_std=temperature_std,
        temperature_rob=temperature_rob,
        gamma_scale=gamma_scale,
        gamma_bias=gamma_bias,
        gamma_clamp=gamma_clamp,
        stages=stages,
    )
