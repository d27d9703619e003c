"""`trustvision fed run` / `fed eval`: from a typed config to a finished run directory.

The runner sits above the engines: it picks the config's engine, lets it host the recorded
round loop (rundir.py's `train_federated`, over session.py's rounds), resumes killed runs
and re-evaluates finished ones. Nothing below imports it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trustvision.config import load_config
from trustvision.data.augment import BatchAugment
from trustvision.errors import ConfigError
from trustvision.federated.algorithm import algorithm_class
from trustvision.federated.config import FedConfig
from trustvision.federated.engines import engine_class
from trustvision.federated.engines.inprocess import InProcessEngine
from trustvision.federated.evaluate import flat_metrics
from trustvision.federated.rundir import load_round, train_federated
from trustvision.federated.session import EngineFactory, Session, open_session
from trustvision.files import write_atomic
from trustvision.runs import RunDir
from trustvision.train.loop import Reporter
from trustvision.train.recipe import one_process_only, run_settings

__all__ = [
    "build_session",
    "evaluate_run",
    "resume_federated",
    "run_federated",
]


def build_session(
    cfg: FedConfig,
    *,
    make_engine: EngineFactory = InProcessEngine,
    reporter: Reporter | None = None,
) -> Session:
    """A session of `cfg` on the in-process engine, or on the engines `make_engine` builds."""
    return open_session(cfg, make_engine=make_engine, reporter=reporter)


def run_federated(
    cfg: FedConfig,
    *,
    resume_dir: str | Path | None = None,
    checkpoint: str | None = None,
    stop_after: int | None = None,
    reporter: Reporter | None = None,
) -> RunDir:
    """Train `cfg.algorithm` for `cfg.rounds` rounds on `cfg.engine`; with `resume_dir`, continue
    from its newest good checkpoint (or the one named `checkpoint`).

    `stop_after` ends the process after that many rounds without a summary, as a kill
    after the checkpoint of that round would (for tests and for splitting long runs).
    """
    with run_settings(cfg):
        BatchAugment(cfg.data.augment).check_fits_data(cfg.data)  # before a run directory
        run, existed = RunDir.open_or_create(
            resume_dir,
            root=cfg.runs_dir,
            name=f"{cfg.name}-{cfg.algorithm.name}",
            config=cfg,
            resume_hint="trustvision fed run --resume",
        )

        def train(make_engine: EngineFactory) -> RunDir:
            return train_federated(
                cfg,
                run,
                make_engine,
                resume=existed,
                checkpoint=checkpoint,
                stop_after=stop_after,
                reporter=reporter,
            )

        result: RunDir = engine_class(cfg.engine).host(cfg, run.path, train)
    return result


def resume_federated(
    run_dir: str | Path,
    *,
    checkpoint: str | None = None,
    stop_after: int | None = None,
    reporter: Reporter | None = None,
) -> RunDir:
    """Continue a killed run with the config it was started with."""
    run = RunDir.open(run_dir)
    cfg = load_config(FedConfig, run.config_path)
    return run_federated(
        cfg, resume_dir=run.path, checkpoint=checkpoint, stop_after=stop_after, reporter=reporter
    )


def evaluate_run(run_dir: str | Path) -> dict[str, Any]:
    """Re-evaluate a run's newest checkpoint; writes and returns `eval.json`."""
    one_process_only()  # every process would evaluate and write the same file
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
    write_atomic((run.path / "eval.json"), json.dumps(out, indent=2) + "\n")
    return out
