"""The `robust certify` command: certified accuracy of the mix against l2 radius, and an attack
inside the certified radii (the bound says it never changes a prediction)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustvision.errors import ConfigError
from trustvision.robust.attacks import pgd
from trustvision.robust.certify import (
    SMOOTHING_LIPSCHITZ,
    SmoothedCertificate,
    certified_accuracy,
    certify_smoothed,
    lipschitz_radius,
    mixed_radii,
    probability_margin,
)
from trustvision.robust.commands.common import Log, absolute, quiet
from trustvision.robust.config import CertifyConfig
from trustvision.robust.evaluate import recorded_dataset, test_pixels
from trustvision.robust.plots import plot_certified
from trustvision.robust.runs import data_of, load_base, read_finished
from trustvision.runs import RunDir, environment_info
from trustvision.seeds import derive_seed
from trustvision.train.recipe import run_settings

RESUME = "trustvision robust certify --run-dir"


def _grid(radii: list[float]) -> list[float]:
    top = max([*radii, 0.5])
    return [top * i / 50 for i in range(51)]


def run_certify(
    cfg: CertifyConfig, *, run_path: str | Path | None = None, log: Log = quiet
) -> RunDir:
    """Certified accuracy against l2 radius for every alpha, and an attack inside the radii."""
    with run_settings(cfg) as device:
        settings = cfg.certify
        standard = load_base(cfg.standard, device=device)
        robust = load_base(cfg.robust, device=device)
        data = data_of(cfg.robust)
        dataset = recorded_dataset(data)
        x, y = test_pixels(dataset, count=settings.subset)
        x, y = x.to(device), y.to(device)
        run, _ = RunDir.open_or_create(
            run_path, root=cfg.runs_dir, name=cfg.name, config=cfg, resume_hint=RESUME
        )
        torch.manual_seed(derive_seed(cfg.seed, "certify"))
        started = time.perf_counter()
        if settings.method == "smoothing":
            record = _certify_smoothing(cfg, standard, robust, x, y, log=log)
        else:
            record = _certify_lipschitz(cfg, standard, robust, x, y)
        grid = _grid([r for rs in record["radii"].values() for r in rs["tight"]])
        curves = {
            f"{a:g}": {k: certified_accuracy(v, record["correct"], grid) for k, v in rs.items()}
            for a, rs in zip(settings.alphas, record["radii"].values(), strict=True)
        }
        plot_certified(
            curves,
            grid,
            run.plots_dir / "certified.png",
            title=f"{data['name']}: certified accuracy of the mix",
        )
        run.write_summary(
            {
                "status": "finished",
                "kind": "certify",
                "method": settings.method,
                "standard": absolute(cfg.standard),
                "robust": absolute(cfg.robust),
                "data": data,
                "n": len(y),
                "test_split_sha256": dataset.test_sha256,
                "grid": grid,
                "curves": curves,
                **record,
                "wall_seconds": time.perf_counter() - started,
                "environment": environment_info(device),
            }
        )
    return run


def _sigma(cfg: CertifyConfig) -> float:
    if cfg.certify.sigma is not None:
        return cfg.certify.sigma
    attack = read_finished(cfg.robust)["attack"]
    if attack["method"] != "gaussian":
        raise ConfigError(
            f"`{cfg.robust}` was not trained with Gaussian noise (`attack.method={attack['method']}`): "
            "set `certify.sigma` or certify a `attack.method=gaussian` base"
        )
    return float(attack["sigma"])


def _certify_smoothing(
    cfg: CertifyConfig, standard: nn.Module, robust: nn.Module, x: Tensor, y: Tensor, *, log: Log
) -> dict[str, Any]:
    s = cfg.certify
    sigma = _sigma(cfg)
    certs: list[SmoothedCertificate] = []
    for i in range(len(y)):
        certs.append(
            certify_smoothed(
                robust,
                x[i],
                int(y[i]),
                sigma=sigma,
                n0=s.n0,
                n=s.n,
                confidence=s.confidence,
                batch_size=s.batch_size,
            )
        )
        if (i + 1) % 50 == 0:
            log(f"certified {i + 1}/{len(y)} images")
    radii = {f"{a:g}": _radii(certs, alpha=a, sigma=sigma) for a in s.alphas}
    correct = [c.predicted == c.label for c in certs]
    clean = _smoothed_mix_clean(cfg, standard, x, y, certs)
    check = _attack_inside(cfg, standard, robust, x, y, certs, radii, sigma=sigma, log=log)
    return {
        "sigma": sigma,
        "lipschitz_constant": SMOOTHING_LIPSCHITZ,  # times 1/sigma: what the Lipschitz radii used
        "radii": radii,
        "correct": correct,
        "mix_clean_acc": clean,
        "attack_check": check,
    }


def _radii(
    certs: list[SmoothedCertificate], *, alpha: float, sigma: float
) -> dict[str, list[float]]:
    both = [mixed_radii(c, alpha=alpha, sigma=sigma) for c in certs]
    return {"tight": [b["tight"] for b in both], "lipschitz": [b["lipschitz"] for b in both]}


@torch.no_grad()
def _smoothed_mix_clean(
    cfg: CertifyConfig, standard: nn.Module, x: Tensor, y: Tensor, certs: list[SmoothedCertificate]
) -> dict[str, float]:
    """Clean accuracy of the mix with the smoothed base estimated by its vote frequencies."""
    p_std = F.softmax(cfg.temperature_std * standard(x), dim=1)
    votes = torch.tensor([c.counts for c in certs], dtype=p_std.dtype, device=p_std.device)
    p_rob = votes / votes.sum(1, keepdim=True)
    return {
        f"{a:g}": float((((1 - a) * p_std + a * p_rob).argmax(1) == y).float().mean())
        for a in cfg.certify.alphas
    }


def _attack_inside(
    cfg: CertifyConfig,
    standard: nn.Module,
    robust: nn.Module,
    x: Tensor,
    y: Tensor,
    certs: list[SmoothedCertificate],
    radii: dict[str, dict[str, list[float]]],
    *,
    sigma: float,
    log: Log,
) -> dict[str, Any]:
    """l2 PGD on the mix (smoothed base as a fixed-noise average) inside each certified radius.

    A flip is counted when the mix, with the smoothed base re-estimated from n fresh samples,
    changes its class at the attacked point: the bound says this should never happen (up to
    the Monte-Carlo error of the re-estimate and the bound's failure probability).
    """
    s = cfg.certify
    alpha = min(a for a in s.alphas)
    key = f"{alpha:g}"
    chosen = [i for i, r in enumerate(radii[key]["tight"]) if r > 0][: s.attack_check]
    if not chosen:
        return {"alpha": alpha, "attacked": 0, "flips": 0}
    noise = torch.randn(64, *x.shape[1:], device=x.device)
    flips = 0
    for i in chosen:
        cls = certs[i].predicted
        loss = _surrogate_loss(
            cfg, standard, robust, noise=noise, sigma=sigma, alpha=alpha, cls=cls
        )
        radius = 0.99 * radii[key]["tight"][i]
        xi, yi = x[i : i + 1], torch.tensor([cls], device=x.device)
        adv = pgd(loss, xi, yi, eps=radius, step_size=radius / 4, steps=10, norm="l2")
        votes = certify_smoothed(
            robust,
            adv[0],
            cls,
            sigma=sigma,
            n0=1,
            n=s.n,
            confidence=s.confidence,
            batch_size=s.batch_size,
        ).counts
        p_rob = torch.tensor(votes, dtype=torch.float32, device=x.device) / s.n
        with torch.no_grad():
            p_std = F.softmax(cfg.temperature_std * standard(adv), dim=1)[0]
        flips += int(((1 - alpha) * p_std + alpha * p_rob).argmax()) != cls
    log(
        f"attack inside the certified radii (alpha {alpha:g}): {flips} flips in {len(chosen)} images"
    )
    return {"alpha": alpha, "attacked": len(chosen), "flips": flips}


def _surrogate_loss(
    cfg: CertifyConfig,
    standard: nn.Module,
    robust: nn.Module,
    *,
    noise: Tensor,
    sigma: float,
    alpha: float,
    cls: int,
) -> Callable[[Tensor, Tensor], Tensor]:
    """Best other class minus class `cls` of the mix, the smoothed base as a soft average."""

    def loss(x: Tensor, _y: Tensor) -> Tensor:
        p_rob = F.softmax(robust(x + sigma * noise), dim=1).mean(0, keepdim=True)
        p_std = F.softmax(cfg.temperature_std * standard(x), dim=1)
        mixed = (1 - alpha) * p_std + alpha * p_rob
        others = mixed.clone()
        others[:, cls] = -math.inf
        return others.max(1).values - mixed[:, cls]

    return loss


def _certify_lipschitz(
    cfg: CertifyConfig, standard: nn.Module, robust: nn.Module, x: Tensor, y: Tensor
) -> dict[str, Any]:
    s = cfg.certify
    if s.lipschitz is None:
        raise ConfigError(
            "`certify.method=lipschitz` needs `certify.lipschitz`, the l2 Lipschitz bound of each p^h_i"
        )
    with torch.no_grad():
        pred, margin = probability_margin(F.softmax(cfg.temperature_rob * robust(x), dim=1))
    radii = {
        f"{a:g}": {"tight": lipschitz_radius(margin, alpha=a, lipschitz=s.lipschitz).tolist()}
        for a in s.alphas
    }
    return {"radii": radii, "correct": (pred == y).tolist()}
