"""Named tensors, the currency of every federated message, and the pure aggregation math.

A state is a flat `dict[str, Tensor]` keyed like a `state_dict` (`model.stages.0.0.weight`).
Keys are grouped by dotted prefixes (`model.head` covers `model.head.weight` and
`model.head.bias`). No function here mutates its arguments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

State = dict[str, Tensor]


def matches(key: str, prefixes: Iterable[str]) -> bool:
    """Whether `key` is one of `prefixes` or lies under one (`a.b` is under `a`)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def select(state: State, prefixes: Iterable[str]) -> State:
    """The entries of `state` under any of `prefixes` (a new dict, same tensors)."""
    prefixes = tuple(prefixes)
    return {k: v for k, v in state.items() if matches(k, prefixes)}


def drop(state: State, prefixes: Iterable[str]) -> State:
    """The entries of `state` under none of `prefixes` (a new dict, same tensors)."""
    prefixes = tuple(prefixes)
    return {k: v for k, v in state.items() if not matches(k, prefixes)}


def clone(state: State, *, device: torch.device | str | None = None) -> State:
    """A deep copy of `state`, detached, optionally on another device."""
    return {
        k: v.detach().to(device if device is not None else v.device).clone()
        for k, v in state.items()
    }


def merge_into(base: State, update: State) -> State:
    """A new state: `base` with the entries of `update` replaced (no new keys allowed)."""
    unknown = set(update) - set(base)
    if unknown:
        raise ValueError(f"update has keys the base lacks: {sorted(unknown)[:5]}")
    return {**base, **update}


def weighted_average(states: Sequence[State], weights: Sequence[float]) -> State:
    """Sum_i w_i x_i / sum_i w_i for every key, computed in float64.

    Floating tensors keep their dtype; integer tensors (BatchNorm's `num_batches_tracked`)
    are rounded to the nearest integer. Every state must have the same keys and shapes.
    """
    if not states or len(states) != len(weights):
        raise ValueError(
            f"{len(states)} states for {len(weights)} weights: need one each, and one or more"
        )
    w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    keys = set(states[0])
    for state in states[1:]:
        if set(state) != keys:
            raise ValueError(f"states disagree on keys: {sorted(keys ^ set(state))[:5]}")
    w = w / w.sum()
    return {key: _average_one([s[key] for s in states], w) for key in states[0]}


def _average_one(tensors: list[Tensor], w: Tensor) -> Tensor:
    stacked = torch.stack([t.detach().to(torch.float64) for t in tensors])
    mean = torch.tensordot(w.to(stacked.device), stacked, dims=1)
    like = tensors[0]
    if like.dtype.is_floating_point or like.dtype.is_complex:
        return mean.to(like.dtype)
    return mean.round().to(like.dtype)


def state_hash(state: State) -> str:
    """SHA-256 over the sorted keys, dtypes, shapes and bytes: equal states, equal hashes."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def states_equal(a: State, b: State) -> bool:
    """Same keys and bit-identical tensors."""
    return set(a) == set(b) and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)
