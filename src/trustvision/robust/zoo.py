"""Models of the RobustBench model zoo, read from a checkpoint file the user downloaded.

The `robustbench` package itself does not install here without torchvision (it depends on it
and pins timm 1.0.9), so this module reads the zoo's checkpoint layout itself: a file saved
with `torch.save`, holding the state dict either bare or under `state_dict` (some under
`model_state_dict`), its keys perhaps prefixed `module.` (DataParallel) or `model.`. It is
read with `torch.load(weights_only=True)`: no pickle code runs.

Supported family: RobustBench's `WideResNet` (robustbench/model_zoo/architectures/
wide_resnet.py, the TRADES-style pre-activation WRN of most CIFAR-10/100 l_inf entries:
Carmon2019Unlabeled, Zhang2019Theoretically, Wong2020Fast, ...). It takes [0, 1] pixels (no
normalisation inside) and maps block for block onto our `wrn` (models/wrn.py), whose blocks
compute the same thing: BN-ReLU first, the 1x1 projection on the activated input. Depth and
width are read from the tensors. Every tensor must be used and every weight of ours filled;
the zoo's unused `sub_block1` (built by their class, never called in its forward) is the
one exception, dropped by name.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from trustvision.errors import ConfigError

STATE_KEYS = ("state_dict", "model_state_dict")
PREFIXES = ("module.", "model.")
UNUSED = "sub_block1."  # RobustBench's WideResNet builds it and never calls it
BLOCK = re.compile(r"^block(\d)\.layer\.(\d+)\.(.+)$")
RENAMES = {"convShortcut": "shortcut"}


def read_checkpoint(path: Path) -> dict[str, Tensor]:
    """The state dict of a zoo checkpoint, prefixes removed; never runs pickle code."""
    if not path.is_file():
        raise ConfigError(f"checkpoint `{path}` does not exist: download it from the zoo first")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise ConfigError(
            f"`{path}` cannot be read as a checkpoint with `torch.load(weights_only=True)` "
            f"({load_failure(err)}): only tensors and plain containers are accepted"
        ) from None
    state = loaded
    for key in STATE_KEYS:
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            state = loaded[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"`{path}` holds no state dict of tensors (RobustBench's layout)")
    cleaned = {}
    for key, value in state.items():
        for prefix in PREFIXES:
            key = key.removeprefix(prefix)
        cleaned[key] = value
    return cleaned


def load_failure(err: Exception) -> str:
    """What torch.load refused, without its advice to load the file unsafely."""
    lines = [
        line.strip().removeprefix("WeightsUnpickler error:").strip()
        for line in str(err).splitlines()
    ]
    told = [line for line in lines if line.startswith(("Trying to load", "Unsupported"))]
    plain = [line for line in lines if line and not re.search("weights_only|torch.load", line)]
    return (told or plain or [type(err).__name__])[0].split(". ")[0].rstrip(".")


def wrn_shape(state: dict[str, Tensor]) -> tuple[int, int, int]:
    """(depth, widen, num_classes) of a zoo WideResNet, read from its tensors."""
    dims = {"conv1.weight": 4, "block1.layer.0.conv1.weight": 4, "fc.weight": 2}
    wrong = [f"{k} ({n}-d)" for k, n in dims.items() if k not in state or state[k].dim() != n]
    if wrong:
        raise ConfigError(
            f"the checkpoint is not a RobustBench WideResNet (no {', '.join(wrong)} tensor as "
            "that family has): only that family is supported"
        )
    blocks = {int(m.group(2)) for k in state if (m := BLOCK.match(k)) and m.group(1) == "1"}
    widen = state["block1.layer.0.conv1.weight"].shape[0] // 16
    return 6 * len(blocks) + 4, widen, state["fc.weight"].shape[0]


def our_key(key: str) -> str | None:
    """Our `wrn`'s name for a zoo WideResNet tensor (None for one we do not know)."""
    if key.startswith("conv1."):
        return "stem." + key.removeprefix("conv1.")
    if key.startswith("bn1."):
        return "neck.0." + key.removeprefix("bn1.")
    if key.startswith("fc."):
        return "head." + key.removeprefix("fc.")
    if match := BLOCK.match(key):
        stage, block, rest = int(match.group(1)) - 1, match.group(2), match.group(3)
        name, _, tail = rest.partition(".")
        return f"stages.{stage}.{block}.{RENAMES.get(name, name)}.{tail}"
    return None


def map_wrn(state: dict[str, Tensor], ours: dict[str, Tensor]) -> dict[str, Tensor]:
    """The zoo tensors under our names, checked: each used once, each of ours filled, shapes
    equal. Anything else is a ConfigError listing the tensors concerned."""
    mapped: dict[str, Tensor] = {}
    unused = []
    for key, value in state.items():
        if key.startswith(UNUSED):
            continue
        name = our_key(key)
        if name is None or name not in ours:
            unused.append(key)
        elif ours[name].shape != value.shape:
            raise ConfigError(
                f"`{key}` has shape {tuple(value.shape)}, our `{name}` {tuple(ours[name].shape)}"
            )
        else:
            mapped[name] = value
    missing = sorted(set(ours) - set(mapped))
    if unused or missing:
        raise ConfigError(
            "the checkpoint does not map onto our WideResNet: "
            + (f"unused tensors {unused[:8]}{' ...' if len(unused) > 8 else ''}" if unused else "")
            + ("; " if unused and missing else "")
            + (f"ours left empty {missing[:8]}" if missing else "")
        )
    return mapped


def describe_zoo(path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """What the imported run records about where its weights came from."""
    depth, widen, classes = wrn_shape(state)
    return {
        "source": "robustbench model zoo",
        "checkpoint": str(path),
        "family": "WideResNet (robustbench/model_zoo/architectures/wide_resnet.py)",
        "architecture": f"WideResNet-{depth}-{widen}",
        "num_classes": classes,
        "tensors": len(state),
    }
