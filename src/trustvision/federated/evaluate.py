"""Generic and local accuracy, by frequency group, with and without masking of unseen classes.

- Generic: each global predictor (the algorithm's `generic`, plus modes such as FedLoGe's
  `universal`) on the balanced test set.
- Local: each client's personalised logits on its local test set; accuracy is the
  unweighted mean over clients that have a local test set. Every method is treated alike:
  `masked` sets the logits of classes a client has no training image of to -inf,
  `unmasked` does not; both are reported. Head/middle/tail and many/medium/few for local
  accuracy pool all clients' local predictions and group classes by the global training
  counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch

from trustvision.federated.algorithm import FederatedAlgorithm
from trustvision.federated.client import ClientEval, Workspace
from trustvision.federated.data import Federation
from trustvision.federated.tensors import State
from trustvision.train.loop import Accel, predict
from trustvision.train.metrics import accuracy, summarize

GROUPS = ("head", "middle", "tail", "many", "medium", "few")


def generic_evaluation(
    algorithm: FederatedAlgorithm,
    workspace: Workspace,
    *,
    global_state: State,
    federation: Federation,
    accel: Accel,
) -> tuple[dict[str, dict[str, Any]], torch.Tensor | None]:
    """Every global predictor's summary on the balanced test set, and the `generic` logits."""
    workspace.load(global_state)
    workspace.net.eval()
    predictors = {"generic": algorithm.generic_logits} if algorithm.has_generic else {}
    predictors.update(algorithm.extra_modes())
    results, generic_logits = {}, None
    for name, logits_fn in predictors.items():
        logits, labels, loss = predict(
            partial(logits_fn, workspace.net),
            federation.test_loader().epoch(0),
            accel=accel,
        )
        summary = summarize(
            logits.argmax(1).numpy(),
            labels.numpy(),
            federation.num_classes,
            train_counts=federation.train_counts,
        )
        results[name] = {**summary, "loss": float(loss)}
        if name == "generic":
            generic_logits = logits
    return results, generic_logits


def local_evaluation(
    evals: Sequence[ClientEval], *, num_classes: int, train_counts: np.ndarray, masked: bool
) -> dict[str, Any]:
    """Mean of per-client accuracies, and pooled per-class and group accuracies."""
    per_client, all_preds, all_labels = {}, [], []
    for e in evals:
        logits = e.logits.masked_fill(~e.seen, -math.inf) if masked else e.logits
        preds = logits.argmax(1)
        per_client[e.client_id] = accuracy(preds, e.labels)
        all_preds.append(preds)
        all_labels.append(e.labels)
    if not evals:
        return {"top1": math.nan, "clients": {}}
    pooled = summarize(
        torch.cat(all_preds), torch.cat(all_labels), num_classes, train_counts=train_counts
    )
    return {
        **pooled,
        "top1": float(np.mean(list(per_client.values()))),
        "pooled_top1": pooled["top1"],
        "clients": per_client,
    }


def evaluation(
    generic: dict[str, dict[str, Any]], evals: Sequence[ClientEval], *, federation: Federation
) -> dict[str, Any]:
    """The full evaluation: generic predictors, and local accuracy masked and unmasked."""
    local = {
        name: local_evaluation(
            evals,
            num_classes=federation.num_classes,
            train_counts=federation.train_counts,
            masked=masked,
        )
        for name, masked in (("masked", True), ("unmasked", False))
    }
    return {"generic": generic, "local": local}


def flat_metrics(result: dict[str, Any], *, mask_unseen: bool) -> dict[str, float]:
    """The scalars of an evaluation for metrics.jsonl: `generic_acc`, `local_acc`, groups, modes."""
    record: dict[str, float] = {}
    for name, summary in result["generic"].items():
        record[f"{name}_acc"] = summary["top1"]
        record.update({f"{name}_{g}": summary[g] for g in GROUPS if g in summary})
    local = result["local"]
    headline = local["masked" if mask_unseen else "unmasked"]
    record["local_acc"] = headline["top1"]
    record["local_acc_masked"] = local["masked"]["top1"]
    record["local_acc_unmasked"] = local["unmasked"]["top1"]
    record.update({f"local_{g}": headline[g] for g in GROUPS if g in headline})
    return record
