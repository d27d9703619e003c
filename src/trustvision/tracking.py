"""Experiment tracking: every run directory mirrored as an MLflow run.

A run directory (runs.py) stays the record; MLflow gets a copy for the dashboards users
already have: the resolved config as params, each metrics.jsonl record as metrics at its
epoch or round, the summary's numbers as metrics, and config.yaml, summary.json and plots/
as artifacts. The store is a SQLite file in `runs_dir` unless the config's `tracking.uri` or
`$MLFLOW_TRACKING_URI` names another; `tracking.enabled=false` (or TRUSTVISION_TRACKING=off)
turns it off. A resumed run continues its MLflow run (its id is kept in `mlflow.json`); a
sweep's trials nest under the sweep's run (TRUSTVISION_MLFLOW_PARENT, set by the sweep).

Tracking never stops or slows training: MLflow (seconds to import, seconds to create a
store) runs on a worker thread fed by a queue, and the first failure (a server down, a
locked file) is one warning, after which the run's tracking is dropped. MLflow's client API
is used, not its fluent one, so that nothing depends on a process-wide active run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import sqlite3
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from trustvision.config import TrackingConfig, flatten
from trustvision.files import read_json_object, write_atomic

OFF_ENV = "TRUSTVISION_TRACKING"  # "off": no command tracks (tests, quick checks)
PARENT_ENV = "TRUSTVISION_MLFLOW_PARENT"  # an MLflow run id: new runs nest under it
# The parent's experiment: MLflow's run table nests a run under its parent only when both are
# in the experiment shown, so a sweep's trials go to the sweep's (unless their config names one).
EXPERIMENT_ENV = "TRUSTVISION_MLFLOW_EXPERIMENT"
RUN_FILE = "mlflow.json"  # in the run directory: where its MLflow run is
MAX_PARAM = 6000  # MLflow's limit on a param value's length
BATCH = 100  # params or metrics per MLflow call
CLOSE_SECONDS = 60.0  # how long the end of a run waits for its tracking to be written

Call = Callable[[Any, str], None]  # (MlflowClient, run id) -> None
# MLflow retries a request to a server 7 times over minutes by default; a run's tracking gives
# up after one retry and 10 s a request (unless these are set), then drops with one warning.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


class TrackingWarning(UserWarning):
    """Tracking failed for a run; the run itself goes on."""


SQLITE = "sqlite:///"


def sqlite_uri(path: Path) -> str:
    """The address of a SQLite store at `path`: absolute (a resume or a sweep's trial may run
    from another folder), and with `%`, `?` and `#` escaped (SQLAlchemy reads them as escapes
    and a query)."""
    return SQLITE + urllib.parse.quote(str(path.resolve()), safe="/")


def sqlite_path(uri: str) -> Path | None:
    """The file of a `sqlite:///` address (None for any other store)."""
    if not uri.startswith(SQLITE):
        return None
    return Path(urllib.parse.unquote(uri.removeprefix(SQLITE).partition("?")[0]))


def absolute(uri: str) -> str:
    """`uri`, with a relative SQLite path (`sqlite:///runs/mlflow.db`) made absolute."""
    path = sqlite_path(uri)
    if path is None or path.is_absolute():
        return uri
    query = uri.partition("?")[2]
    return sqlite_uri(path) + (f"?{query}" if query else "")


def shown(uri: str) -> str:
    """`uri` without a user name or password, as messages and files show it."""
    parts = urllib.parse.urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite store (MLflow's default,
    ./mlruns, would land in whatever folder the command ran from); a server decides itself."""
    path = sqlite_path(uri)
    return None if path is None else (path.parent / "mlflow-artifacts").as_uri()


def check_sqlite(uri: str) -> None:
    """An OSError at once for a SQLite store that cannot be written (MLflow would retry for a
    minute and more before it gives up)."""
    path = sqlite_path(uri)
    if path is None:
        return
    if path.is_dir():
        raise OSError(f"`{path}` is a folder, not a SQLite file")
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
            db.execute("BEGIN IMMEDIATE")
            db.rollback()
    except sqlite3.Error as err:
        raise OSError(f"cannot write the SQLite store `{path}`: {err}") from err


def store_uri(settings: TrackingConfig, runs_dir: str | Path) -> str:
    """The tracking URI: the config's, else $MLFLOW_TRACKING_URI, else sqlite in `runs_dir`
    (SQLite paths absolute)."""
    if settings.uri:
        return absolute(settings.uri)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return absolute(os.environ["MLFLOW_TRACKING_URI"])
    return sqlite_uri(Path(runs_dir) / "mlflow.db")


def numbers(record: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a (nested) record, by dotted key: what MLflow can plot."""
    return {
        key: float(value)
        for key, value in flatten(record).items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


class Tracker:
    """One run directory's MLflow run, written by a worker thread in call order."""

    def __init__(self, *, uri: str, experiment: str, run_dir: Path, name: str) -> None:
        self.uri, self.experiment, self.run_dir, self.name = uri, experiment, run_dir, name
        self.calls: queue.Queue[Call | None] = queue.Queue()
        self.failed = False
        self.resumed = False  # a resumed run keeps the params it was begun with
        self.run_id: str | None = None
        self.ready = threading.Event()  # set once the MLflow run is open (or has failed)
        self.worker = threading.Thread(target=self._work, name="mlflow-tracking", daemon=True)
        self.worker.start()

    def _work(self) -> None:
        if self.uri.startswith(("http://", "https://")):  # a server that is down: give up soon
            for key, value in HTTP_DEFAULTS.items():
                os.environ.setdefault(key, value)
        try:
            from mlflow.tracking import MlflowClient

            check_sqlite(self.uri)
            client = MlflowClient(tracking_uri=self.uri)
            run_id = self.run_id = self._open(client)
        except Exception as err:  # any failure of the store: say it once, then drop the run
            self._fail(err)
            client, run_id = None, ""
        self.ready.set()
        while (call := self.calls.get()) is not None:
            if client is not None and not self.failed:
                try:
                    call(client, run_id)
                except Exception as err:
                    self._fail(err)

    def _fail(self, err: Exception) -> None:
        self.failed = True
        warnings.warn(
            f"MLflow tracking of `{self.run_dir}` at {shown(self.uri)} stopped ({err!r}); the run goes "
            f"on and its directory keeps every number (set tracking.enabled=false or "
            f"{OFF_ENV}=off to silence this)",
            TrackingWarning,
            stacklevel=1,
        )

    def _open(self, client: Any) -> str:
        """The run's MLflow run: the one `mlflow.json` names (a resume), else a new one."""
        saved = saved_run(self.run_dir)
        if saved is not None and saved.get("uri") == shown(self.uri):
            client.update_run(saved["run_id"], status="RUNNING")
            self.resumed = True
            return str(saved["run_id"])
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            try:
                experiment_id = client.create_experiment(
                    self.experiment, artifact_location=artifact_location(self.uri)
                )
            except Exception:  # another process created it first, or the store failed
                created = client.get_experiment_by_name(self.experiment)
                if created is None:
                    raise
                experiment_id = created.experiment_id
        else:
            experiment_id = experiment.experiment_id
        tags = {"trustvision.run_dir": str(self.run_dir.resolve())}
        if os.environ.get(PARENT_ENV):
            tags["mlflow.parentRunId"] = os.environ[PARENT_ENV]
        run = client.create_run(experiment_id, run_name=self.name, tags=tags)
        record = {"uri": shown(self.uri), "run_id": run.info.run_id}
        write_atomic(self.run_dir / RUN_FILE, json.dumps(record) + "\n")
        return str(run.info.run_id)

    def params(self, config: BaseModel) -> None:
        """The resolved config, every key, as params."""
        flat = flatten(config.model_dump(mode="json"))
        items = [(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in flat.items()]

        def call(client: Any, run_id: str) -> None:
            from mlflow.entities import Param

            if self.resumed:
                return
            params = [Param(k, v[:MAX_PARAM]) for k, v in items]
            for start in range(0, len(params), BATCH):
                client.log_batch(run_id, params=params[start : start + BATCH])

        self.calls.put(call)

    def metrics(self, record: dict[str, Any], *, step: int = 0, prefix: str = "") -> None:
        """A record's numbers as metrics at `step` (an epoch or a round)."""
        values = {f"{prefix}{k}": v for k, v in numbers(record).items()}
        stamp = int(time.time() * 1000)

        def call(client: Any, run_id: str) -> None:
            from mlflow.entities import Metric

            metrics = [Metric(k, v, stamp, step) for k, v in values.items()]
            for start in range(0, len(metrics), BATCH):
                client.log_batch(run_id, metrics=metrics[start : start + BATCH])

        if values:
            self.calls.put(call)

    def finish(self, summary: dict[str, Any]) -> None:
        """The summary's numbers, the run's files as artifacts, and the run's end status;
        waits (at most CLOSE_SECONDS) for everything to be written."""
        self.metrics(summary, prefix="summary.")
        status = "FINISHED" if summary.get("status") == "finished" else "FAILED"
        run_dir = self.run_dir

        def call(client: Any, run_id: str) -> None:
            for name in ("config.yaml", "summary.json"):
                if (run_dir / name).is_file():
                    client.log_artifact(run_id, str(run_dir / name))
            plots = run_dir / "plots"
            if plots.is_dir() and any(plots.iterdir()):
                client.log_artifacts(run_id, str(plots), "plots")
            client.set_terminated(run_id, status=status)

        if self.worker.is_alive():
            self.calls.put(call)
        self.close()

    def end_other(self, run_dir: Path, status: str) -> None:
        """End the MLflow run of another run directory in this store, if still running: a
        sweep's trial that was killed before it could (pruned, or stopped by a signal)."""
        saved = saved_run(run_dir)
        if saved is None or "run_id" not in saved:
            return  # it never opened an MLflow run
        run_id = str(saved["run_id"])

        def call(client: Any, _run_id: str) -> None:
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, status=status)

        self.calls.put(call)

    def close(self) -> None:
        """Write what is queued and stop the worker (the MLflow run stays open: a resume
        continues it). Closing twice is harmless."""
        if self.worker.is_alive():
            self.calls.put(None)
            self.worker.join(timeout=CLOSE_SECONDS)
            if self.worker.is_alive() and not self.failed:
                self._fail(TimeoutError(f"not written within {CLOSE_SECONDS:g} s"))


def tracking_off() -> bool:
    """Whether TRUSTVISION_TRACKING turns tracking off for every command."""
    return os.environ.get(OFF_ENV, "").lower() in {"off", "0", "false", "no"}


def sweep_tracker(out: Path, spec: BaseModel) -> Tracker | None:
    """The MLflow run of a sweep (experiment "sweep", its spec as params), in
    $MLFLOW_TRACKING_URI or a SQLite file in the sweep directory; its trials nest under it
    when their environment carries `trial_env`. Blocks until the run is open."""
    if tracking_off():
        return None
    uri = absolute(os.environ.get("MLFLOW_TRACKING_URI") or sqlite_uri(out / "mlflow.db"))
    tracker = Tracker(uri=uri, experiment="sweep", run_dir=out, name=out.name)
    tracker.params(spec)
    tracker.ready.wait(timeout=CLOSE_SECONDS)
    return tracker


def trial_env(tracker: Tracker | None) -> dict[str, str]:
    """What a sweep's trial processes need in their environment to nest under its run."""
    if tracker is None or tracker.run_id is None or tracker.failed:
        return {}
    return {
        PARENT_ENV: tracker.run_id,
        EXPERIMENT_ENV: tracker.experiment,
        "MLFLOW_TRACKING_URI": tracker.uri,
    }


def start_tracking(run_dir: Path, config: BaseModel) -> Tracker | None:
    """A tracker for `run_dir` when its config asks for one (and TRUSTVISION_TRACKING is not
    off); None for configs without tracking settings."""
    settings = getattr(config, "tracking", None)
    if not isinstance(settings, TrackingConfig) or not settings.enabled:
        return None
    if tracking_off():
        return None
    tracker = Tracker(
        uri=saved_uri(Path(run_dir), settings)
        or store_uri(settings, getattr(config, "runs_dir", "runs")),
        experiment=settings.experiment
        or os.environ.get(EXPERIMENT_ENV)
        or str(getattr(config, "experiment", "trustvision")),
        run_dir=Path(run_dir),
        name=Path(run_dir).name,
    )
    tracker.params(config)
    return tracker


def saved_uri(run_dir: Path, settings: TrackingConfig) -> str | None:
    """The store a resumed run was tracked in, when nothing names one now: a relative
    `runs_dir` would otherwise put it in another folder's store when resumed from there."""
    saved = saved_run(run_dir)
    if settings.uri or os.environ.get("MLFLOW_TRACKING_URI") or saved is None:
        return None
    uri = saved.get("uri")
    return uri if isinstance(uri, str) and sqlite_path(uri) is not None else None


def saved_run(run_dir: Path) -> dict[str, Any] | None:
    """What `mlflow.json` in `run_dir` says of its MLflow run (None: no readable record)."""
    return read_json_object(run_dir / RUN_FILE)
