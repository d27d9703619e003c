"""The `robust mix` and `robust eval` commands: typed config in, run directory out.

Each writes `summary.json` (status, numbers, environment) and its plots into a run directory;
given a fixed `run_path` a command resumes (evaluation keeps every finished chunk of images).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from trustvision.config import DataConfig, OptimConfig
from trustvision.data.loader import build_loaders, derive_seed
from trustvision.errors import ConfigError
from trustvision.robust.autoattack import (
    ChunkResult,
    autoattack_flags,
    build_attackers,
)
from trustvision.robust.config import DEFAULT_EPS, EvalConfig, MixConfig
from trustvision.robust.evaluate import (
    attack_report,
    clean_correct,
    load_data,
    model_info,
    test_pixels,
)
from trustvision.robust.mixing import AdaptiveMixedClassifier, build_adaptive
from trustvision.robust.mixtrain import mixing_objective
from trustvision.robust.pixels import Normalized
from trustvision.robust.plots import plot_tradeoff
from trustvision.robust.runs import (
    data_of,
    load_base,
    load_model,
    open_run,
    read_finished,
    write_mix,
)
from trustvision.robust.sweep import alpha_sweep, choose, robust_accuracy
from trustvision.robust.training import apply_threads
from trustvision.train.loop import Accel, Reporter, fit, select_device
from trustvision.train.optim import build_optimizer, build_scheduler, parameter_groups
from trustvision.train.runs import RunDir, environment_info

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


def _mix_spec(cfg: MixConfig, **extra: Any) -> dict[str, Any]:
    return {
        "kind": cfg.kind,
        "standard": cfg.standard,
        "robust": cfg.robust,
        "temperature_std": cfg.temperature_std,
        "temperature_rob": cfg.temperature_rob,
        **extra,
    }


def run_mix(
    cfg: MixConfig,
    *,
    run_path: str | Path | None = None,
    reporter: Reporter | None = None,
    log: Log = _quiet,
) -> RunDir:
    """Build a fixed mix (alpha sweep, trade-off plot) or train an adaptive one."""
    apply_threads(cfg.threads)
    device = select_device(cfg.device)
    standard = load_base(cfg.standard, device=device)
    robust = load_base(cfg.robust, device=device)
    data = data_of(cfg.robust)
    eps = eps_for(data, cfg.eps)
    dataset = load_data(data)
    x, y = test_pixels(dataset, count=cfg.sweep.test_subset)
    run, _ = open_run(run_path, root=cfg.runs_dir, name=cfg.name, config=cfg)
    started = time.perf_counter()
    torch.manual_seed(derive_seed(cfg.seed, "mix"))
    if cfg.kind == "fixed":
        record = _fixed_mix(
            cfg, run, standard, robust, test=(x.to(device), y.to(device)), eps=eps, log=log
        )
    else:
        record = _adaptive_mix(
            cfg,
            run,
            standard,
            robust,
            dataset_record=data,
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
    test: tuple[Tensor, Tensor],
    eps: float,
    log: Log,
) -> dict[str, Any]:
    points = alpha_sweep(
        standard,
        robust,
        test=test,
        eps=eps,
        settings=cfg.sweep,
        temperature_std=cfg.temperature_std,
        temperature_rob=cfg.temperature_rob,
        seed=cfg.seed,
        on_point=lambda p: log(
            f"alpha {p['alpha']:.2f}: clean {p['clean_acc']:.2%}  robust {p['robust_acc']:.2%}  ({p['seconds']:.0f} s)"
        ),
    )
    chosen = choose(points, tolerance=cfg.sweep.tolerance)
    write_mix(run, _mix_spec(cfg, alpha=chosen["alpha"]))
    attack = _attack_label(cfg.sweep.attack.attacks, cfg.sweep.subset, cfg.sweep.attack.n_iter)
    plot_tradeoff(
        points, run.plots_dir / "tradeoff.png", title=f"{test_name(cfg)} fixed mix", attack=attack
    )
    return {"sweep": points, "alpha": chosen["alpha"], "chosen": chosen, "sweep_attack": attack}


def test_name(cfg: MixConfig) -> str:
    """The data set name of a mix config (for titles)."""
    return str(data_of(cfg.robust)["name"])


def _attack_label(attacks: Sequence[str], n: int, n_iter: int) -> str:
    return f"{' + '.join(a.upper() for a in attacks)} ({n_iter} it.) on {n} images"


def _adaptive_mix(
    cfg: MixConfig,
    run: RunDir,
    standard: Normalized,
    robust: Normalized,
    *,
    dataset_record: dict[str, Any],
    eps: float,
    device: torch.device,
    reporter: Reporter | None,
    log: Log,
) -> dict[str, Any]:
    net = cfg.mixnet
    mix = build_adaptive(
        standard,
        robust,
        input_shape=tuple(dataset_record["image_shape"]),
        width=net.width,
        temperature_std=cfg.temperature_std,
        temperature_rob=cfg.temperature_rob,
        gamma_scale=net.gamma_scale,
        gamma_bias=net.gamma_bias,
    )
    data_cfg = DataConfig(
        name=dataset_record["name"],
        source=dataset_record.get("from_path"),
        train_subset=net.train_subset,
        test_subset=2000,
        batch_size=net.batch_size,
        eval_batch_size=500,
    )
    dataset = load_data(dataset_record)
    train_loader, test_loader, _ = build_loaders(
        dataset, data_cfg, seed=cfg.seed, device=device, normalize=False
    )
    optim = OptimConfig(name="adamw", lr=net.lr, weight_decay=net.weight_decay, schedule="cosine")
    optimizer = build_optimizer(optim, parameter_groups([mix.mixnet]))
    scheduler = build_scheduler(
        optimizer,
        optim,
        total_steps=net.epochs * len(train_loader),
        steps_per_epoch=len(train_loader),
    )
    result = fit(
        mix,
        train_loader=train_loader,
        test_loader=test_loader,
        optimizer=optimizer,
        scheduler=scheduler,
        objective=mixing_objective(net, eps=eps),
        epochs=net.epochs,
        seed=cfg.seed,
        accel=Accel(device),
        num_classes=dataset.num_classes,
        run=run,
        resume=any(run.checkpoints_dir.iterdir()),
        reporter=reporter,
    )
    mix.eval()
    record: dict[str, Any] = {"history": result.history, "train_seconds": result.wall_seconds}
    if net.bias_sweep:
        record.update(
            _bias_sweep(cfg, mix, robust, dataset=dataset, eps=eps, device=device, log=log)
        )
    write_mix(run, _mix_spec(cfg, width=net.width, gamma_bias=float(mix.gamma_bias)), mix)
    record["gamma_bias"] = float(mix.gamma_bias)
    return record


def _bias_sweep(
    cfg: MixConfig,
    mix: AdaptiveMixedClassifier,
    robust: Normalized,
    *,
    dataset: Any,
    eps: float,
    device: torch.device,
    log: Log,
) -> dict[str, Any]:
    """Evaluate every gamma bias like a fixed alpha; keep the best by the sweep's rule."""
    x, y = test_pixels(dataset, count=cfg.sweep.test_subset)
    x, y = x.to(device), y.to(device)
    n = cfg.sweep.subset
    reference, _ = robust_accuracy(robust, x[:n], y[:n], eps=eps, settings=cfg.sweep, seed=cfg.seed)
    points = []
    for bias in cfg.mixnet.bias_sweep:
        mix.gamma_bias.fill_(bias)
        clean = float(clean_correct(mix, x, y).float().mean())
        rob, seconds = robust_accuracy(
            mix, x[:n], y[:n], eps=eps, settings=cfg.sweep, seed=cfg.seed
        )
        points.append(
            {"gamma_bias": bias, "clean_acc": clean, "robust_acc": rob, "seconds": seconds}
        )
        log(f"gamma bias {bias:+.2f}: clean {clean:.2%}  robust {rob:.2%}")
    chosen = choose(points, tolerance=cfg.sweep.tolerance, reference=reference, key="gamma_bias")
    mix.gamma_bias.fill_(chosen["gamma_bias"])
    return {"bias_sweep": points, "bias_reference_robust_acc": reference}


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
