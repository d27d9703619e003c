"""A federated run recorded in its run directory: each round logged, checkpoints, resume, summary.

`train_federated` runs a session's rounds (session.py) with a `Recorder` as their `on_round`:
every round's record goes to metrics.jsonl, and every `checkpoint_every` rounds (and after
the last) the global state, every client's personal state the engine lets the server see,
and the history are saved. A run resumed from a checkpoint replays the rounds after it and
ends exactly as an uninterrupted one. Engines may use it (a deployed Flower ServerApp trains
into a run directory); the runner, which picks the engine, sits above it.
"""

from __future__ import annotations

import math
import time
from typing import Any

from trustvision.errors import ConfigError, DivergenceError, FederationError
from trustvision.federated.config import FedConfig
from trustvision.federated.evaluate import flat_metrics
from trustvision.federated.session import (
    TIMING_KEYS,
    EngineFactory,
    RoundResult,
    Session,
    open_session,
)
from trustvision.federated.tensors import State, select, state_hash
from trustvision.runs import RunDir, environment_info
from trustvision.train import checkpoint as ckpt
from trustvision.train.divergence import diverged
from trustvision.train.loop import Reporter, SilentReporter

# What a choice of round reads: each kind of accuracy is chosen by its own validation metric.
SELECTION_METRICS = {"generic": "generic_val_acc", "local": "local_val_acc"}


class Recorder:
    """The `on_round` of a recorded run: logs each round, checkpoints it when due, and keeps
    the history, the last evaluation and the round that comes next."""

    def __init__(
        self, run: RunDir, session: Session, *, history: list, elapsed: float, next_round: int
    ) -> None:
        self.run = run
        self.session = session
        self.history = history
        self.began = time.perf_counter() - elapsed
        self.next_round = next_round  # 0-based: the round in progress when one fails
        self.final: dict[str, Any] | None = None  # the evaluation of the last round recorded

    def __call__(self, done: RoundResult) -> None:
        """Log `done` and checkpoint after it every `checkpoint_every` rounds and at the end."""
        self.history.append(done.record)
        self.run.log(done.record)
        self.final = done.evaluation
        self.next_round = done.round + 1
        cfg = self.session.cfg
        if self.next_round % cfg.checkpoint_every == 0 or self.next_round == cfg.rounds:
            save_round(
                self.run,
                self.session,
                round=self.next_round,
                global_state=done.state,
                history=self.history,
                elapsed=self.elapsed(),
            )

    def elapsed(self) -> float:
        """Seconds of training so far, those before a resume included."""
        return time.perf_counter() - self.began


def train_federated(
    cfg: FedConfig,
    run: RunDir,
    make_engine: EngineFactory,
    *,
    resume: bool = False,
    checkpoint: str | None = None,
    stop_after: int | None = None,
    reporter: Reporter | None = None,
) -> RunDir:
    """The round loop with engines from `make_engine`, recorded in `run`; with `resume`, from
    its newest good checkpoint (or the one named `checkpoint`). `stop_after` ends after that many rounds without a summary, as a
    kill after the checkpoint of that round would (for tests and for splitting long runs)."""
    session = open_session(cfg, make_engine=make_engine, reporter=reporter or SilentReporter())
    start, state, history, elapsed = (
        restore_round(run, session, checkpoint=checkpoint) if resume else (0, None, [], 0.0)
    )
    if state is None:
        state = session.initial_state()
    recorder = Recorder(run, session, history=history, elapsed=elapsed, next_round=start)
    end = cfg.rounds if stop_after is None else max(start, min(stop_after, cfg.rounds))
    try:
        state = session.run(state, start=start, stop=end, on_round=recorder)
    except DivergenceError as err:
        raise diverged(run, err, unit="round", number=recorder.next_round + 1) from None
    except FederationError as err:
        summary = {"status": "too few clients", "error": str(err), "round": recorder.next_round + 1}
        run.write_summary(summary)
        raise
    if end < cfg.rounds:
        return run
    final = recorder.final
    if final is None:
        final = session.evaluate(state, round=cfg.rounds - 1)
    finish_run(
        run, session, global_state=state, history=history, final=final, wall=recorder.elapsed()
    )
    return run


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
        "rng": {"seed": session.cfg.seed, "next_round": round, **ckpt.computed_by()},
    }
    ckpt.save_checkpoint(run.checkpoints_dir / f"round-{round:05d}", state)
    ckpt.prune_checkpoints(run.checkpoints_dir, keep=2)


def restore_round(
    run: RunDir, session: Session, *, checkpoint: str | None = None
) -> tuple[int, State | None, list, float]:
    """Continue from the newest good checkpoint (or the one named `checkpoint`): metrics.jsonl
    is cut back to its history (emptied when there is none yet: the run starts over)."""
    ckpt.clear_staging(run.checkpoints_dir)
    if checkpoint is None and ckpt.latest_checkpoint(run.checkpoints_dir) is None:
        run.rewind([])
        return 0, None, [], 0.0
    restored = load_round(run, session, checkpoint=checkpoint, resuming=True)
    run.rewind(restored[2])
    return restored


def load_round(
    run: RunDir, session: Session, *, checkpoint: str | None = None, resuming: bool = False
) -> tuple[int, State, list, float]:
    """The round count, global state, history and elapsed seconds of the newest checkpoint
    that passes its checks (a newer one that fails is skipped with a warning), or of the one
    named `checkpoint`. Personal states go back to the engine. No checkpoint is a ConfigError.
    `resuming`: training goes on from it (a warning if other processes or threads wrote it)."""
    found = ckpt.load_resumable(run.checkpoints_dir, name=checkpoint, device=session.accel.device)
    if found is None:
        raise ConfigError(
            f"run `{run.path}` has no checkpoint yet: train it first (`trustvision fed run`)"
        )
    path, state = found
    if resuming:
        ckpt.warn_if_computed_otherwise(path, state.get("rng", {}))
    try:
        session.engine.restore(state["personal"])
        return state["round"], state["global"], state["history"], state["elapsed"]
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ckpt.CheckpointError(
            f"`{path}` does not fit this run ({err!r}): resume with the config it was written with"
        ) from None


def select_round(history: list[dict], metric: str) -> dict[str, Any] | None:
    """The evaluated round with the highest `metric` (a validation accuracy; the latest round
    wins a tie) and every number logged for it; None when no round has it. Reads nothing but
    `metric` to choose, so a test number can never pick the round. A round where a client
    failed to evaluate measured fewer validation images than the others (a client holding
    most of a rare class's could be missing), so it is chosen only if every round was so."""
    rows = [r for r in history if isinstance(r.get(metric), float) and not math.isnan(r[metric])]
    if not rows:
        return None
    rows = [r for r in rows if not r.get("eval_failures")] or rows
    chosen = max(reversed(rows), key=lambda r: r[metric])
    numbers = {k: v for k, v in chosen.items() if k not in TIMING_KEYS and k != "clients"}
    return {"selected_by": "validation", "metric": metric, **numbers}


def frozen_hashes(session: Session, global_state: State) -> dict[str, str]:
    """SHA-256 of each group of frozen tensors the server made (FedLoGe's `ssec_sha256`), so
    runs on different engines or machines can show they used the same ones."""
    return {
        f"{prefix.replace('.', '_')}_sha256": state_hash(select(global_state, (prefix,)))
        for prefix in session.algorithm.frozen
    }


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
        **frozen_hashes(session, global_state),
    }
    ckpt.save_weights(
        run.path / "global.safetensors", global_state, {"algorithm": cfg.algorithm.name}
    )
    plot_federated_run(run, classes=session.federation.classes, summary=summary)
    run.write_summary(summary)
