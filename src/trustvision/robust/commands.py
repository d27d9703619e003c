"""The `robust mix` and `robust eval` commands: typed config in, run directory out.

Each writes `summary.json` (status, numbers, environment) and its plots into a run directory;
given a fixed `run_path` a command resumes (evaluation keeps every finished chunk of images).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trustvision.config import DataConfig, OptimConfig
from trustvision.data.dataset import ArraySplit, Dataset
from trustvision.data.loader import BatchLoader, build_loaders, to_tensor
from trustvision.errors import ConfigError
from trustvision.robust.autoattack import (
    ChunkResult,
    autoattack_flags,
    build_attackers,
    gate_under_attack,
)
from trustvision.robust.config import DEFAULT_EPS, EvalConfig, MixConfig, SweepSettings
from trustvision.robust.evaluate import (
    attack_report,
    clean_correct,
    load_data,
    mixnet_train_indices,
    model_info,
    test_pixels,
    validation_indices,
    validation_pixels,
)
from trustvision.robust.mixing import AdaptiveMixedClassifier, build_adaptive
from trustvision.robust.mixtrain import (
    GateMonitor,
    average_gate_statistics,
    gate_record,
    mixing_objective,
)
from trustvision.robust.pixels import Normalized
from trustvision.robust.plots import plot_gate, plot_tradeoff
from trustvision.robust.runs import (
    data_of,
    load_base,
    load_model,
    open_run,
    read_finished,
    write_mix,
)
from trustvision.robust.sweep import (
    ADAPTIVE_KNOBS,
    FIXED_KNOBS,
    GATE_KNOBS,
    alpha_sweep,
    bias_sweep,
    choose,
    gate_grid,
    knob_values,
    robust_accuracy,
    set_knobs,
    temperatures,
)
from trustvision.robust.training import apply_threads
from trustvision.runs import RunDir, environment_info
from trustvision.seeds import derive_seed
from trustvision.train.loop import Accel, Reporter, fit, select_device
from trustvision.train.optim import build_optimizer, build_scheduler, parameter_groups

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def eps_for(data: dict[str, Any], eps: float | None) -> float:
    """The given eps, else the data set's usual l_inf budget."""
    if eps is not None:
        return eps
    if data["name"] not in DEFAULT_EPS:
        raise ConfigError(f"data set `{data['name']}` has no default eps: set `eps` explicitly")
    return DEFAULT_EPS[data["name"]]


def describe(path: str | Path) -> dict[str, Any]:
    """Kind ("standard", "robust", "smoothing", "fixed mix", "adaptive mix") and architecture."""
    summary = read_finished(path)
    if summary.get("kind") == "mix":
        std, rob = describe(summary["standard"]), describe(summary["robust"])
        arch = f"{std['architecture']} + {rob['architecture']}"
        if summary["mix_kind"] == "adaptive":
            arch += " + mixing network"
        return {"kind": f"{summary['mix_kind']} mix", "architecture": arch}
    method = summary["attack"]["method"]
    kind = {"standard": "standard", "gaussian": "smoothing"}.get(method, "robust")
    return {"kind": kind, "architecture": summary["model"], "method": method}


# ----------------------------------------------------------------------------- mix

VALIDATION_DRAWN = (
    "training images both bases held out (`data.validation` of their training split, "
    "stratified by class, drawn from their seed), never trained on by either base or by the "
    "mixing network; the first N of a seeded stratified random order of that hold-out"
)


def _mix_spec(
    cfg: MixConfig, *, temperature_std: float, temperature_rob: float, **extra: Any
) -> dict[str, Any]:
    return {
        "kind": cfg.kind,
        "standard": cfg.standard,
        "robust": cfg.robust,
        "temperature_std": temperature_std,
        "temperature_rob": temperature_rob,
        **extra,
    }


def base_records(cfg: MixConfig) -> dict[str, dict[str, Any]]:
    """The data records of a mix's two bases, keyed by run directory."""
    return {str(path): data_of(path) for path in (cfg.standard, cfg.robust)}


def validation_info(
    dataset: Dataset, bases: dict[str, dict[str, Any]], sweep: SweepSettings
) -> dict[str, Any]:
    """Which validation images a sweep reads: how many, and how they were drawn."""
    held = len(validation_indices(dataset.train.labels, bases))
    split = next(iter(bases.values()))
    return {
        "images_attacked": min(sweep.subset, held),
        "images_clean": held if sweep.clean_subset is None else min(sweep.clean_subset, held),
        "held_out": held,
        "drawn": VALIDATION_DRAWN,
        "split": {k: split[k] for k in ("validation", "seed", "train_subset", "imbalance_factor")},
        "bases": list(bases),
    }


def knob_records(
    chosen: dict[str, Any], grids: Mapping[str, Sequence[float]]
) -> dict[str, dict[str, Any]]:
    """Per knob: the value kept, the candidates and what chose it (`validation`; `config` for a
    single candidate; `unused` for a temperature the chosen alpha ignores)."""
    records = {}
    for knob, grid in grids.items():
        candidates = list(dict.fromkeys(grid))
        value = chosen.get(knob)
        by = "unused" if value is None else "validation" if len(candidates) > 1 else "config"
        records[knob] = {"value": value, "grid": candidates, "selected_by": by}
    return records


def selection_record(
    *,
    points: list[dict[str, Any]],
    chosen: dict[str, Any],
    grids: Mapping[str, Sequence[float]],
    rule: str,
    validation: dict[str, Any] | None,
    attack: str | None,
    reference: float | None,
) -> dict[str, Any]:
    """What a mix's summary says about how its knobs were chosen, with the grid's numbers."""
    knobs = knob_records(chosen, grids)
    chose = any(k["selected_by"] == "validation" for k in knobs.values())
    return {
        "selected_by": "validation" if chose else "config",
        "knobs": knobs,
        "rule": rule,
        "reference_robust_acc": reference,
        "validation_images": validation,
        "attack": attack,
        "points": points,
        "chosen": chosen,
    }


def run_mix(
    cfg: MixConfig,
    *,
    run_path: str | Path | None = None,
    reporter: Reporter | None = None,
    log: Log = _quiet,
) -> RunDir:
    """Build a fixed mix (validation sweep, trade-off plot) or train an adaptive one.

    Every knob is chosen on validation images, training images both bases held out
    (`evaluate.validation_pixels`); test images are never read here.
    """
    apply_threads(cfg.threads)
    device = select_device(cfg.device)
    standard = load_base(cfg.standard, device=device)
    robust = load_base(cfg.robust, device=device)
    data = data_of(cfg.robust)
    eps = eps_for(data, cfg.eps)
    dataset = load_data(data)
    bases = base_records(cfg)
    x, y = validation_pixels(dataset, bases, count=cfg.sweep.clean_subset)
    if cfg.sweep.subset > len(y):
        raise ConfigError(
            f"`sweep.subset={cfg.sweep.subset}` asks for more validation images than the bases "
            f"held out ({len(y)}): lower it, or retrain both bases with a larger `data.validation`"
        )
    images = (x.to(device), y.to(device))
    info = validation_info(dataset, bases, cfg.sweep)
    run, _ = open_run(run_path, root=cfg.runs_dir, name=cfg.name, config=cfg)
    started = time.perf_counter()
    torch.manual_seed(derive_seed(cfg.seed, "mix"))
    if cfg.kind == "fixed":
        record = _fixed_mix(cfg, run, standard, robust, images=images, info=info, eps=eps, log=log)
    else:
        record = _adaptive_mix(
            cfg,
            run,
            standard,
            robust,
            dataset=dataset,
            bases=bases,
            images=images,
            info=info,
            eps=eps,
            device=device,
            reporter=reporter,
            log=log,
        )
    run.write_summary(
        {
            "status": "finished",
            "kind": "mix",
            "mix_kind": cfg.kind,
            "standard": cfg.standard,
            "robust": cfg.robust,
            "eps": eps,
            "data": data,
            **record,
            "settings": {
                "sweep": cfg.sweep.model_dump(mode="json"),
                "mixnet": cfg.mixnet.model_dump(mode="json"),
            },
            "wall_seconds": time.perf_counter() - started,
            "environment": environment_info(device),
        }
    )
    return run


def _fixed_mix(
    cfg: MixConfig,
    run: RunDir,
    standard: Normalized,
    robust: Normalized,
    *,
    images: tuple[Tensor, Tensor],
    info: dict[str, Any],
    eps: float,
    log: Log,
) -> dict[str, Any]:
    points = alpha_sweep(
        standard,
        robust,
        images=images,
        eps=eps,
        settings=cfg.sweep,
        seed=cfg.seed,
        on_point=lambda p: log(
            f"alpha {p['alpha']:.2f}, s_g {_temp(p['temperature_std'])}, "
            f"s_h {_temp(p['temperature_rob'])}: validation clean {p['clean_acc']:.2%}  "
            f"robust {p['robust_acc']:.2%}  ({p['seconds']:.0f} s)"
        ),
    )
    chosen = choose(points, tolerance=cfg.sweep.tolerance, key=FIXED_KNOBS)
    temps = temperatures(chosen)
    write_mix(run, _mix_spec(cfg, alpha=chosen["alpha"], **temps))
    attack = _attack_label(
        cfg.sweep.attack.attacks, info["images_attacked"], cfg.sweep.attack.n_iter
    )
    plot_tradeoff(
        points,
        run.plots_dir / "tradeoff.png",
        title=f"{test_name(cfg)} fixed mix",
        attack=attack,
        chosen=chosen,
    )
    grids = {
        "alpha": cfg.sweep.alphas,
        "temperature_std": cfg.sweep.temperatures_std,
        "temperature_rob": cfg.sweep.temperatures_rob,
    }
    selection = selection_record(
        points=points,
        chosen={k: chosen[k] for k in FIXED_KNOBS},
        grids=grids,
        rule=f"the most accurate grid point (validation clean accuracy) whose validation robust "
        f"accuracy is within {cfg.sweep.tolerance:g} of the most robust grid point's",
        validation=info,
        attack=attack,
        reference=max(p["robust_acc"] for p in points),
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


def test_name(cfg: MixConfig) -> str:
    """The data set name of a mix config (for titles)."""
    return str(data_of(cfg.robust)["name"])


def _attack_label(attacks: Sequence[str], n: int, n_iter: int) -> str:
    return f"{' + '.join(a.upper() for a in attacks)} ({n_iter} it.) on {n} validation images"


def _mixnet_loaders(
    cfg: MixConfig,
    dataset: Dataset,
    bases: dict[str, dict[str, Any]],
    *,
    device: torch.device,
) -> tuple[BatchLoader, BatchLoader]:
    """The mixing network's training batches (a seeded subset of the images both bases trained
    on, never a validation image) and up to 2,000 validation images to follow its training."""
    net = cfg.mixnet
    labels = dataset.train.labels
    indices = mixnet_train_indices(labels, bases, subset=net.train_subset, seed=cfg.seed)
    train = ArraySplit(np.asarray(dataset.train.images[indices]), np.asarray(labels[indices]))
    data_cfg = DataConfig(
        name=dataset.name,
        validation=0.0,  # `train` already excludes the bases' hold-out
        batch_size=net.batch_size,
        eval_batch_size=500,
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
    held = validation_indices(labels, bases)[:2000]
    val = BatchLoader(
        to_tensor(dataset.train.images[held]),
        to_tensor(labels[held]),
        batch_size=500,
        mean=dataset.mean,
        std=dataset.std,
        device=device,
        normalize=False,
    )
    return loaders.train, val


def _as_validation(record: dict[str, Any]) -> dict[str, Any]:
    """A history record of the mixing network's `fit`, whose "test" loader held validation
    images: its `test_*` entries renamed `val_*`."""
    return {
        k.replace("test_", "val_", 1) if k.startswith("test_") else k: v for k, v in record.items()
    }


def _adaptive_mix(
    cfg: MixConfig,
    run: RunDir,
    standard: Normalized,
    robust: Normalized,
    *,
    dataset: Dataset,
    bases: dict[str, dict[str, Any]],
    images: tuple[Tensor, Tensor],
    info: dict[str, Any],
    eps: float,
    device: torch.device,
    reporter: Reporter | None,
    log: Log,
) -> dict[str, Any]:
    net = cfg.mixnet
    mix = build_adaptive(
        standard,
        robust,
        input_shape=dataset.image_shape,
        width=net.width,
        temperature_std=net.temperature_std,
        temperature_rob=net.temperature_rob,
        gamma_scale=net.gamma_scale,
        gamma_bias=net.gamma_bias,
        gamma_clamp=net.gamma_clamp,
    )
    train_loader, val_loader = _mixnet_loaders(cfg, dataset, bases, device=device)
    optim = OptimConfig(
        name="adamw",
        lr=net.lr,
        weight_decay=net.weight_decay,
        schedule="warmup_cosine",
        warmup_fraction=net.warmup_fraction,
    )
    optimizer = build_optimizer(optim, parameter_groups([mix.mixnet]))
    scheduler = build_scheduler(
        optimizer,
        optim,
        total_steps=net.epochs * len(train_loader),
        steps_per_epoch=len(train_loader),
    )
    monitor = GateMonitor()
    x_gate, y_gate = (t[: net.monitor_images].to(device) for t in images)

    def gate_stats(_epoch: int) -> dict[str, Any]:
        return monitor.epoch_record() | gate_record(
            mix, x_gate, y_gate, eps=eps, steps=net.monitor_steps
        )

    # `fit` evaluates every epoch on its `test_loader`: here validation images, so that making
    # the mix never reads a test image (its metrics.jsonl names them test_*, its summary val_*).
    result = fit(
        mix,
        train_loader=train_loader,
        test_loader=val_loader,
        optimizer=optimizer,
        scheduler=scheduler,
        objective=mixing_objective(net, eps=eps, monitor=monitor),
        epochs=net.epochs,
        seed=cfg.seed,
        accel=Accel(device),
        num_classes=dataset.num_classes,
        run=run,
        grad_clip=net.grad_clip,
        resume=any(run.checkpoints_dir.iterdir()),
        reporter=reporter,
        before_epoch=lambda epoch: (
            average_gate_statistics(mix) if epoch == net.epochs - 1 else None
        ),
        after_epoch=gate_stats,
    )
    history = [_as_validation(r) for r in result.history]
    last = history[-1]
    log(
        "gate, mean alpha after training: training mode clean "
        f"{last.get('train_alpha_clean', float('nan')):.3f} / attacked "
        f"{last.get('train_alpha_attacked', float('nan')):.3f}; evaluation mode on "
        f"{len(y_gate)} validation images clean {last['val_alpha_clean']:.3f} / attacked "
        f"{last['val_alpha_attacked']:.3f}"
    )
    plot_gate(history, run.plots_dir / "gate.png", title=f"{test_name(cfg)} mixing network")
    mix.eval()
    record: dict[str, Any] = {
        "history": history,
        "train_seconds": result.wall_seconds,
        "mixnet_train_images": train_loader.num_samples,
    }
    record.update(_choose_adaptive(cfg, mix, robust, images=images, info=info, eps=eps, log=log))
    chosen = record["chosen"]
    gate = {k: chosen[k] for k in GATE_KNOBS}
    spec = _mix_spec(
        cfg,
        temperature_std=chosen["temperature_std"],
        temperature_rob=chosen["temperature_rob"],
        width=net.width,
        **gate,
    )
    write_mix(run, spec, mix)
    record.update(gate)
    return record


def _choose_adaptive(
    cfg: MixConfig,
    mix: AdaptiveMixedClassifier,
    robust: Normalized,
    *,
    images: tuple[Tensor, Tensor],
    info: dict[str, Any],
    eps: float,
    log: Log,
) -> dict[str, Any]:
    """Judge every gamma bias x scale x alpha range x s_g x s_h on validation images like a
    fixed alpha and keep the best by the sweep's rule, the robust base's validation accuracy
    as the reference; without `mixnet.bias_sweep`, keep the configured gate and training
    temperatures."""
    net = cfg.mixnet
    swept = bool(net.bias_sweep)
    grids: dict[str, Any] = {
        "gamma_bias": net.bias_sweep or (net.gamma_bias,),
        "gamma_scale": (net.scale_sweep or (net.gamma_scale,)) if swept else (net.gamma_scale,),
        "alpha_range": net.alpha_ranges if swept else ((0.0, 1.0),),
        "temperature_std": cfg.sweep.temperatures_std if swept else (net.temperature_std,),
        "temperature_rob": cfg.sweep.temperatures_rob if swept else (net.temperature_rob,),
    }
    if not swept:
        chosen = knob_values(mix)  # as built: the configured gate, training temperatures
        selection = selection_record(
            points=[],
            chosen={**chosen, "alpha_range": (0.0, 1.0)},
            grids=grids,
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
    x, y = images
    n = cfg.sweep.subset
    reference, _ = robust_accuracy(robust, x[:n], y[:n], eps=eps, settings=cfg.sweep, seed=cfg.seed)
    log(f"robust base on validation images: {reference:.2%}")
    points = bias_sweep(
        mix,
        images=images,
        grid=gate_grid(grids["gamma_bias"], grids["gamma_scale"], grids["alpha_range"], cfg.sweep),
        eps=eps,
        settings=cfg.sweep,
        reference=reference,
        seed=cfg.seed,
        on_point=lambda p: log(
            f"gamma bias {p['gamma_bias']:+.2f}, scale {p['gamma_scale']:g}, alpha in "
            f"[{p['alpha_low']:g}, {p['alpha_high']:g}], s_g {p['temperature_std']:g}, "
            f"s_h {p['temperature_rob']:g}: validation clean {p['clean_acc']:.2%}  "
            f"robust {p['robust_acc']:.2%}  (mean alpha on clean {p['mean_alpha_clean']:.3f})"
        ),
    )
    chosen = choose(points, tolerance=cfg.sweep.tolerance, reference=reference, key=ADAPTIVE_KNOBS)
    set_knobs(mix, chosen)
    attack = _attack_label(
        cfg.sweep.attack.attacks, info["images_attacked"], cfg.sweep.attack.n_iter
    )
    selection = selection_record(
        points=points,
        chosen={
            **{k: chosen[k] for k in ADAPTIVE_KNOBS},
            "alpha_range": (chosen["alpha_low"], chosen["alpha_high"]),
        },
        grids=grids,
        rule=f"the most accurate grid point (validation clean accuracy) whose validation robust "
        f"accuracy is within {cfg.sweep.tolerance:g} of the robust base's on the same images",
        validation=info,
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


# ----------------------------------------------------------------------------- eval

STATE = "autoattack-chunks.json"


def _load_chunks(path: Path, signature: dict[str, Any]) -> dict[int, ChunkResult]:
    if not path.is_file():
        return {}
    state = json.loads(path.read_text())
    if state.get("signature") != signature:
        return {}
    return {int(k): ChunkResult(**v) for k, v in state["chunks"].items()}


def _save_chunks(path: Path, signature: dict[str, Any], chunks: dict[int, ChunkResult]) -> None:
    tmp = path.with_suffix(".tmp")
    body = {"signature": signature, "chunks": {str(k): c.to_json() for k, c in chunks.items()}}
    tmp.write_text(json.dumps(body))
    tmp.replace(path)


def run_eval(cfg: EvalConfig, *, run_path: str | Path | None = None, log: Log = _quiet) -> RunDir:
    """AutoAttack (+ adaptive attack for adaptive mixes), masking checks and a model card."""
    apply_threads(cfg.threads)
    device = select_device(cfg.device)
    settings = cfg.eval
    model = load_model(cfg.model, device=device)
    about = describe(cfg.model)
    data = data_of(cfg.model)
    eps = eps_for(data, settings.eps)
    dataset = load_data(data)
    run, _ = open_run(run_path, root=cfg.runs_dir, name=cfg.name, config=cfg)
    x_all, y_all = test_pixels(dataset, count=settings.test_subset)
    clean = clean_correct(model, x_all, y_all)
    log(f"clean accuracy {clean.float().mean():.2%} on {len(y_all)} test images")
    x, y = test_pixels(dataset, count=settings.subset)
    x, y = x.to(device), y.to(device)
    adaptive = about["kind"] == "adaptive mix" and settings.adaptive
    attackers = build_attackers(
        model,
        eps=eps,
        version=settings.version,
        custom=settings.custom,
        adaptive_weight=settings.adaptive_weight if adaptive else None,
        seed=cfg.seed,
    )
    # Chunk i always holds the same images, so a larger `subset` reuses every finished chunk.
    keep = settings.model_dump(mode="json", exclude={"subset", "test_subset"})
    signature = {"model": str(cfg.model), "eps": eps, "order": attackers.order, "settings": keep}
    state_path = run.path / STATE
    chunks = _load_chunks(state_path, signature)

    def save(index: int, chunk: ChunkResult) -> None:
        chunks[index] = chunk
        _save_chunks(state_path, signature, chunks)
        robust = sum(f is None for f in chunk.fooled_by)
        log(
            f"chunk {index + 1}: {robust}/{len(chunk.fooled_by)} robust ({sum(chunk.seconds.values()):.0f} s)"
        )

    report = attack_report(
        attackers,
        x,
        y,
        eps=eps,
        settings=settings,
        batch_size=settings.custom.batch_size,
        done=chunks,
        on_chunk=save,
    )
    gate = None
    if adaptive:
        gate = gate_under_attack(attackers, x, y, batch_size=settings.custom.batch_size)
        log(
            f"gate: mean alpha {gate['alpha_clean']:.3f} on clean test images, "
            f"{gate['alpha_attacked']:.3f} under {gate['attacks']['attacked']}, "
            f"{gate['alpha_adaptive']:.3f} under {gate['attacks']['adaptive']}"
        )
    flags = autoattack_flags(model, x[:100], y[:100], attacks=attackers.order)
    clean_acc = float(clean.float().mean())
    info = model_info(
        name=f"{data['name']} {about['kind']} ({Path(cfg.model).name})",
        dataset=data["name"],
        architecture=about["architecture"],
        eps=eps,
        clean_acc=clean_acc,
        autoattack_acc=report["autoattack"]["robust_acc"],
        n_autoattack=report["autoattack"]["n"],
        attacks=attackers.order,
        footnote=_footnote(data, settings.version),
        extra={"autoattack_ci95": report["autoattack"]["ci95"], "model_dir": str(cfg.model)},
    )
    (run.path / "model_info.json").write_text(json.dumps(info, indent=2) + "\n")
    run.write_summary(
        {
            "status": "finished",
            "kind": "eval",
            "model": str(cfg.model),
            "model_kind": about["kind"],
            "architecture": about["architecture"],
            "data": data,
            "clean_acc": clean_acc,
            "n_test": len(y_all),
            "version": settings.version,
            "eval_subset": settings.subset,
            **report,
            **({"gate": gate} if gate is not None else {}),
            "autoattack_flags": flags,
            "model_info": info,
            "environment": environment_info(device),
        }
    )
    return run


def _footnote(data: dict[str, Any], version: str) -> str | None:
    notes = []
    if data.get("variant") == "jpeg":
        notes.append(
            "CIFAR-10 read from a JPEG re-encoding (cifar10-jpeg.zip), not the original files"
        )
    if version != "standard":
        notes.append("reduced AutoAttack (custom attacks/iterations), not the standard version")
    return "; ".join(notes) or None
