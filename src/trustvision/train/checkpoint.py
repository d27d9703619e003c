"""Checkpoints as safetensors (every tensor) plus JSON (everything else): never pickle.

A checkpoint is a folder `checkpoints/<tag>/` holding `state.safetensors` and `state.json`.
It is written under a temporary name and renamed when complete, so a killed process leaves
either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from trustvision import distributed
from trustvision.digests import sha256_file
from trustvision.errors import TrustvisionError, environment_failure

if TYPE_CHECKING:
    from torch import nn

    from trustvision.runs import RunDir

FORMAT = "trustvision-checkpoint/1"
TENSORS = "state.safetensors"
META = "state.json"
LOG = logging.getLogger(__name__)


class CheckpointError(TrustvisionError):
    """A checkpoint is missing, incomplete or does not match its own record."""


def encode_tree(obj: Any, tensors: dict[str, Tensor], path: str = "") -> Any:
    """Replace every tensor in a nested dict/list by a reference and collect it in `tensors`."""
    if isinstance(obj, Tensor):
        tensors[path] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: encode_tree(v, tensors, f"{path}/{k}") for k, v in obj.items()}
        if all(isinstance(k, int) for k in obj):
            items = {str(k): encode_tree(v, tensors, f"{path}/{k}") for k, v in obj.items()}
            return {"__int_keys__": items}
        raise TypeError(f"cannot checkpoint a dict with mixed key types at `{path}`")
    if isinstance(obj, list | tuple):
        return [encode_tree(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot checkpoint a value of type {type(obj).__name__} at `{path}`")


def decode_tree(obj: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of `encode_tree`."""
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__int_keys__"}:
            return {int(k): decode_tree(v, tensors) for k, v in obj["__int_keys__"].items()}
        return {k: decode_tree(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_tree(v, tensors) for v in obj]
    return obj


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    """Write `state` (nested dicts of tensors and JSON values) atomically to `directory`."""
    directory = Path(directory)
    staging = directory.with_name(f".tmp-{directory.name}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        tensors: dict[str, Tensor] = {}
        tree = encode_tree(state, tensors)
        save_file(tensors, staging / TENSORS)
        meta = {"format": FORMAT, "sha256": sha256_file(staging / TENSORS), "tree": tree}
        (staging / META).write_text(json.dumps(meta))
    except BaseException as err:  # no half-written staging folder stays behind
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(err, OSError | SafetensorError):  # a full disk, a quota
            raise write_failure(err, doing=f"saving the checkpoint `{directory}`") from err
        raise
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(staging, directory)
    return directory


def clear_staging(directory: Path) -> None:
    """Remove the staging folders of saves that a killed process left in `directory` (call it
    only while holding the run: no other process can be saving there)."""
    for staging in Path(directory).glob(".tmp-*"):
        shutil.rmtree(staging, ignore_errors=True)


def _read_meta(meta_path: Path) -> dict[str, Any]:
    """`state.json`, checked to be a record of this format (a CheckpointError otherwise)."""
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"`{meta_path}` is truncated or not JSON ({err})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"`{meta_path}` holds a {type(meta).__name__}, not a record")
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"`{meta_path}` has format `{meta.get('format')}`, expected `{FORMAT}`"
        )
    missing = [key for key in ("sha256", "tree") if key not in meta]
    if missing or not isinstance(meta["sha256"], str):
        raise CheckpointError(f"`{meta_path}` lacks {', '.join(missing) or 'a valid sha256'}")
    return meta


def load_checkpoint(directory: Path, *, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, checking the tensors against their hash.

    Anything wrong with it (a missing file, a damaged record, tensors that do not match their
    hash or cannot be read as safetensors, a record naming tensors the file lacks) is a
    CheckpointError naming the file."""
    directory = Path(directory)
    meta_path, tensor_path = directory / META, directory / TENSORS
    if not meta_path.is_file() or not tensor_path.is_file():
        raise CheckpointError(
            f"`{directory}` is not a complete checkpoint (needs {META} and {TENSORS})"
        )
    meta = _read_meta(meta_path)
    actual = sha256_file(tensor_path)
    if actual != meta["sha256"]:
        raise CheckpointError(
            f"`{tensor_path}` is corrupt: SHA-256 {actual}, its record says {meta['sha256']}"
        )
    try:
        return decode_tree(meta["tree"], load_file(tensor_path, device=str(device)))
    except (SafetensorError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"`{directory}` cannot be read as a checkpoint ({err!r})") from None


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoints under `root` with both of their files, oldest first (tags sort by name)."""
    if not Path(root).is_dir():
        return []
    return sorted(
        p
        for p in Path(root).iterdir()
        if (p / META).is_file() and (p / TENSORS).is_file() and not p.name.startswith(".")
    )


def latest_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint under `root` with both of its files, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_resumable(
    root: Path, *, name: str | None = None, device: torch.device | str = "cpu"
) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint a run resumes from, loaded: `name` if given (it must pass its checks),
    else the newest that passes them; a newer one that fails is skipped with a warning that
    names it and why. None when there is no checkpoint yet."""
    found = list_checkpoints(root)
    if name is not None:
        chosen = [p for p in found if p.name == name]
        if not chosen:
            have = ", ".join(f"`{p.name}`" for p in found) or "none"
            raise CheckpointError(f"`{root}` has no checkpoint `{name}` (it has {have})")
        return chosen[0], load_checkpoint(chosen[0], device=device)
    failures = []
    for path in reversed(found):
        try:
            return path, load_checkpoint(path, device=device)
        except CheckpointError as err:
            LOG.warning("skipping checkpoint `%s`: %s; trying the one before", path, err)
            failures.append(str(err))
    if failures:
        raise CheckpointError(
            f"no checkpoint under `{root}` passes its checks (the newest: {failures[0]}): "
            "start the run again"
        )
    return None


def prune_checkpoints(root: Path, *, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old)


def save_weights(
    path: Path, state_dict: dict[str, Tensor], metadata: dict[str, str] | None = None
) -> None:
    """A model's weights alone, as one safetensors file (for export and sharing)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    tmp = Path(path).with_suffix(".tmp")
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except (OSError, SafetensorError) as err:
        tmp.unlink(missing_ok=True)
        raise write_failure(err, doing=f"saving the weights `{path}`") from err


def write_failure(err: OSError | SafetensorError, *, doing: str) -> Exception:
    """The one-line error for a failed write; safetensors reports an OS error as its own."""
    if isinstance(err, OSError):
        return environment_failure(err, doing=doing)
    return environment_failure(
        OSError(str(err).rpartition("I/O error: ")[2] or str(err)), doing=doing
    )


def load_weights(path: Path, *, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Weights written by `save_weights` (a file that is no safetensors is a CheckpointError)."""
    if not Path(path).is_file():
        raise CheckpointError(f"weights file `{path}` does not exist")
    try:
        return load_file(path, device=str(device))
    except SafetensorError as err:
        raise CheckpointError(f"`{path}` is not a safetensors weights file ({err})") from None


def computed_by() -> dict[str, int]:
    """What a run's numbers depend on beyond its config, for its checkpoints' `rng` block:
    torchrun's processes (each draws by its rank) and the CPU threads (a kernel sums in
    another order on another number of them)."""
    return {"processes": distributed.world_size(), "threads": torch.get_num_threads()}


def warn_if_computed_otherwise(path: Path, rng: dict[str, Any]) -> bool:
    """Warn when a checkpoint was written by other processes or threads than resume it;
    whether it warned."""
    now = computed_by()
    then = {k: rng.get(k, n) for k, n in now.items()}  # older checkpoints record fewer
    if then != now:
        warnings.warn(
            f"`{path}` was written by {then['processes']} data-parallel process(es) with "
            f"{then['threads']} thread(s) and resumes in {now['processes']} with "
            f"{now['threads']}: the run goes on, but its numbers now differ from an "
            "uninterrupted run's (dropout, attacks and BatchNorm statistics are drawn by rank, "
            "and kernels sum in another order); set OMP_NUM_THREADS / `threads` as it was for "
            "the same numbers",
            stacklevel=3,
        )
    return then != now


def restore(
    run: RunDir,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    checkpoint: str | None = None,
) -> tuple[int, float, list[dict[str, Any]]]:
    """Load the checkpoint `run` resumes from (`checkpoint` by name, else the newest that
    passes its checks); metrics.jsonl is cut back to match it (emptied without one: the run
    starts over)."""
    clear_staging(run.checkpoints_dir)
    device = next(model.parameters()).device
    found = load_resumable(run.checkpoints_dir, name=checkpoint, device=device)
    if found is None:
        run.rewind([])
        return 0, 0.0, []
    path, state = found
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        epoch, elapsed, history = state["epoch"], state["elapsed"], state["history"]
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"`{path}` does not fit this run's model or optimiser ({err}): resume with the "
            "config it was written with"
        ) from None
    warn_if_computed_otherwise(path, state.get("rng", {}))
    run.rewind(history)
    return epoch, elapsed, history
