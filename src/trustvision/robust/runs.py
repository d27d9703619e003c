"""Run directories of the robust commands: whether one finished, and the model it holds.

A base run (`robust train`) holds `model.safetensors` (a `Normalized` state dict); a mix run
(`robust mix`) holds `mix.json` naming its two base runs (by absolute path), the temperatures
and alpha, and for an adaptive mix `mixnet.safetensors`. Loading never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trustvision.config import load_config
from trustvision.errors import ConfigError
from trustvision.files import write_atomic
from trustvision.robust.pixels import Normalized, build_pixel_model
from trustvision.runs import RunDir
from trustvision.train import checkpoint as ckpt
from trustvision.train.loop import Accel
from trustvision.train.recipe import WEIGHTS

MIX = "mix.json"
MIXNET = "mixnet.safetensors"


def is_finished(path: str | Path) -> bool:
    """Whether `path` is a run directory whose summary says it finished."""
    return RunDir(path).finished


def read_finished(path: str | Path) -> dict[str, Any]:
    """The summary of a finished run; anything else is a ConfigError that says what to run."""
    if not is_finished(path):
        raise ConfigError(
            f"`{path}` is not a finished robust run (no summary.json with status finished): "
            "train it with `trustvision robust train` or mix it with `trustvision robust mix`"
        )
    return RunDir(path).read_summary()


def load_base(path: str | Path, *, device: torch.device | str = "cpu") -> Normalized:
    """The pixel-space model of a finished `robust train` run, in eval mode, in the memory
    layout it trained in (channels-last unless its config says otherwise: attacks through it
    run 1.15-1.3x faster on the CPU so, docs/results/memory-format.md)."""
    from trustvision.robust.config import RobustTrainConfig

    summary = read_finished(path)
    run = RunDir.open(path)
    cfg = load_config(RobustTrainConfig, run.config_path)
    data = summary["data"]
    model = build_pixel_model(
        cfg.model,
        num_classes=data["num_classes"],
        image_shape=tuple(data["image_shape"]),
        mean=data["mean"],
        std=data["std"],
    )
    model.load_state_dict(ckpt.load_weights(run.path / WEIGHTS, device="cpu"))
    accel = Accel(torch.device(device), channels_last=cfg.channels_last)
    return accel.prepare_model(model).eval()


def load_model(path: str | Path, *, device: torch.device | str = "cpu") -> nn.Module:
    """The model of any finished robust run: a base model or a (fixed or adaptive) mix."""
    summary = read_finished(path)
    if summary.get("kind") == "mix":
        return load_mix(path, device=device)
    return load_base(path, device=device)


def write_mix(run: RunDir, spec: dict[str, Any], mix: nn.Module | None = None) -> None:
    """Write a mix's description (and an adaptive mix's own tensors) into its run directory."""
    if mix is not None:
        ckpt.save_weights(run.path / MIXNET, mix.mixing_state())  # type: ignore[operator]
    write_atomic((run.path / MIX), json.dumps(spec, indent=2) + "\n")


def load_mix(path: str | Path, *, device: torch.device | str = "cpu") -> nn.Module:
    """The fixed or adaptive mixed classifier of a finished `robust mix` run, in eval mode."""
    from trustvision.robust.mixing import MixedClassifier, build_adaptive

    spec = json.loads((Path(path) / MIX).read_text())
    standard, robust = (_mix_base(path, spec, role, device) for role in ("standard", "robust"))
    temps = {"temperature_std": spec["temperature_std"], "temperature_rob": spec["temperature_rob"]}
    if spec["kind"] == "fixed":
        return MixedClassifier(standard, robust, alpha=spec["alpha"], **temps).eval()
    mix = build_adaptive(
        standard,
        robust,
        input_shape=tuple(data_of(spec["robust"])["image_shape"]),
        width=spec["width"],
        stages=tuple(spec.get("stages", (0, 1))),  # mixes written before the knob read (0, 1)
        **temps,
    )
    state = ckpt.load_weights(Path(path) / MIXNET, device="cpu")
    missing, unexpected = mix.load_state_dict(state, strict=False)
    stray = [k for k in missing if not k.startswith(("standard.", "robust."))] + unexpected
    if stray:
        raise ConfigError(f"`{Path(path) / MIXNET}` does not match its mix.json: keys {stray}")
    return mix.to(device).eval()


def _mix_base(
    path: str | Path, spec: dict[str, Any], role: str, device: torch.device | str
) -> Normalized:
    """One base of a mix; a mix.json of before bases were stored by absolute path names them
    relative to the directory the mix was made from, which the error says."""
    try:
        return load_base(spec[role], device=device)
    except ConfigError as error:
        if Path(spec[role]).is_absolute():
            raise
        raise ConfigError(
            f"`{Path(path) / MIX}` names its {role} base `{spec[role]}`, a path relative to the "
            f"directory the mix was made from, and from {Path.cwd()} it is no finished run: run "
            "from that directory, or write the base's absolute path into mix.json (mixes made "
            "now store absolute paths)"
        ) from error


def data_of(path: str | Path) -> dict[str, Any]:
    """The data record of a finished run (a mix reports its robust base's)."""
    summary = read_finished(path)
    if summary.get("kind") == "mix":
        return data_of(summary["robust"])
    return summary["data"]


# A mix's knobs that are plain attributes, not tensors of its state dict.
MIX_ATTRIBUTES = ("alpha", "temperature_std", "temperature_rob")


def tensors_sha256(tensors: Mapping[str, torch.Tensor], **numbers: float) -> str:
    """One hash of named tensors (their values, in name order) and named numbers."""
    digest = hashlib.sha256()
    for key, tensor in sorted(tensors.items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    if numbers:  # (none: the hash of the tensors alone, as kept gate sweeps were signed)
        digest.update(json.dumps(numbers, sort_keys=True).encode())
    return digest.hexdigest()


def model_sha256(model: nn.Module) -> str:
    """What a loaded model computes, as one hash: every parameter and buffer, and a mix's
    alpha and temperatures. Kept attack results hold for this hash only."""
    values = {name: getattr(model, name, None) for name in MIX_ATTRIBUTES}
    numbers = {k: float(v) for k, v in values.items() if isinstance(v, int | float)}
    return tensors_sha256(model.state_dict(), **numbers)
