"""Data-parallel training under `torchrun`: one process per device, PyTorch's
DistributedDataParallel (DDP) over NCCL on GPUs and gloo on CPUs.

Launched by torchrun (its RANK, WORLD_SIZE, LOCAL_RANK variables), every process runs the
same command; `data.batch_size` stays the *global* batch, and each process trains on its
contiguous share of every batch of the seeded order, so the images a step sees do not depend
on the number of processes. DDP averages the gradients, so with equal shares a step follows
the gradient of the whole batch; what differs is BatchNorm, whose batch statistics are each
process's own (DDP's default; running statistics come from rank 0).

Only rank 0 writes the run directory. Every other rank works in a private copy of it
(`private_run_dir`), made before rank 0 changes anything and removed at exit: it reads the
same checkpoints and summaries (so a resumed run takes the same path on every process), and
its writes, which repeat rank 0's, go nowhere anyone reads. After each epoch every process
takes rank 0's buffers (BatchNorm statistics), and evaluation runs whole on every process: all
of them then hold the same records and take the same decisions. A loss that is not finite on
one process stops all of them.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from trustvision.errors import ConfigError

TIMEOUT = timedelta(minutes=30)  # a collective that waits longer means a process died


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether this process is one of a running process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes and prints."""
    return rank() == 0


def start(device: torch.device) -> torch.device:
    """Join torchrun's process group (once) and return this process's device: on CUDA the
    GPU of its LOCAL_RANK. Without torchrun, `device` unchanged."""
    if not launched():
        return device
    if device.type == "cuda":
        local, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local >= gpus:
            raise ConfigError(
                f"torchrun started process {local} on a machine with {gpus} GPU(s): start at "
                f"most {gpus} per machine (`--nproc_per_node={gpus}`), or train on the CPU "
                "with `device=cpu`"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT)
        atexit.register(stop)
        exit_on_sigterm()
    return device


def exit_on_sigterm() -> None:
    """A SIGTERM (torchrun stopping the other ranks when one fails, a scheduler's pre-emption)
    exits through Python, so `atexit` removes this rank's private copy of the run directory;
    the default action would leave it in the temporary folder."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def stop() -> None:
    """Leave the process group (at exit)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


# What a rank's private copy leaves out: files no training step reads back.
NOT_COPIED = shutil.ignore_patterns("plots", "export", "c", "*.onnx", "*.png")


def run_dir_state(path: Path | None) -> list[str]:
    """What decides where a run resumes: its config and checkpoints, by relative path."""
    if path is None or not Path(path).exists():
        return []
    root = Path(path)
    found = [*root.rglob("config.yaml"), *root.rglob("summary.json"), *root.rglob("state.json")]
    return sorted(str(f.relative_to(root)) for f in found)


def check_same_run_dir(path: Path | None) -> None:
    """Every process must see the same run directory (on several machines: a shared folder),
    or they would resume from different epochs and wait for each other forever."""
    states: list[list[str]] = [[] for _ in range(world_size())]
    dist.all_gather_object(states, run_dir_state(path))
    if any(state != states[0] for state in states):
        raise ConfigError(
            f"the processes see different contents in the run directory `{path}`: on several "
            "machines it must be a folder every machine reads (a shared file system)"
        )


def private_run_dir(path: Path | None) -> Path:
    """A rank's private copy of the run directory at `path` (an empty folder for a fresh
    run) without plots and exports, removed at exit. Called on every rank but 0 before
    `barrier` lets rank 0 write."""
    root = Path(tempfile.mkdtemp(prefix=f"trustvision-rank{rank()}-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    if path is None or not Path(path).exists():
        return root / "run"
    return Path(shutil.copytree(path, root / "run", symlinks=True, ignore=NOT_COPIED))


def wrap(model: nn.Module) -> nn.Module:
    """`model` in DDP when several processes train (its trainable parameters as they are now:
    wrap again after `requires_grad` changes); else `model` itself."""
    if not active():
        return model
    param = next(model.parameters())
    ids = [param.device] if param.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP. Attacks, and any forward pass beyond the one a training step
    takes through DDP, use it: DDP expects one forward per backward."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def share(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """This rank's contiguous share of a global batch. A batch of k * B images for B labels
    (k views of the same images, as the dual model's originals and augmented copies) is split
    view by view, so each share keeps its views together."""
    world = world_size()
    if world == 1:
        return x, y
    if len(y) % world:
        raise ConfigError(
            f"a batch of {len(y)} images cannot be shared equally by {world} processes: make "
            f"`data.batch_size` a multiple of {world}"
        )
    views = len(x) // len(y)
    mine = [view.chunk(world)[rank()] for view in x.chunk(views)]
    return torch.cat(mine), y.chunk(world)[rank()]


def shares(batches: Iterable[tuple[Tensor, Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
    """`share` of every batch."""
    for x, y in batches:
        yield share(x, y)


def finite_everywhere(loss: Tensor) -> bool:
    """Whether `loss` is finite on every process: all of them stop together when one
    diverges, instead of the others waiting for its gradients."""
    finite = torch.isfinite(loss.detach()).to(torch.float32)
    if active():
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite)


def sync_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every process, so that they
    evaluate and checkpoint the same model after an epoch."""
    if active():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def sum_over_ranks(values: Tensor) -> Tensor:
    """`values` summed over all processes (itself with one)."""
    if active():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values
