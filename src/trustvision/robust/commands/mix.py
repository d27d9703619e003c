"""`trustvision robust mix`: a fixed mix (alpha, s_g, s_h chosen on validation images, with its
trade-off plot) or, with `kind=adaptive`, a mixing network (adaptive.py).

Every knob is chosen on validation images, training images both bases held out
(`evaluate.validation_pixels`); test images are never read here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from trustvision.data.augment import BatchAugment
from trustvision.robust.commands.adaptive import adaptive_mix, chooses_gate_again
from trustvision.robust.commands.common import (
    POINTS,
    Log,
    MixInputs,
    PointStore,
    absolute,
    admission_rule,
    attack_label,
    data_name,
    mix_inputs,
    mix_spec,
    quiet,
    reference_robustness,
    selection_record,
    sweep_signature,
)
from trustvision.robust.config import MixConfig
from trustvision.robust.plots import plot_tradeoff
from trustvision.robust.runs import write_mix
from trustvision.robust.sweep import FIXED_KNOBS, alpha_sweep, choose, temperatures
from trustvision.runs import RunDir, environment_info
from trustvision.seeds import derive_seed
from trustvision.train.loop import Reporter
from trustvision.train.recipe import run_settings

RESUME = "trustvision robust mix --run-dir"


def run_mix(
    cfg: MixConfig,
    *,
    run_path: str | Path | None = None,
    reporter: Reporter | None = None,
    log: Log = quiet,
) -> RunDir:
    """Build a fixed mix (validation sweep, trade-off plot) or train an adaptive one."""
    with run_settings(cfg) as device:
        inputs = mix_inputs(cfg, device)
        if cfg.kind == "adaptive":
            augment = BatchAugment(cfg.mixnet.augment, key="mixnet.augment")
            augment.check_fits(*inputs.dataset.image_shape[-2:])
        again = cfg.kind == "adaptive" and chooses_gate_again(run_path, cfg)
        if again:
            log("the trained mixing network is kept; its gate is chosen again on the new grid")
        run, _ = RunDir.open_or_create(
            run_path,
            root=cfg.runs_dir,
            name=cfg.name,
            config=cfg,
            resume_hint=RESUME,
            policy="update" if again else "refuse",
        )
        started = time.perf_counter()
        torch.manual_seed(derive_seed(cfg.seed, "mix"))
        if cfg.kind == "fixed":
            record = fixed_mix(cfg, run, inputs, log=log)
        else:
            record = adaptive_mix(cfg, run, inputs, device=device, reporter=reporter, log=log)
        run.write_summary(
            {
                "status": "finished",
                "kind": "mix",
                "mix_kind": cfg.kind,
                "standard": absolute(cfg.standard),
                "robust": absolute(cfg.robust),
                "eps": inputs.eps,
                "data": inputs.data,
                **record,
                "settings": {
                    "sweep": cfg.sweep.model_dump(mode="json"),
                    **(
                        {"mixnet": cfg.mixnet.model_dump(mode="json")}
                        if cfg.kind == "adaptive"
                        else {}
                    ),
                },
                "wall_seconds": time.perf_counter() - started,
                "environment": environment_info(device),
            }
        )
    return run


def fixed_mix(cfg: MixConfig, run: RunDir, inputs: MixInputs, *, log: Log) -> dict[str, Any]:
    """Sweep alpha x s_g x s_h on validation images, keep the point the sweep's rule picks."""
    store = PointStore(run.path / POINTS, sweep_signature(cfg, inputs.eps))
    reference = reference_robustness(cfg, inputs, store, log=log)

    def on_point(p: dict[str, Any]) -> None:
        store.record(p)
        bound = "" if p.get("robust_complete", True) else "<= "
        log(
            f"alpha {p['alpha']:.2f}, s_g {_temp(p['temperature_std'])}, "
            f"s_h {_temp(p['temperature_rob'])}: validation clean {p['clean_acc']:.2%}  "
            f"robust {bound}{p['robust_acc']:.2%}  ({p['seconds']:.0f} s)"
        )

    points = alpha_sweep(
        inputs.standard,
        inputs.robust,
        images=inputs.images,
        eps=inputs.eps,
        settings=cfg.sweep,
        reference=reference,
        seed=cfg.seed,
        on_point=on_point,
        done=store.done,
    )
    chosen = choose(points, tolerance=cfg.sweep.tolerance, reference=reference, key=FIXED_KNOBS)
    temps = temperatures(chosen)
    write_mix(run, mix_spec(cfg, alpha=chosen["alpha"], **temps))
    attack = attack_label(cfg.sweep, inputs.info["images_attacked"])
    plot_tradeoff(
        points,
        run.plots_dir / "tradeoff.png",
        title=f"{data_name(cfg)} fixed mix",
        attack=attack,
        chosen=chosen,
    )
    selection = selection_record(
        points=points,
        chosen={k: chosen[k] for k in FIXED_KNOBS},
        grids={
            "alpha": cfg.sweep.alphas,
            "temperature_std": cfg.sweep.temperatures_std,
            "temperature_rob": cfg.sweep.temperatures_rob,
        },
        rule=admission_rule(cfg.sweep.tolerance),
        validation=inputs.info,
        attack=attack,
        reference=reference,
    )
    return {
        "sweep": points,
        "alpha": chosen["alpha"],
        **temps,
        "chosen": chosen,
        "sweep_attack": attack,
        "selection": selection,
    }


def _temp(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
