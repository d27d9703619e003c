"""The Flower engine: every client's work is a Flower Message to a SuperNode (Flower 1.41).

The round loop is session.py's, unchanged: inside a `ServerApp`, `FlowerEngine` holds the
Grid and turns `fit` / `evaluate` into Messages (flower_wire.py: tensors as `ArrayRecord`s,
so float32 and int64 arrive bit for bit and the numbers equal the in-process engine's). A
client's reply carries only global tensors; its personal state stays in the ClientApp's
`context.state` (flower_client.py).

Every message carries the run's resolved config (YAML); a client builds its data partition
from it and its `partition-id` (a pure function of the seed), so the SuperNodes need no
config of their own. Global state, frozen tensors included (FedLoGe's SSE-C, made once on
the server), travels in every fit and evaluate message.

- `trustvision fed run CONFIG engine=flower`: Flower's simulation (Ray) on this machine,
  `flower.workers` clients at once, each holding `flower.cpus_per_client` CPUs.
- Deployment: `flwr run` with `server_app` / `client_app` below (docs/deploy-flower.md).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import ClassVar, TypeVar

# Flower reads this once, when it is imported: no usage reports leave this machine.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import telemetry
from torch import Tensor

from trustvision.config import dump_config, load_config
from trustvision.errors import ConfigError, DivergenceError, FederationError
from trustvision.federated.algorithm import FederatedAlgorithm
from trustvision.federated.config import FedConfig
from trustvision.federated.data import Federation
from trustvision.federated.engines.flower_client import client_app
from trustvision.federated.engines.flower_wire import (
    PARTITION_ID,
    eval_from,
    from_record,
    number,
    reply_problem,
    task,
    to_record,
    update_from,
    validation_from,
)
from trustvision.federated.messages import ClientFailure, EvalResult, FitResult
from trustvision.federated.reaper import reaped_descendants
from trustvision.federated.tensors import State
from trustvision.train.loop import Accel, select_device

T = TypeVar("T")
log = logging.getLogger("flwr.trustvision")  # under Flower's logger: shown in its logs


class FlowerEngine:
    """Runs clients on Flower SuperNodes through `grid`; one SuperNode per client id."""

    keeps_personal_states: ClassVar[bool] = False  # they never leave their SuperNodes

    def __init__(
        self,
        algorithm: FederatedAlgorithm,
        federation: Federation,
        *,
        cfg: FedConfig,
        accel: Accel,
        grid: Grid,
        on_client: Callable[[], None] | None = None,
        stopped: threading.Event | None = None,
    ) -> None:
        self.algorithm = algorithm
        self.federation = federation
        self.accel = accel
        self.grid = grid
        self.on_client = on_client
        self.timeout = cfg.flower.timeout
        self.poll = cfg.flower.poll_interval
        self.config_text = dump_config(cfg)
        self.stopped = stopped
        self.nodes = connect(
            grid,
            num_clients=cfg.num_clients,
            timeout=cfg.flower.connect_timeout,
            poll=self.poll,
            stopped=stopped,
        )

    def _ask(
        self,
        kind: str,
        client_ids: list[int],
        global_state: State,
        *,
        round: int,
        lr: float,
        local_test: bool = True,
    ) -> dict[int, Message | None]:
        """Send one message per client and wait; a client without a reply maps to None."""
        content = task(self.config_text, global_state, round=round, lr=lr, local_test=local_test)
        messages = [
            Message(content, self.nodes[k], kind, group_id=str(round + 1)) for k in client_ids
        ]
        replies = exchange(
            self.grid, messages, timeout=self.timeout, poll=self.poll, stopped=self.stopped
        )
        return dict(zip(client_ids, replies, strict=True))

    def fit(
        self, global_state: State, client_ids: list[int], *, round: int, lr: float
    ) -> FitResult:
        """Train the sampled clients on their SuperNodes; replies in the order asked."""
        result = FitResult(updates=[], failures=[])
        replies = self._ask(MessageType.TRAIN, client_ids, global_state, round=round, lr=lr)
        for k, reply in replies.items():
            if reply is None or reply.has_error():
                result.failures.append(ClientFailure(k, reply_problem(reply, self.timeout)))
            elif "diverged" in reply.content:
                raise DivergenceError(str(reply.content.config_records["diverged"]["error"]))
            else:
                result.updates.append(update_from(k, reply.content, device=self.accel.device))
            if self.on_client is not None:
                self.on_client()
        return result

    def evaluate(
        self,
        global_state: State,
        client_ids: list[int],
        *,
        round: int,
        lr: float,
        local_test: bool = True,
        test_features: Tensor | None = None,
    ) -> EvalResult:
        """Each client's validation counts and, with `local_test`, its local-test predictions,
        from its SuperNode. `test_features` stay here: a SuperNode computes its own. A client
        that fails to answer is listed as a failure."""
        result = EvalResult(evals=[], failures=[])
        replies = self._ask(
            MessageType.EVALUATE,
            client_ids,
            global_state,
            round=round,
            lr=lr,
            local_test=local_test,
        )
        for k, reply in replies.items():
            if reply is None or reply.has_error():
                result.failures.append(ClientFailure(k, reply_problem(reply, self.timeout)))
                continue
            if "diverged" in reply.content:
                raise DivergenceError(str(reply.content.config_records["diverged"]["error"]))
            result.validations.append(validation_from(k, reply.content.array_records["validation"]))
            if "eval" in reply.content.array_records:
                result.evals.append(eval_from(k, reply.content.array_records["eval"]))
        return result

    def personal_states(self) -> dict[int, State]:
        """None: personal states never leave their SuperNodes, so checkpoints hold none."""
        return {}

    def restore(self, personal: dict[int, State]) -> None:
        """Refused for a personalised algorithm: its clients' states ended with the last run."""
        if self.algorithm.personal:
            raise ConfigError(
                f"a `flower` run of `{type(self.algorithm).name}` cannot be resumed exactly: "
                "each client's personal state lived on its SuperNode and ended with that run. "
                "Start the run again"
            )

    @classmethod
    def host(
        cls, cfg: FedConfig, run_dir: Path, train: Callable[[Callable[..., FlowerEngine]], T]
    ) -> T:
        """Run `train` inside a ServerApp of Flower's simulation (Ray), one SuperNode per client.

        The ServerApp runs in a thread Python waits for at exit; when the simulation ends early
        (Ctrl-C, a crash), `stopped` makes that thread's waits for replies end too.
        """
        from flwr.simulation import run_simulation

        results: list[T] = []
        app = ServerApp()
        stopped = threading.Event()

        @app.main()
        def main(grid: Grid, context: Context) -> None:
            results.append(train(partial(cls, grid=grid, stopped=stopped)))

        with flower_environment(run_dir / "flower"), reaped_descendants():
            try:
                run_simulation(
                    server_app=app,
                    client_app=client_app,
                    num_supernodes=cfg.num_clients,
                    backend_config=ray_backend(cfg),
                )
            finally:
                stopped.set()
                stop_ray()
        if not results:
            raise FederationError("the Flower simulation ended before the run did: see its log")
        return results[0]


def exchange(
    grid: Grid,
    messages: list[Message],
    *,
    timeout: float | None,
    poll: float,
    stopped: threading.Event | None = None,
) -> list[Message | None]:
    """Push `messages`, then pull replies every `poll` s until all came or `timeout` passed;
    the reply to each message in their order (None: none came). A FederationError once
    `stopped` is set: the simulation ended, and no reply will come.

    Replies are matched by the message they answer: an error the SuperLink writes for a dead
    node carries the SuperLink's node id, not the client's. Grid.send_and_receive does the
    same, but over HTTP it waits 3 s between pulls.
    """
    sent = list(grid.push_messages(messages))  # None where one could not be pushed
    pending = {message_id for message_id in sent if message_id is not None}
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    while pending:
        arrived = list(grid.pull_messages(pending))
        replies.extend(arrived)
        pending -= {reply.metadata.reply_to_message_id for reply in arrived}
        if pending and deadline is not None and time.monotonic() >= deadline:
            break
        if pending:
            wait_or_stop(poll, stopped)
    by_message = {reply.metadata.reply_to_message_id: reply for reply in replies}
    return [by_message.get(message_id) if message_id else None for message_id in sent]


def wait_or_stop(seconds: float, stopped: threading.Event | None) -> None:
    """Sleep `seconds`; a FederationError at once if `stopped` is (or becomes) set."""
    if stopped is None:
        time.sleep(seconds)
    elif stopped.wait(seconds):
        raise FederationError("the Flower simulation stopped while the server waited for clients")


def connect(
    grid: Grid,
    *,
    num_clients: int,
    timeout: float,
    poll: float,
    stopped: threading.Event | None = None,
) -> dict[int, int]:
    """Client id -> node id: wait for `num_clients` SuperNodes, then ask each who it is."""
    deadline = time.monotonic() + timeout
    nodes = list(grid.get_node_ids())
    while len(nodes) < num_clients:
        if time.monotonic() > deadline:
            raise FederationError(
                f"{len(nodes)} of {num_clients} SuperNodes connected within "
                f"`flower.connect_timeout` ({timeout} s): start one per client, each with "
                f"`--node-config {PARTITION_ID}=K` for K in 0..{num_clients - 1}"
            )
        wait_or_stop(poll, stopped)
        nodes = list(grid.get_node_ids())
    queries = [Message(RecordDict(), node, MessageType.QUERY) for node in nodes]
    ids: dict[int, int] = {}
    twice: set[int] = set()
    replies = exchange(grid, queries, timeout=timeout, poll=poll, stopped=stopped)
    for node, reply in zip(nodes, replies, strict=True):
        if reply is not None and not reply.has_error():
            k = int(number(reply.content.config_records["client"], "client"))
            if k in ids:
                twice.add(k)
            ids[k] = node
    if twice:
        raise FederationError(
            f"several SuperNodes answered as client(s) {sorted(twice)}: give each SuperNode "
            f"its own `--node-config {PARTITION_ID}=K`"
        )
    missing = sorted(set(range(num_clients)) - set(ids))
    if missing:
        raise FederationError(
            f"no SuperNode answered as client(s) {missing}: give each SuperNode its own "
            f"`--node-config {PARTITION_ID}=K`"
        )
    return ids


def ray_backend(cfg: FedConfig) -> dict:
    """Ray's settings: `workers` actors of `cpus_per_client` CPUs (and a GPU share on CUDA)."""
    gpus = 1 if select_device(cfg.device).type == "cuda" else 0
    workers, cpus = cfg.flower.workers, cfg.flower.cpus_per_client
    return {
        "client_resources": {"num_cpus": cpus, "num_gpus": gpus / workers},
        "init_args": {
            "num_cpus": math.ceil(workers * cpus),
            "num_gpus": gpus,
            "object_store_memory": 100 * 2**20,  # messages are small: 100 MiB of shared memory
            "include_dashboard": False,
        },
    }


def stop_ray() -> None:
    """Shut Ray down, so the next simulation starts with its own resources."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


@contextlib.contextmanager
def flower_environment(home: Path) -> Iterator[None]:
    """Flower's directory under `home` and telemetry off while the block runs (restored after).

    Flower reads `FLWR_TELEMETRY_ENABLED` once, when it is first imported (perhaps before
    this module was), so its flag in this process is switched off too, for good: Flower
    sends its events from threads that may outlive the block.
    """
    home.mkdir(parents=True, exist_ok=True)
    wanted = {"FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0"}
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    telemetry.FLWR_TELEMETRY_ENABLED = "0"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --- deployment: `flwr run` ----------------------------------------------------------------------

server_app = ServerApp()


@server_app.main()
def deployed(grid: Grid, context: Context) -> None:
    """`flwr run`'s entry: the run config's `config` (a YAML path) and `overrides` (key=value ...)."""
    from trustvision.federated.rundir import train_federated
    from trustvision.runs import RunDir

    path = str(context.run_config.get("config", ""))
    if not path:
        raise ConfigError(
            "the Flower app's run config has no `config`: run it with "
            "`flwr run deploy/flower-app CONNECTION --run-config 'config=\"/abs/run.yaml\"'`"
        )
    overrides = shlex.split(str(context.run_config.get("overrides", "")))
    cfg = load_config(FedConfig, path, overrides)
    if cfg.engine != "flower":
        raise ConfigError(f"`engine` is `{cfg.engine}`: a Flower deployment needs `engine: flower`")
    run = RunDir.create(root=cfg.runs_dir, name=f"{cfg.name}-{cfg.algorithm.name}", config=cfg)
    log.info("trustvision run directory: %s", run.path)
    train_federated(cfg, run, partial(FlowerEngine, grid=grid))


__all__ = ["FlowerEngine", "client_app", "from_record", "server_app", "to_record"]
