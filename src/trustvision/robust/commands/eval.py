"""`trustvision robust eval`: AutoAttack (and the adaptive attack for an adaptive mix), the
checks against gradient masking and a RobustBench-style model card, on test images only.

Each finished chunk of images is saved with a signature of the evaluation's settings, so an
interrupted evaluation continues where it stopped and a larger `eval.subset` reuses every
finished chunk (the run directory's policy for a changed config is "update").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from trustvision.files import write_atomic
from trustvision.robust.autoattack import (
    ChunkResult,
    autoattack_flags,
    build_attackers,
    gate_under_attack,
)
from trustvision.robust.card import model_info
from trustvision.robust.commands.common import Log, computed_so_far, describe, eps_for, quiet
from trustvision.robust.config import EvalConfig
from trustvision.robust.evaluate import (
    attack_report,
    clean_correct,
    recorded_dataset,
    test_pixels,
)
from trustvision.robust.runs import data_of, load_model, model_sha256
from trustvision.runs import RunDir, environment_info
from trustvision.train.recipe import run_settings

STATE = "autoattack-chunks.json"


def _load_chunks(
    path: Path, signature: dict[str, Any], log: Log
) -> tuple[dict[int, ChunkResult], list[dict[str, int]]]:
    """The kept chunks of an evaluation with this signature (none for another model or other
    settings; a damaged file is reported and its chunks attacked again), and who computed
    them (`computed_so_far`)."""
    chunks: dict[int, ChunkResult] = {}
    state: Any = {}
    if path.is_file():
        try:
            state = json.loads(path.read_text())
            if state.get("signature") == signature:
                chunks = {int(k): ChunkResult(**v) for k, v in state["chunks"].items()}
        except (json.JSONDecodeError, TypeError, ValueError, AttributeError, KeyError) as err:
            log(f"{path} is damaged ({err}); its chunks are attacked again")
            chunks = {}
    return chunks, computed_so_far(path, state.get("computed_by") if chunks else None)


def _save_chunks(
    path: Path,
    signature: dict[str, Any],
    chunks: dict[int, ChunkResult],
    computed: list[dict[str, int]],
) -> None:
    body = {
        "signature": signature,
        "computed_by": computed,
        "chunks": {str(k): c.to_json() for k, c in chunks.items()},
    }
    write_atomic(path, json.dumps(body))


def run_eval(cfg: EvalConfig, *, run_path: str | Path | None = None, log: Log = quiet) -> RunDir:
    """AutoAttack (+ adaptive attack for adaptive mixes), masking checks and a model card."""
    with run_settings(cfg) as device:
        settings = cfg.eval
        model = load_model(cfg.model, device=device)
        about = describe(cfg.model)
        data = data_of(cfg.model)
        eps = eps_for(data, settings.eps)
        dataset = recorded_dataset(data)
        run, _ = RunDir.open_or_create(
            run_path, root=cfg.runs_dir, name=cfg.name, config=cfg, policy="update"
        )
        test_split = dataset.test_sha256
        x_all, y_all = test_pixels(dataset, count=settings.test_subset)
        clean_acc = float(clean_correct(model, x_all, y_all).float().mean())
        log(f"clean accuracy {clean_acc:.2%} on {len(y_all)} test images")
        x, y = (t.to(device) for t in test_pixels(dataset, count=settings.subset))
        adaptive = about["kind"] == "adaptive mix" and settings.adaptive
        report, gate, order = _attack(
            cfg, model, x, y, eps=eps, adaptive=adaptive, test_split=test_split, run=run, log=log
        )
        info = model_info(
            name=f"{data['name']} {about['kind']} ({Path(cfg.model).name})",
            dataset=data["name"],
            architecture=about["architecture"],
            eps=eps,
            clean_acc=clean_acc,
            autoattack_acc=report["autoattack"]["robust_acc"],
            forward_passes=2 if about["kind"].endswith("mix") else 1,
            footnote=_footnote(data, settings.version, n=report["autoattack"]["n"]),
        )
        write_atomic((run.path / "model_info.json"), json.dumps(info, indent=2) + "\n")
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
                "test_split_sha256": test_split,
                "version": settings.version,
                "eval_subset": settings.subset,
                # the attacked images per class: "the first n" is a sample only if it spans them
                "attacked_per_class": torch.bincount(
                    y.cpu(), minlength=dataset.num_classes
                ).tolist(),
                **report,
                **({"gate": gate} if gate is not None else {}),
                "autoattack_flags": autoattack_flags(model, x[:100], y[:100], attacks=order),
                "model_info": info,
                "environment": environment_info(device),
            }
        )
    return run


def _attack(
    cfg: EvalConfig,
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    adaptive: bool,
    test_split: str,
    run: RunDir,
    log: Log,
) -> tuple[dict[str, Any], dict[str, Any] | None, list[str]]:
    """AutoAttack chunk by chunk (finished chunks kept in the run), the masking checks and, for
    an adaptive mix, the gate under attack; returns the report, the gate and the attack order."""
    settings = cfg.eval
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
    signature = {
        "model": str(cfg.model),
        "model_sha256": model_sha256(model),
        "eps": eps,
        "seed": cfg.seed,  # the attacks' random starts
        "test_split_sha256": test_split,
        "order": attackers.order,
        "settings": keep,
    }
    state_path = run.path / STATE
    chunks, computed = _load_chunks(state_path, signature, log)

    def save(index: int, chunk: ChunkResult) -> None:
        chunks[index] = chunk
        _save_chunks(state_path, signature, chunks, computed)
        robust = sum(f is None for f in chunk.fooled_by)
        seconds = sum(chunk.seconds.values())
        log(f"chunk {index + 1}: {robust}/{len(chunk.fooled_by)} robust ({seconds:.0f} s)")

    batch = settings.custom.batch_size
    report = attack_report(
        attackers, x, y, eps=eps, settings=settings, batch_size=batch, done=chunks, on_chunk=save
    )
    gate = None
    if adaptive:
        gate = gate_under_attack(attackers, x, y, batch_size=batch)
        log(
            f"gate: mean alpha {gate['alpha_clean']:.3f} on clean test images, "
            f"{gate['alpha_attacked']:.3f} under {gate['attacks']['attacked']}, "
            f"{gate['alpha_adaptive']:.3f} under {gate['attacks']['adaptive']}"
        )
    return report, gate, list(attackers.order)


def _footnote(data: dict[str, Any], version: str, *, n: int) -> str:
    notes = [f"AutoAttack accuracy on the first {n} test images"]
    if data.get("variant") == "jpeg":
        notes.append(
            "CIFAR-10 read from a JPEG re-encoding (cifar10-jpeg.zip), not the original files"
        )
    if version != "standard":
        notes.append("reduced AutoAttack (custom attacks/iterations), not the standard version")
    return "; ".join(notes)
