"""The Flower engine's wire format: named tensors, tasks and replies as Flower records.

Tensors travel as `ArrayRecord`s (NumPy, saved without pickle), so float32 and int64
arrive bit for bit. A task carries the run's resolved config (YAML), the round, its
learning rate and the global state; a reply carries a client's update and numbers, or its
validation counts and local-test predictions.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from trustvision.errors import FederationError
from trustvision.federated.messages import ClientEval, ClientUpdate, ClientValidation
from trustvision.federated.tensors import State, clone

PARTITION_ID = "partition-id"  # node config: which client this SuperNode is
DATA_SOURCE = "data-source"  # node config (optional): where this SuperNode's data set lies


def to_record(state: State) -> ArrayRecord:
    """Named tensors as an ArrayRecord (NumPy arrays, saved with `allow_pickle=False`)."""
    return ArrayRecord(torch_state_dict=dict(state))


def from_record(record: ArrayRecord, *, device: torch.device | str = "cpu") -> State:
    """Named tensors back from an ArrayRecord, on `device`."""
    return clone(dict(record.to_torch_state_dict()), device=device)


def task(
    config_text: str, global_state: State, *, round: int, lr: float, local_test: bool = True
) -> RecordDict:
    """A fit or evaluate message's content: the run's config, the round and the global state
    (and, to evaluate, whether the client predicts its local test set itself)."""
    spec = ConfigRecord({"config": config_text, "round": round, "lr": lr, "local_test": local_test})
    return RecordDict({"global": to_record(global_state), "task": spec})


def validation_record(validation: ClientValidation) -> ArrayRecord:
    """A client's validation counts as named int64 arrays: `total` and `correct.NAME`."""
    arrays = {"total": validation.total} | {
        f"correct.{name}": counts for name, counts in validation.correct.items()
    }
    return to_record({k: torch.from_numpy(v) for k, v in arrays.items()})


def validation_from(client_id: int, record: ArrayRecord) -> ClientValidation:
    """The counts of `validation_record` back, as numpy arrays."""
    arrays = {k: v.numpy() for k, v in from_record(record).items()}
    correct = {k.removeprefix("correct."): v for k, v in arrays.items() if k != "total"}
    return ClientValidation(client_id, arrays["total"], correct)


def reply_problem(reply: Message | None, timeout: float | None) -> str:
    """Why a client brought nothing: no reply in time, or the error its ClientApp sent."""
    if reply is None:
        return f"no reply within `flower.timeout` ({timeout} s)"
    # Flower's own reasons may hold a whole traceback: keep its last line
    lines = [line for line in (reply.error.reason or "").splitlines() if line.strip()]
    return lines[-1][-300:] if lines else f"Flower error {reply.error.code}"


def update_content(update: ClientUpdate) -> RecordDict:
    """A fit reply's content: the update's tensors, its numbers and its weight."""
    metrics = MetricRecord({**update.metrics, "weight": update.weight})
    return RecordDict({"update": to_record(update.update), "metrics": metrics})


def update_from(client_id: int, content: RecordDict, *, device: torch.device) -> ClientUpdate:
    """A fit reply as the in-process engine's ClientUpdate."""
    record = content.metric_records["metrics"]
    metrics = {k: number(record, k) for k in record if k != "weight"}
    update = from_record(content.array_records["update"], device=device)
    return ClientUpdate(client_id, update, number(record, "weight"), metrics)


def number(record: ConfigRecord | MetricRecord, key: str) -> float:
    """A scalar field of a received record; anything else is a protocol error."""
    value = record[key]
    if not isinstance(value, int | float):
        raise FederationError(f"message field `{key}` holds {value!r}, not a number")
    return value  # an int stays an int (`train_images`), as the in-process engine has it


def eval_record(result: ClientEval) -> ArrayRecord:
    """A client's local-test predictions: its logits, labels and seen classes."""
    return to_record({"logits": result.logits, "labels": result.labels, "seen": result.seen})


def eval_from(client_id: int, record: ArrayRecord) -> ClientEval:
    """The predictions of `eval_record` back."""
    arrays = from_record(record)
    return ClientEval(client_id, arrays["logits"], arrays["labels"], arrays["seen"])
