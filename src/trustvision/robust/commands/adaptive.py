"""`trustvision robust mix kind=adaptive`: train the mixing network (the authors' recipe,
robust/mixtrain.py) on training images both bases trained on, then choose its gate (bias x
scale x alpha range) and the temperatures s_g, s_h on validation images."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trustvision.config import DataConfig, OptimConfig
from trustvision.data.dataset import ArraySplit, Dataset
from trustvision.data.loader import BatchLoader, build_loaders, to_tensor
from trustvision.robust.commands.common import (
    POINTS,
    Log,
    MixInputs,
    PointStore,
    admission_rule,
    attack_label,
    data_name,
    mix_spec,
    reference_robustness,
    selection_record,
    sweep_signature,
)
from trustvision.robust.config import MixConfig
from trustvision.robust.evaluate import mixnet_train_indices, validation_indices
from trustvision.robust.mixing import AdaptiveMixedClassifier, build_adaptive
from trustvision.robust.mixtrain import (
    GateMonitor,
    average_gate_statistics,
    gate_record,
    mixing_objective,
)
from trustvision.robust.plots import plot_gate
from trustvision.robust.runs import tensors_sha256, write_mix
from trustvision.robust.sweep import (
    ADAPTIVE_KNOBS,
    GATE_KNOBS,
    bias_sweep,
    choose,
    gate_grid,
    knob_values,
    set_knobs,
)
from trustvision.runs import RunDir
from trustvision.train.loop import Accel, Batches, FitResult, Reporter
from trustvision.train.recipe import train_into_run

MONITOR_IMAGES = 2000  # validation images the mixing network's every epoch is evaluated on
# The gate's candidates, chosen after the mixing network has trained: a mix that differs from
# its config only in these (and in the `sweep` settings) keeps its trained network.
GATE_CHOICE_KEYS = ("bias_sweep", "scale_sweep", "alpha_ranges")


def gate_choice_differences(run_path: str | Path | None, cfg: MixConfig) -> list[str] | None:
    """The keys in which the adaptive mix begun at `run_path` differs from `cfg`, if they are
    all chosen after training (GATE_CHOICE_KEYS, the `sweep` settings), so that its trained
    network holds for `cfg`; None if another key differs or there is no such run."""
    if run_path is None or not RunDir(run_path).config_path.is_file():
        return None
    differing = RunDir(run_path).config_differences(cfg)
    gate_only = all(
        key.startswith("sweep.") or key.removeprefix("mixnet.") in GATE_CHOICE_KEYS
        for key in differing
    )
    return differing if gate_only else None


def chooses_gate_again(run_path: str | Path | None, cfg: MixConfig) -> bool:
    """Whether the adaptive mix at `run_path` keeps its trained network but not its gate:
    begun with a config that differs from `cfg` in what is chosen after training only."""
    return bool(gate_choice_differences(run_path, cfg))


def mixnet_batches(
    cfg: MixConfig, inputs: MixInputs, *, device: torch.device
) -> tuple[BatchLoader, BatchLoader]:
    """The mixing network's training batches (a seeded subset of the images both bases trained
    on, never a validation image) and up to `MONITOR_IMAGES` validation images to follow its
    training, in batches of the robust base's `data.eval_batch_size`."""
    net, dataset, bases = cfg.mixnet, inputs.dataset, inputs.bases
    labels = dataset.train.labels
    indices = mixnet_train_indices(labels, bases, subset=net.train_subset, seed=cfg.seed)
    train = ArraySplit(np.asarray(dataset.train.images[indices]), np.asarray(labels[indices]))
    eval_batch = inputs.eval_batch_size
    data_cfg = DataConfig(
        name=dataset.name,
        validation=0.0,  # `train` already excludes the bases' hold-out
        batch_size=net.batch_size,
        eval_batch_size=eval_batch,
        augment=net.augment,
    )
    none = ArraySplit(train.images[:0], train.labels[:0])  # no test image is even loaded
    loaders = build_loaders(
        replace(dataset, train=train, test=none),
        data_cfg,
        seed=cfg.seed,
        device=device,
        normalize=False,
    )
    held = validation_indices(labels, bases)[:MONITOR_IMAGES]
    return loaders.train, pixel_loader(dataset, held, batch_size=eval_batch, device=device)


def pixel_loader(
    dataset: Dataset, indices: np.ndarray, *, batch_size: int, device: torch.device
) -> BatchLoader:
    """Unaugmented batches of the training images at `indices`, in pixel space (the bases
    normalise their own inputs), in the order given."""
    return BatchLoader(
        to_tensor(dataset.train.images, indices),
        to_tensor(dataset.train.labels, indices),
        batch_size=batch_size,
        mean=dataset.mean,
        std=dataset.std,
        device=device,
        normalize=False,
    )


def _validation_names(record: dict[str, Any]) -> dict[str, Any]:
    """An epoch's record; one resumed from a checkpoint written before the mixing network's
    validation images were named val_* has them as test_* and gets them renamed."""
    if "val_acc" in record:
        return record
    return {
        k.replace("test_", "val_", 1) if k.startswith("test_") else k: v for k, v in record.items()
    }


def build_mix(cfg: MixConfig, inputs: MixInputs) -> AdaptiveMixedClassifier:
    """The two bases with a fresh mixing network, its gate as configured for training."""
    net = cfg.mixnet
    return build_adaptive(
        inputs.standard,
        inputs.robust,
        input_shape=inputs.dataset.image_shape,
        width=net.width,
        temperature_std=net.temperature_std,
        temperature_rob=net.temperature_rob,
        gamma_scale=net.gamma_scale,
        gamma_bias=net.gamma_bias,
        gamma_clamp=net.gamma_clamp,
        stages=net.stages,
    )


def train_mixnet(
    cfg: MixConfig,
    run: RunDir,
    mix: AdaptiveMixedClassifier,
    inputs: MixInputs,
    *,
    device: torch.device,
    reporter: Reporter | None,
) -> tuple[FitResult, int]:
    """Train the mixing network into `run` (resuming its checkpoints); the result and how many
    training images it read. Each epoch is evaluated on validation images and records the
    gate's statistics (`mixtrain.gate_record`); the last one averages its BatchNorm."""
    net = cfg.mixnet
    train, val = mixnet_batches(cfg, inputs, device=device)
    monitor = GateMonitor()
    x_gate, y_gate = (t[: net.monitor_images] for t in inputs.images)

    blind = [False]  # whether this epoch's training attacks are made without the gate

    def before_epoch(epoch: int) -> None:
        blind[0] = epoch < net.blind_epochs
        if epoch == net.epochs - 1:
            average_gate_statistics(mix)

    def gate_stats(_epoch: int) -> dict[str, Any]:
        return monitor.epoch_record() | gate_record(
            mix, x_gate, y_gate, eps=inputs.eps, steps=net.monitor_steps
        )

    optim = OptimConfig(
        name="adamw",
        lr=net.lr,
        weight_decay=net.weight_decay,
        schedule="warmup_cosine",
        warmup_fraction=net.warmup_fraction,
        grad_clip=net.grad_clip,
    )
    result = train_into_run(
        mix,
        run,
        batches=Batches(train, test=None, val=val),  # making the mix never reads a test image
        objective=mixing_objective(net, eps=inputs.eps, monitor=monitor, blind=lambda: blind[0]),
        optim=optim,
        epochs=net.epochs,
        seed=cfg.seed,
        accel=Accel(device),
        num_classes=inputs.dataset.num_classes,
        resume=any(run.checkpoints_dir.iterdir()),
        reporter=reporter,
        groups=[mix.mixnet],
        before_epoch=before_epoch,
        after_epoch=gate_stats,
        weights=None,  # mix.json and mixnet.safetensors hold the mix (runs.write_mix)
    )
    return result, train.num_samples


def adaptive_mix(
    cfg: MixConfig,
    run: RunDir,
    inputs: MixInputs,
    *,
    device: torch.device,
    reporter: Reporter | None,
    log: Log,
) -> dict[str, Any]:
    """Train the mixing network, choose its gate on validation images, write the mix."""
    mix = build_mix(cfg, inputs)
    result, train_images = train_mixnet(cfg, run, mix, inputs, device=device, reporter=reporter)
    history = [_validation_names(record) for record in result.history]
    last = history[-1]
    log(
        "gate, mean alpha after training: training mode clean "
        f"{last.get('train_alpha_clean', float('nan')):.3f} / attacked "
        f"{last.get('train_alpha_attacked', float('nan')):.3f}; evaluation mode on "
        f"{min(cfg.mixnet.monitor_images, len(inputs.images[1]))} validation images clean "
        f"{last['val_alpha_clean']:.3f} / attacked {last['val_alpha_attacked']:.3f}"
    )
    plot_gate(history, run.plots_dir / "gate.png", title=f"{data_name(cfg)} mixing network")
    mix.eval()
    record: dict[str, Any] = {
        "history": history,
        "train_seconds": result.wall_seconds,
        "mixnet_train_images": train_images,
    }
    record.update(choose_gate(cfg, mix, inputs, run=run, log=log))
    chosen = record["chosen"]
    gate = {k: chosen[k] for k in GATE_KNOBS}
    spec = mix_spec(
        cfg,
        temperature_std=chosen["temperature_std"],
        temperature_rob=chosen["temperature_rob"],
        width=cfg.mixnet.width,
        stages=list(cfg.mixnet.stages),
        **gate,
    )
    write_mix(run, spec, mix)
    record.update(gate)
    return record


def gate_grids(cfg: MixConfig) -> dict[str, Any]:
    """The candidates of each gate knob and temperature (one each without a bias sweep)."""
    net = cfg.mixnet
    swept = bool(net.bias_sweep)
    return {
        "gamma_bias": net.bias_sweep or (net.gamma_bias,),
        "gamma_scale": (net.scale_sweep or (net.gamma_scale,)) if swept else (net.gamma_scale,),
        "alpha_range": net.alpha_ranges if swept else ((0.0, 1.0),),
        "temperature_std": cfg.sweep.temperatures_std if swept else (net.temperature_std,),
        "temperature_rob": cfg.sweep.temperatures_rob if swept else (net.temperature_rob,),
    }


def _configured_gate(cfg: MixConfig, mix: AdaptiveMixedClassifier) -> dict[str, Any]:
    chosen = knob_values(mix)  # as built: the configured gate, training temperatures
    selection = selection_record(
        points=[],
        chosen={**chosen, "alpha_range": (0.0, 1.0)},
        grids=gate_grids(cfg),
        rule="no `mixnet.bias_sweep`: the configured gate and training temperatures",
        validation=None,
        attack=None,
        reference=None,
    )
    return {
        "bias_sweep": [],
        "chosen": chosen,
        "temperature_std": chosen["temperature_std"],
        "temperature_rob": chosen["temperature_rob"],
        "selection": selection,
    }


def state_sha256(mix: AdaptiveMixedClassifier) -> str:
    """The trained mixing network, as one hash: the points of its gate sweep hold for it only."""
    return tensors_sha256(mix.mixing_state())


def gate_line(p: dict[str, Any]) -> str:
    """One line of the gate sweep's log."""
    return (
        f"gamma bias {p['gamma_bias']:+.2f}, scale {p['gamma_scale']:g}, alpha in "
        f"[{p['alpha_low']:g}, {p['alpha_high']:g}], s_g {p['temperature_std']:g}, "
        f"s_h {p['temperature_rob']:g}: validation clean {p['clean_acc']:.2%}  robust "
        f"{'' if p.get('robust_complete', True) else '<= '}{p['robust_acc']:.2%}  "
        f"(mean alpha on clean {p['mean_alpha_clean']:.3f})"
    )


def choose_gate(
    cfg: MixConfig, mix: AdaptiveMixedClassifier, inputs: MixInputs, *, run: RunDir, log: Log
) -> dict[str, Any]:
    """Judge every gamma bias x scale x alpha range x s_g x s_h on validation images like a
    fixed alpha and keep the best by the sweep's rule, the robust base's validation accuracy
    as the reference; without `mixnet.bias_sweep`, keep the configured gate and training
    temperatures."""
    if not cfg.mixnet.bias_sweep:
        return _configured_gate(cfg, mix)
    grids = gate_grids(cfg)
    eps = inputs.eps
    store = PointStore(run.path / POINTS, sweep_signature(cfg, eps, mixnet=state_sha256(mix)))
    reference = reference_robustness(cfg, inputs, store, log=log)

    def on_point(p: dict[str, Any]) -> None:
        store.record(p)
        log(gate_line(p))

    points = bias_sweep(
        mix,
        images=inputs.images,
        grid=gate_grid(grids["gamma_bias"], grids["gamma_scale"], grids["alpha_range"], cfg.sweep),
        eps=eps,
        settings=cfg.sweep,
        reference=reference,
        seed=cfg.seed,
        on_point=on_point,
        done=store.done,
    )
    chosen = choose(points, tolerance=cfg.sweep.tolerance, reference=reference, key=ADAPTIVE_KNOBS)
    set_knobs(mix, chosen)
    attack = attack_label(cfg.sweep, inputs.info["images_attacked"])
    selection = selection_record(
        points=points,
        chosen={
            **{k: chosen[k] for k in ADAPTIVE_KNOBS},
            "alpha_range": (chosen["alpha_low"], chosen["alpha_high"]),
        },
        grids=grids,
        rule=admission_rule(cfg.sweep.tolerance),
        validation=inputs.info,
        attack=attack,
        reference=reference,
    )
    return {
        "bias_sweep": points,
        "bias_reference_robust_acc": reference,
        "chosen": chosen,
        "temperature_std": chosen["temperature_std"],
        "temperature_rob": chosen["temperature_rob"],
        "selection": selection,
    }
