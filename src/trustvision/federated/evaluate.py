"""Generic and local accuracy, by frequency group, with and without masking of unseen classes,
on the test sets and on the clients' validation images.

- Generic: each global predictor (the algorithm's `generic`, plus modes such as FedLoGe's
  `universal`) on the balanced test set: the backbone's features are computed once and
  every head applied to them (and, where the algorithm allows it, each client's own head).
- Local: each client's personalised logits on its local test set; accuracy is the
  unweighted mean over clients that have a local test set. Every method is treated alike:
  `masked` sets the logits of classes a client has no training image of to -inf,
  `unmasked` does not; both are reported. Head/middle/tail and many/medium/few for local
  accuracy pool all clients' local predictions and group classes by the global training
  counts.
- Which clients an evaluation asks (`clients_to_evaluate`), and the local-test logits read
  off the global model's for an algorithm that does not personalise (`evals_from_generic`).
- Validation (what choices read): every client counts, per class, the right predictions of
  each global predictor and of its own model on its validation images; the server sums
  counts only. Generic validation accuracy is class-balanced (the mean over classes of
  summed correct / summed total, as the balanced test set is); local validation accuracy is
  the unweighted mean over clients of their own accuracy, as local test accuracy is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trustvision.federated.algorithm import FederatedAlgorithm
from trustvision.federated.client import Workspace
from trustvision.federated.data import Federation
from trustvision.federated.messages import ClientEval, ClientValidation
from trustvision.federated.tensors import State
from trustvision.train.loop import Accel
from trustvision.train.metrics import accuracy, summarize

GROUPS = ("head", "middle", "tail", "many", "medium", "few")


@dataclass(frozen=True)
class GenericEvaluation:
    """The global predictors on the balanced test set: summaries, and what clients may reuse."""

    results: dict[str, dict[str, Any]]  # predictor -> summary (top1, per class, groups, loss)
    logits: torch.Tensor | None  # (N, C) the `generic` predictor's, on the CPU
    features: torch.Tensor  # (N, d) the global backbone's, on the device


def generic_evaluation(
    algorithm: FederatedAlgorithm,
    workspace: Workspace,
    *,
    global_state: State,
    federation: Federation,
    accel: Accel,
) -> GenericEvaluation:
    """Every global predictor on the balanced test set, from one pass of the backbone."""
    workspace.load(global_state)
    net = workspace.net.eval()
    parts, all_labels = [], []
    with torch.no_grad(), accel.autocast():
        for x, y in federation.test_loader().epoch(0):
            x = accel.prepare_batch(x)
            parts.append(algorithm.features(net, x))
            all_labels.append(y.cpu())
        features = torch.cat(parts)
        outputs = {k: v.float().cpu() for k, v in algorithm.generic_heads(net, features).items()}
    labels = torch.cat(all_labels)
    results = {}
    for name, logits in outputs.items():
        summary = summarize(
            logits.argmax(1).numpy(),
            labels.numpy(),
            federation.num_classes,
            train_counts=federation.train_counts,
        )
        results[name] = {**summary, "loss": float(F.cross_entropy(logits, labels))}
    return GenericEvaluation(results, outputs.get("generic"), features)


def balanced_accuracy(correct: np.ndarray, total: np.ndarray) -> float:
    """Mean over classes with at least one image of correct / total (NaN if there are none)."""
    present = total > 0
    return float(np.mean(correct[present] / total[present])) if present.any() else math.nan


def validation_evaluation(validations: Sequence[ClientValidation]) -> dict[str, Any]:
    """Generic (class-balanced, from summed counts) and local (mean over clients) validation
    accuracy of every predictor the clients counted."""
    with_images = [v for v in validations if v.total.sum() > 0]
    if not with_images:
        return {}
    total = np.sum([v.total for v in with_images], axis=0)
    names = sorted({name for v in with_images for name in v.correct})
    result: dict[str, Any] = {"images": int(total.sum()), "clients": len(with_images)}
    for name in names:
        if name.startswith("local_"):
            per_client = [v.correct[name].sum() / v.total.sum() for v in with_images]
            result[name] = float(np.mean(per_client))
        else:
            correct = np.sum([v.correct.get(name, np.zeros_like(total)) for v in with_images], 0)
            result[name] = balanced_accuracy(correct, total)
    return result


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
    generic: dict[str, dict[str, Any]],
    evals: Sequence[ClientEval],
    *,
    federation: Federation,
    validations: Sequence[ClientValidation] = (),
) -> dict[str, Any]:
    """The full evaluation: generic predictors, local accuracy masked and unmasked, and the
    validation accuracies."""
    local = {
        name: local_evaluation(
            evals,
            num_classes=federation.num_classes,
            train_counts=federation.train_counts,
            masked=masked,
        )
        for name, masked in (("masked", True), ("unmasked", False))
    }
    return {"generic": generic, "local": local, "validation": validation_evaluation(validations)}


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
    validation = result.get("validation", {})
    for name, value in validation.items():
        if name in ("images", "clients"):
            continue
        if name.startswith("local_"):
            record[f"local_val_acc_{name.removeprefix('local_')}"] = value
        else:
            record[f"{name}_val_acc"] = value
    masking = "masked" if mask_unseen else "unmasked"
    if f"local_{masking}" in validation:
        record["local_val_acc"] = validation[f"local_{masking}"]
    return record


def clients_to_evaluate(federation: Federation, *, local_test: bool) -> list[int]:
    """The clients an evaluation asks: those with validation images, and those with a local
    test set when they predict it themselves."""
    return [
        c.client_id
        for c in federation.clients
        if c.num_val > 0 or (local_test and len(c.test_indices) > 0)
    ]


def evals_from_generic(federation: Federation, *, generic_logits: torch.Tensor) -> list[ClientEval]:
    """Every client with a local test set, for an algorithm that does not personalise: a
    client's model is the global one, so its local logits are read off `generic_logits`."""
    labels = federation.test_labels.cpu()
    evals = []
    for client in federation.clients:
        if len(client.test_indices) == 0:
            continue
        index = torch.as_tensor(client.test_indices)
        seen = torch.from_numpy(client.class_counts > 0)
        evals.append(ClientEval(client.client_id, generic_logits[index], labels[index], seen))
    return evals
