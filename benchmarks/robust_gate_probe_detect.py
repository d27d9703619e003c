"""The detector of benchmarks/robust_gate_probe.py: the mixing network's architecture trained on
cached feature maps to tell clean from attacked images, how well it does (AUC, Youden's J), and
how well it does against attacks that see it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from trustvision.data.loader import BatchLoader
from trustvision.robust.attacks import pgd
from trustvision.robust.commands.common import MixInputs
from trustvision.robust.mixing import MixingNetwork, mix_log_probs

Maps = dict[int, list[Tensor]]  # a batch's maps per stage: [standard base's, robust base's]
# Which bases' maps a detector reads, as indices into a stage's [standard, robust] maps.
READS = {"both": (0, 1), "robust": (1,), "standard": (0,)}


def auc(clean: Tensor, attacked: Tensor) -> float:
    """P(score of an attacked image > score of a clean one), ties counting half."""
    scores = torch.cat([clean, attacked])
    ranks = scores.argsort().argsort().double() + 1
    for value in scores.unique():  # average ranks over ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n_clean, n_adv = len(clean), len(attacked)
    return float((ranks[n_clean:].sum() - n_adv * (n_adv + 1) / 2) / (n_clean * n_adv))


def youden(clean: Tensor, attacked: Tensor) -> float:
    """max over thresholds t of P(attacked >= t) - P(clean >= t): the largest difference in
    mean alpha between the two kinds that any gate increasing in this score can give."""
    thresholds = torch.cat([clean, attacked]).unique()
    above_adv = (attacked[None, :] >= thresholds[:, None]).double().mean(1)
    above_clean = (clean[None, :] >= thresholds[:, None]).double().mean(1)
    return float((above_adv - above_clean).max().clamp(min=0))


class Detector:
    """A mixing network reading stages (low, high) of the bases named by `reads`."""

    def __init__(self, net: MixingNetwork, stages: tuple[int, int], reads: str) -> None:
        self.net, self.stages, self.reads = net, stages, reads

    def __call__(self, maps: Maps) -> Tensor:
        """The raw output gamma (its logit), shape (B,)."""
        low, high = self.stages
        return self.net(*([maps[k][i] for i in READS[self.reads]] for k in (low, high)))


def gammas(detector: Detector, maps: list[Maps]) -> Tensor:
    """The detector's raw output on every batch of `maps`, in evaluation mode."""
    detector.net.eval()
    with torch.no_grad():
        return torch.cat([detector(m) for m in maps])


def separation(clean: Tensor, attacked: Tensor) -> dict[str, float]:
    """AUC and J of raw outputs (a sigmoid rounds large ones to 1), and the mean sigmoids."""
    return {
        "auc": auc(clean, attacked),
        "youden": youden(clean, attacked),
        "score_clean": float(torch.sigmoid(clean).mean()),
        "score_attacked": float(torch.sigmoid(attacked).mean()),
    }


def scores(detector: Detector, val: dict[str, list[Maps]]) -> dict[str, float]:
    """How the detector tells the validation copies apart."""
    g = {kind: gammas(detector, maps) for kind, maps in val.items()}
    right = (g["clean"] < 0).sum() + (g["attacked"] >= 0).sum()
    return {
        **separation(g["clean"], g["attacked"]),
        "score_noise": float(torch.sigmoid(g["noise"]).mean()),
        "accuracy": float(right) / (len(g["clean"]) + len(g["attacked"])),
        "auc_noise": auc(g["clean"], g["noise"]),
    }


def seen_attack_scores(
    inputs: MixInputs,
    detector: Detector,
    loader: BatchLoader,
    clean: Tensor,
    *,
    steps: int,
    weight: float,
    seed: int,
) -> dict[str, float]:
    """The detector against attacks that see it: PGD on (1 - w) CE of the mix it gates
    (alpha = sigmoid(gamma)) + w BCE(gamma, 1), as the adaptive APGD the adaptive mix faces;
    its separation of `clean` (its outputs on the clean images) from these attacked copies,
    and the gated mix's accuracy on both."""
    detector.net.eval()
    low, high = detector.stages

    def gated(x: Tensor) -> tuple[Tensor, Tensor]:
        logits_std, maps_std = inputs.standard.forward_with_maps(x)
        logits_rob, maps_rob = inputs.robust.forward_with_maps(x)
        gamma = detector({k: [maps_std[k], maps_rob[k]] for k in (low, high)})
        log_probs = mix_log_probs(
            logits_std,
            logits_rob,
            log_alpha=F.logsigmoid(gamma),
            log_one_minus_alpha=F.logsigmoid(-gamma),
        )
        return log_probs, gamma

    def loss(x: Tensor, y: Tensor) -> Tensor:
        log_probs, gamma = gated(x)
        steer = F.binary_cross_entropy_with_logits(gamma, torch.ones_like(gamma), reduction="none")
        return (1 - weight) * F.nll_loss(log_probs, y, reduction="none") + weight * steer

    torch.manual_seed(seed)
    attacked, correct = [], {"clean": 0, "attacked": 0}
    eps = inputs.eps
    for x, y in loader.epoch(0):
        adv = pgd(loss, x, y, eps=eps, step_size=2.5 * eps / steps, steps=steps)
        with torch.no_grad():
            for kind, images in (("clean", x), ("attacked", adv)):
                log_probs, gamma = gated(images)
                correct[kind] += int((log_probs.argmax(1) == y).sum())
                if kind == "attacked":
                    attacked.append(gamma)
    total = len(loader.images)
    return {
        "weight": weight,
        **separation(clean, torch.cat(attacked)),
        **{f"gated_mix_{kind}": count / total for kind, count in correct.items()},
    }


def train_detector(
    train: dict[str, list[Maps]],
    val: dict[str, list[Maps]],
    *,
    stages: tuple[int, int],
    reads: str,
    width: int,
    epochs: int,
    seed: int,
) -> tuple[Detector, list[dict[str, float]]]:
    """Train a fresh mixing network on (clean 0, attacked 1) maps, each clean batch with its
    attacked copies; it and its validation scores per epoch."""
    low, high = stages
    torch.manual_seed(seed)
    first = train["clean"][0]
    net = MixingNetwork(
        low_channels=sum(first[low][i].shape[1] for i in READS[reads]),
        high_channels=sum(first[high][i].shape[1] for i in READS[reads]),
        width=width,
    ).to(first[low][0].device)
    detector = Detector(net, stages, reads)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    steps = len(train["clean"])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps)
    history = []
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(steps, generator=torch.Generator().manual_seed(seed + epoch))
        for i in order.tolist():  # a batch's clean images with their attacked copies: the
            clean, attacked = train["clean"][i], train["attacked"][i]  # BatchNorms see both
            gamma = detector(
                {
                    k: [torch.cat([c, a]) for c, a in zip(clean[k], attacked[k], strict=True)]
                    for k in (low, high)
                }
            )
            n = len(clean[low][0])
            target = torch.cat([gamma.new_zeros(n), gamma.new_ones(n)])
            loss = F.binary_cross_entropy_with_logits(gamma, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        history.append({"epoch": epoch + 1, **scores(detector, val)})
        print(f"  stages {low},{high} ({reads}) epoch {epoch + 1}: {fmt(history[-1])}", flush=True)
    return detector, history


def fmt(row: dict[str, float]) -> str:
    return (
        f"score clean {row['score_clean']:.3f} / attacked {row['score_attacked']:.3f} / noise "
        f"{row['score_noise']:.3f}, accuracy {100 * row['accuracy']:.1f}%, AUC {row['auc']:.3f}, "
        f"J {row['youden']:.3f}, noise AUC {row['auc_noise']:.3f}"
    )
