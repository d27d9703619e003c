"""The Flower engine's client side: the `ClientApp` every SuperNode runs.

A SuperNode builds its parts once per run from the config each message carries (session.py's
`build_parts`: the federation is a pure function of the seed, so it needs no config of its
own) and learns which client it is from its node config's `partition-id`. Its client's
personal state (FedLoGe's phi, Ditto's model, ...) lives in `context.state` and never
leaves it; replies carry global tensors only.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from trustvision.config import build_config, parse_yaml
from trustvision.errors import ConfigError, DivergenceError
from trustvision.federated.client import ClientRunner
from trustvision.federated.config import FedConfig
from trustvision.federated.engines.flower_wire import (
    DATA_SOURCE,
    PARTITION_ID,
    eval_record,
    from_record,
    number,
    to_record,
    update_content,
    validation_record,
)
from trustvision.federated.session import Parts, build_parts
from trustvision.federated.tensors import State

log = logging.getLogger("flwr.trustvision")  # under Flower's logger: shown in its logs


@dataclass(frozen=True, eq=False)
class ClientSide:
    """What a SuperNode builds once per run from the server's config."""

    cfg: FedConfig
    parts: Parts
    runner: ClientRunner


@functools.lru_cache(maxsize=2)
def client_side(config_text: str, source: str | None) -> ClientSide:
    """Build (once per config) the device, the federation and the algorithm from the YAML."""
    cfg = build_config(
        FedConfig,
        parse_yaml(config_text, origin="the server's config"),
        origin="the server's config",
    )
    parts = build_parts(cfg, source=source)
    runner = ClientRunner.for_config(cfg, parts.algorithm, parts.federation, parts.accel)
    return ClientSide(cfg, parts, runner)


@dataclass(frozen=True)
class ClientTask:
    """A fit or evaluate message, unpacked on its SuperNode."""

    side: ClientSide
    client_id: int
    round: int
    lr: float
    global_state: State
    personal: State | None  # None before this client first trains

    @classmethod
    def read(cls, message: Message, context: Context) -> ClientTask:
        """The task of `message` for this SuperNode's client (its personal state from context)."""
        spec = message.content.config_records["task"]
        source = context.node_config.get(DATA_SOURCE)
        side = client_side(str(spec["config"]), str(source) if source else None)
        k = client_id(context, side.cfg.num_clients)
        device = side.parts.accel.device
        global_state = from_record(message.content.array_records["global"], device=device)
        personal = None
        if "personal" in context.state:
            personal = from_record(context.state.array_records["personal"], device=device)
        round = int(number(spec, "round"))
        return cls(side, k, round, number(spec, "lr"), global_state, personal)


def client_id(context: Context, num_clients: int) -> int:
    """This SuperNode's client id, from its node config."""
    if PARTITION_ID not in context.node_config:
        raise ConfigError(
            f"this SuperNode has no `{PARTITION_ID}`: start it with "
            f"`--node-config {PARTITION_ID}=K` (K in 0..{num_clients - 1})"
        )
    k = int(context.node_config[PARTITION_ID])
    if not 0 <= k < num_clients:
        raise ConfigError(f"`{PARTITION_ID}={k}` is outside 0..{num_clients - 1}")
    return k


def failed(message: Message, err: Exception) -> Message:
    """The reply of a client that raised: the server counts it as this client's failure."""
    log.exception("client failed")
    reason = f"{type(err).__name__}: {err}"
    return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)


client_app = ClientApp()


@client_app.query()
def identify(message: Message, context: Context) -> Message:
    """Say which client this SuperNode is."""
    k = int(context.node_config.get(PARTITION_ID, -1))
    return Message(RecordDict({"client": ConfigRecord({"client": k})}), reply_to=message)


@client_app.train()
def train(message: Message, context: Context) -> Message:
    """One round of local training; the personal state is written back to `context.state`."""
    try:
        t = ClientTask.read(message, context)
        update, personal = t.side.runner.fit(
            t.client_id, global_state=t.global_state, personal=t.personal, round=t.round, lr=t.lr
        )
    except DivergenceError as err:  # the server stops the run, as the in-process engine does
        diverged = ConfigRecord({"error": str(err)})
        return Message(RecordDict({"diverged": diverged}), reply_to=message)
    except Exception as err:  # the server goes on without this client
        return failed(message, err)
    if personal:
        context.state["personal"] = to_record(personal)
    return Message(update_content(update), reply_to=message)


@client_app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Validation counts, and personalised predictions on this client's local test set."""
    try:
        t = ClientTask.read(message, context)
        local_test = bool(message.content.config_records["task"]["local_test"])
        result, validation = t.side.runner.evaluate(
            t.client_id,
            global_state=t.global_state,
            personal=t.personal,
            round=t.round,
            lr=t.lr,
            local_test=local_test,
        )
    except DivergenceError as err:  # fine-tuning before prediction diverged: stop, as in-process
        diverged = ConfigRecord({"error": str(err)})
        return Message(RecordDict({"diverged": diverged}), reply_to=message)
    except Exception as err:  # the server leaves this client out of local accuracy
        return failed(message, err)
    content = RecordDict({"validation": validation_record(validation)})
    if result is not None:
        content["eval"] = eval_record(result)
    return Message(content, reply_to=message)
