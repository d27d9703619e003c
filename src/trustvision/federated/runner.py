"""`trustvision fed run` / `fed eval`: from a typed config to a finished run directory.

The round loop exists once, here: sample clients, let the engine train them, aggregate,
evaluate every `eval_every` rounds, checkpoint every `checkpoint_every` rounds. Every
random draw of round r comes from (seed, r[, client]), so a run resumed from a checkpoint
ends exactly as an uninterrupted one (no RNG state is saved).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trustvision.config import OptimConfig, load_config
from trustvision.data.dataset import load_data
from trustvision.errors import ConfigError, DivergenceError, FederationError
from trustvision.federated.algorithm import Algorithm, Setup, algorithm_class
from trustvision.federated.client import ClientFailure, ClientUpdate, Workspace
from trustvision.federated.config import FedConfig
from trustvision.federated.data import Federation, build_federation
from trustvision.federated.engines import Engine, EngineFactory, engine_class
from trustvision.federated.engines.inprocess import InProcessEngine
from trustvision.federated.evaluate import (
    evaluation,
    evaluation_workspace,
    flat_metrics,
    generic_evaluation,
)
from trustvision.federated.tensors import State, clone, state_hash
from trustvision.models import create_model
from trustvision.runs import RunDir, environment_info
from trustvision.seeds import derive_seed
from trustvision.train import checkpoint as ckpt
from trustvision.train.loop import Accel, Reporter, SilentReporter, select_device
from trustvision.train.optim import lr_factor

TIMING_KEYS = frozenset({"train_seconds", "round_seconds", "eval_seconds"})


def sample_clients(num_clients: int, per_round: int, *, seed: int, round: int) -> list[int]:
    """The clients of `round`: `per_round` distinct ids drawn from (seed, "sample", round)."""
    rng = np.random.default_rng(derive_seed(seed, "sample", round))
    return sorted(int(k) for k in rng.choice(num_clients, size=per_round, replace=False))


def round_lr(optim: OptimConfig, *, round: int, rounds: int) -> float:
    """The learning rate of `round`: the configured schedule stepped once per round."""
    return optim.lr * lr_factor(round, cfg=optim, total_steps=rounds, steps_per_epoch=1)


@dataclass
class Session:
    """Everything a run needs, built from its config."""

    cfg: FedConfig
    accel: Accel
    federation: Federation
    algorithm: Algorithm
    engine: Engine
    server: Workspace  # the server's own modules, for generic evaluation

    def evaluate(self, global_state: State, *, round: int) -> dict[str, Any]:
        """Generic and local evaluation of `global_state` after `round` (0-based); clients that
        failed to predict are listed under `failures`."""
        generic = generic_evaluation(
            self.algorithm,
            self.server,
            global_state=global_state,
            federation=self.federation,
            accel=self.accel,
        )
        lr = round_lr(self.cfg.optim, round=round, rounds=self.cfg.rounds)
        local = self.engine.evaluate(
            global_state,
            round=round,
            lr=lr,
            generic_logits=generic.logits,
            test_features=generic.features,
        )
        result = evaluation(
            generic.results, local.evals, federation=self.federation, validations=local.validations
        )
        if local.failures:
            result["failures"] = [{"client": f.client_id, "error": f.error} for f in local.failures]
        return result


def build_session(
    cfg: FedConfig,
    *,
    make_engine: EngineFactory = InProcessEngine,
    reporter: Reporter | None = None,
) -> Session:
    """Load the data, split it over the clients, build the algorithm and the engine."""
    accel, federation, algorithm = build_parts(cfg)
    on_client = reporter.advance if reporter is not None else None
    engine = make_engine(algorithm, federation, cfg=cfg, accel=accel, on_client=on_client)
    server = evaluation_workspace(algorithm, accel)
    return Session(cfg, accel, federation, algorithm, engine, server)


def build_parts(
    cfg: FedConfig, *, source: str | None = None
) -> tuple[Accel, Federation, Algorithm]:
    """The device, the federation (a pure function of the config) and the algorithm.

    The server and every Flower client build the same parts from the same config;
    `source` reads the data set from another place than `cfg.data.source`.
    """
    device = select_device(cfg.device)
    accel = Accel(device, amp=cfg.amp, channels_last=cfg.channels_last)
    dataset = load_data(cfg.data, source=source)
    federation = build_federation(
        dataset,
        cfg.data,
        num_clients=cfg.num_clients,
        alpha=cfg.alpha,
        seed=cfg.seed,
        device=device,
    )

    def model_fn() -> Any:
        return create_model(
            cfg.model.name,
            num_classes=dataset.num_classes,
            in_channels=dataset.image_shape[0],
            **cfg.model.kwargs,
        )

    setup = Setup(
        model_fn=model_fn,
        num_classes=dataset.num_classes,
        seed=cfg.seed,
        local_epochs=cfg.local_epochs,
        options=cfg.algorithm.parsed_options(),
        label_smoothing=cfg.optim.label_smoothing,
    )
    return accel, federation, algorithm_class(cfg.algorithm.name)(setup)


def train_round(
    session: Session, global_state: State, *, round: int
) -> tuple[State, dict[str, Any]]:
    """One round: sample, train the clients, aggregate. Returns the new state and the record.

    The clients that answered are aggregated when there are `min_clients` of them; the
    others are listed under `failures` in the record.
    """
    cfg = session.cfg
    sampled = sample_clients(cfg.num_clients, cfg.clients_per_round, seed=cfg.seed, round=round)
    lr = round_lr(cfg.optim, round=round, rounds=cfg.rounds)
    result = session.engine.fit(global_state, sampled, round=round, lr=lr)
    updates = result.updates
    if len(updates) < cfg.min_clients:
        raise too_few_clients(
            round=round, sampled=len(sampled), minimum=cfg.min_clients, failures=result.failures
        )
    new_state = session.algorithm.aggregate(global_state, [(u.update, u.weight) for u in updates])
    record = {"round": round + 1, "lr": lr, "clients": sampled, **train_numbers(updates)}
    if result.failures:
        record["failures"] = [{"client": f.client_id, "error": f.error} for f in result.failures]
    return new_state, record


def too_few_clients(
    *, round: int, sampled: int, minimum: int, failures: list[ClientFailure]
) -> FederationError:
    """Why a round could not be aggregated, client by client."""
    answered = sampled - len(failures)
    reasons = "; ".join(f"client {f.client_id}: {f.error}" for f in failures)
    return FederationError(
        f"round {round + 1}: {answered} of {sampled} clients answered, fewer than "
        f"`min_clients` ({minimum}): {reasons}. Fix the clients, or lower `min_clients`, and "
        "resume from the last checkpoint with `--resume`."
    )


def train_numbers(updates: list[ClientUpdate]) -> dict[str, float]:
    """Image-weighted training loss and accuracy over a round's clients."""
    images = sum(u.metrics.get("train_images", 0) for u in updates)

    def mean(key: str) -> float:
        total = sum(u.metrics.get(key, 0.0) * u.metrics.get("train_images", 0) for u in updates)
        return total / images if images else math.nan

    return {
        "train_loss": mean("train_loss"),
        "train_acc": mean("train_acc"),
        "train_images": images,
        "train_seconds": sum(u.metrics.get("train_seconds", 0.0) for u in updates),
    }


def save_round(
    run: RunDir, session: Session, *, round: int, global_state: State, history: list, elapsed: float
) -> None:
    """Checkpoint after `round` rounds: global state, every client's personal state, history."""
    state = {
        "round": round,
        "global": global_state,
        "personal": session.engine.personal_states(),
        "history": history,
        "elapsed": elapsed,
        "global_sha256": state_hash(global_state),
        "rng": {"seed": session.cfg.seed, "next_round": round},
    }
    ckpt.save_checkpoint(run.checkpoints_dir / f"round-{round:05d}", state)
    ckpt.prune_checkpoints(run.checkpoints_dir, keep=2)


def restore_round(run: RunDir, session: Session) -> tuple[int, State | None, list, float]:
    """Continue from the newest checkpoint: metrics.jsonl is cut back to its history."""
    if ckpt.latest_checkpoint(run.checkpoints_dir) is None:
        return 0, None, [], 0.0
    restored = load_round(run, session)
    run.rewrite_metrics(restored[2])
    return restored


def run_federated(
    cfg: FedConfig,
    *,
    resume_dir: str | Path | None = None,
    stop_after: int | None = None,
    reporter: Reporter | None = None,
) -> RunDir:
    """Train `cfg.algorithm` for `cfg.rounds` rounds on `cfg.engine`; with `resume_dir`, continue.

    `stop_after` ends the process after that many rounds without a summary, as a kill
    after the checkpoint of that round would (for tests and for splitting long runs).
    """
    run = (
        RunDir.open(resume_dir)
        if resume_dir
        else RunDir.create(root=cfg.runs_dir, name=f"{cfg.name}-{cfg.algorithm.name}", config=cfg)
    )

    def train(make_engine: EngineFactory) -> RunDir:
        return train_federated(
            cfg,
            run,
            make_engine,
            resume=resume_dir is not None,
            stop_after=stop_after,
            reporter=reporter,
        )

    result: RunDir = engine_class(cfg.engine).host(cfg, run.path, train)
    return result


def train_federated(
    cfg: FedConfig,
    run: RunDir,
    make_engine: EngineFactory,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    reporter: Reporter | None = None,
) -> RunDir:
    """The round loop, with engines from `make_engine`, writing into `run`."""
    reporter = reporter or SilentReporter()
    session = build_session(cfg, make_engine=make_engine, reporter=reporter)
    start, global_state, history, elapsed = (
        restore_round(run, session) if resume else (0, None, [], 0.0)
    )
    if global_state is None:
        global_state = clone(session.algorithm.init_global(), device=session.accel.device)
    began = time.perf_counter() - elapsed
    final = None
    for r in range(start, cfg.rounds):
        if stop_after is not None and r >= stop_after:
            return run
        try:
            global_state, record, final = one_round(
                session, global_state, round=r, reporter=reporter
            )
        except DivergenceError as err:
            raise diverged(run, r, err) from None
        except FederationError as err:
            run.write_summary({"status": "too few clients", "error": str(err), "round": r + 1})
            raise
        history.append(record)
        run.log(record)
        reporter.finish(record)
        if (r + 1) % cfg.checkpoint_every == 0 or r + 1 == cfg.rounds:
            save_round(
                run,
                session,
                round=r + 1,
                global_state=global_state,
                history=history,
                elapsed=time.perf_counter() - began,
            )
    if final is None:
        final = session.evaluate(global_state, round=cfg.rounds - 1)
    finish_run(
        run,
        session,
        global_state=global_state,
        history=history,
        final=final,
        wall=time.perf_counter() - began,
    )
    return run


def diverged(run: RunDir, round: int, err: DivergenceError) -> DivergenceError:
    """Record a diverged run and say which checkpoint survives and what to try."""
    latest = ckpt.latest_checkpoint(run.checkpoints_dir)
    kept = f"the last good checkpoint is `{latest}`" if latest else "no checkpoint was written yet"
    message = (
        f"training diverged in round {round + 1}, {err}; {kept}. "
        "Lower `optim.lr` or set `optim.grad_clip` and start again."
    )
    run.write_summary({"status": "diverged", "error": message, "round": round + 1})
    return DivergenceError(message)


def one_round(
    session: Session, global_state: State, *, round: int, reporter: Reporter
) -> tuple[State, dict, dict | None]:
    """Train one round and evaluate it when due; returns state, record and the full evaluation."""
    cfg = session.cfg
    reporter.start(f"round {round + 1}/{cfg.rounds}", cfg.clients_per_round)
    started = time.perf_counter()
    global_state, record = train_round(session, global_state, round=round)
    result = None
    if (round + 1) % cfg.eval_every == 0 or round + 1 == cfg.rounds:
        eval_start = time.perf_counter()
        result = session.evaluate(global_state, round=round)
        record.update(flat_metrics(result, mask_unseen=cfg.mask_unseen))
        if "failures" in result:
            record["eval_failures"] = result["failures"]
        record["eval_seconds"] = time.perf_counter() - eval_start
    record["round_seconds"] = time.perf_counter() - started
    return global_state, record, result


# What a choice of round reads: each kind of accuracy is chosen by its own validation metric.
SELECTION_METRICS = {"generic": "generic_val_acc", "local": "local_val_acc"}


def select_round(history: list[dict], metric: str) -> dict[str, Any] | None:
    """The evaluated round with the highest `metric` (a validation accuracy; the latest round
    wins a tie) and every number logged for it; None when no round has it. Reads nothing but
    `metric` to choose, so a test number can never pick the round."""
    rows = [r for r in history if isinstance(r.get(metric), float) and not math.isnan(r[metric])]
    if not rows:
        return None
    chosen = max(reversed(rows), key=lambda r: r[metric])
    numbers = {k: v for k, v in chosen.items() if k not in TIMING_KEYS and k != "clients"}
    return {"selected_by": "validation", "metric": metric, **numbers}


def finish_run(
    run: RunDir, session: Session, *, global_state: State, history: list, final: dict, wall: float
) -> None:
    """Write summary.json, the global weights and the plots."""
    from trustvision.federated.plots import plot_federated_run

    cfg = session.cfg
    summary = {
        "status": "finished",
        "seed": cfg.seed,
        "algorithm": cfg.algorithm.name,
        "options": cfg.algorithm.options,
        "rounds": cfg.rounds,
        "wall_seconds": wall,
        "model": cfg.model.name,
        "data": {"name": cfg.data.name, "source": cfg.data.source, **session.federation.describe()},
        "final": final,
        "headline": flat_metrics(final, mask_unseen=cfg.mask_unseen),
        "selected": {
            kind: chosen
            for kind, metric in SELECTION_METRICS.items()
            if (chosen := select_round(history, metric)) is not None
        },
        "global_sha256": state_hash(global_state),
        "environment": environment_info(session.accel.device),
    }
    if "ssec.weight" in global_state:
        summary["ssec_sha256"] = state_hash({"ssec.weight": global_state["ssec.weight"]})
    ckpt.save_weights(
        run.path / "global.safetensors", global_state, {"algorithm": cfg.algorithm.name}
    )
    run.write_summary(summary)
    plot_federated_run(run, classes=session.federation.classes)


def resume_federated(
    run_dir: str | Path, *, stop_after: int | None = None, reporter: Reporter | None = None
) -> RunDir:
    """Continue a killed run with the config it was started with."""
    run = RunDir.open(run_dir)
    cfg = load_config(FedConfig, run.config_path)
    return run_federated(cfg, resume_dir=run.path, stop_after=stop_after, reporter=reporter)


def evaluate_run(run_dir: str | Path) -> dict[str, Any]:
    """Re-evaluate a run's newest checkpoint; writes and returns `eval.json`."""
    run = RunDir.open(run_dir)
    cfg = load_config(FedConfig, run.config_path)
    personal = algorithm_class(cfg.algorithm.name).personal
    if personal and not engine_class(cfg.engine).keeps_personal_states:
        raise ConfigError(
            f"run `{run.path}` kept its clients' personal states on the `{cfg.engine}` engine's "
            "clients, so its local accuracy cannot be computed again: read it in metrics.jsonl "
            "and summary.json"
        )
    session = build_session(cfg)
    rounds, global_state, _, _ = load_round(run, session)
    result = session.evaluate(global_state, round=rounds - 1)
    out = {"round": rounds, "headline": flat_metrics(result, mask_unseen=cfg.mask_unseen), **result}
    (run.path / "eval.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def load_round(run: RunDir, session: Session) -> tuple[int, State, list, float]:
    """The newest checkpoint's round count, global state, history and elapsed seconds.

    Personal states go back to the engine. A run without checkpoints is a ConfigError.
    """
    latest = ckpt.latest_checkpoint(run.checkpoints_dir)
    if latest is None:
        raise ConfigError(
            f"run `{run.path}` has no checkpoint yet: train it first (`trustvision fed run`)"
        )
    state = ckpt.load_checkpoint(latest, device=session.accel.device)
    session.engine.restore(state["personal"])
    return state["round"], state["global"], state["history"], state["elapsed"]
