"""What the benchmark scripts share (imported as `common`: scripts run from this folder): where
results go and how they are written (a .md for people and a strict .json for programs, always
both), how numbers are formatted, the data files of this machine, and how a script fails."""

from __future__ import annotations

import json
import math
import signal
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trustvision.clikit import EXPECTED, err_console, print_failure
from trustvision.errors import ConfigError
from trustvision.files import write_atomic
from trustvision.runs import strict_json

ROOT = Path(__file__).parents[1]
RESULTS = ROOT / "docs/results"
# CIFAR-10 as this machine has it: a JPEG re-encoding beside the checkout (../shared/data).
CIFAR_ZIP = ROOT.parent / "shared/data/cifar10-jpeg.zip"
# The federated settings that fed_sweep.py tunes (at seed 0) and fed_compare.py compares: a
# config relative to the checkout (runs start there), its overrides, the seeds compared
# (never 0, the seed the sweeps chose on) and, where not every method, the methods run there
# unless --algorithms names others.
FED_SETTINGS: dict[str, dict[str, Any]] = {
    "fmnist-cnn": {
        "title": "Fashion-MNIST-LT (IF 100, alpha 0.5), mnist_cnn",
        "config": "configs/fed/fmnist_lt_cpu.yaml",
        "overrides": [],
        "seeds": [1, 2, 3],
    },
    "fmnist-gap": {
        "title": "Fashion-MNIST-LT (IF 100, alpha 0.5), gap_cnn (conv-BN-ReLU stages, GAP)",
        "config": "configs/fed/fmnist_lt_cpu.yaml",
        "overrides": ["model.name=gap_cnn", "model.kwargs={}"],
        "seeds": [1, 2, 3],
    },
    "cifar10": {
        "title": "CIFAR-10-LT (IF 100, alpha 0.5), ResNet-8",
        "config": "configs/fed/cifar10_lt_cpu.yaml",
        "overrides": [f"data.source={CIFAR_ZIP}"],
        "seeds": [1, 2, 3],
        "algorithms": ["fedavg", "fedloge"],  # what this CPU can sweep there
    },
}


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value) and count of the finite values."""
    finite = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not finite:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return {"mean": statistics.fmean(finite), "std": std, "n": len(finite)}


def pct(value: float | None, digits: int = 2) -> str:
    """A fraction as a percentage with `digits` decimals; "n/a" for a missing or NaN value."""
    return "n/a" if value is None or value != value else f"{100 * value:.{digits}f}"


def write_results(stem: str, markdown: str, body: dict[str, Any], *, out: Path = RESULTS) -> Path:
    """Write `out/<stem>.md` and `out/<stem>.json` (strict JSON: NaN as null); the .md path."""
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / f"{stem}.json", strict_json(body, indent=2) + "\n")
    path = out / f"{stem}.md"
    write_atomic(path, markdown.rstrip("\n") + "\n")
    return path


def in_settings_order(blocks: dict[str, Any]) -> dict[str, Any]:
    """`blocks` by setting in the order of FED_SETTINGS (any other setting after them): a
    report lists a setting where the settings list puts it, not where its runs were found."""
    return {setting: blocks[setting] for setting in [*FED_SETTINGS, *blocks] if setting in blocks}


def read_results(
    path: Path,
    script: str,
    *,
    check: Callable[[dict[str, Any]], object] | None = None,
    or_else: str = "",
) -> dict[str, Any] | None:
    """The results JSON `benchmarks/<script>` wrote at `path` (None where there is none); one
    it cannot have written (unreadable, or refused by `check`) is a clear error saying how to
    restore it (`or_else`: another way out)."""
    if not path.is_file():
        return None
    try:
        body = dict(json.loads(path.read_text()))
        if check is not None:
            check(body)
        return body
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ConfigError(
            f"`{path}` is not a report of benchmarks/{script} ({type(err).__name__}: {err}): "
            f"restore it (`git checkout -- {path}`){or_else}"
        ) from None


def fed_validation_counts(
    setting: str, seeds: Sequence[int], overrides: Sequence[str] = ()
) -> dict[int, list[int]]:
    """Validation images per class that a federated setting's clients hold out at each seed
    (with the extra config `overrides`), summed over the clients: a pure function of the config
    and the seed, no training. The data set is read once. Our own rather than the session's
    `build_parts`, which would also build the algorithm (FedLoGe's SSE-C: 10,000 steps)."""
    import torch

    from trustvision.config import load_config
    from trustvision.data.dataset import load_data
    from trustvision.federated.config import FedConfig
    from trustvision.federated.data import build_federation

    spec = FED_SETTINGS[setting]
    config = ROOT / spec["config"]
    dataset = load_data(load_config(FedConfig, config, [*spec["overrides"], *overrides]).data)
    counts = {}
    for seed in seeds:
        cfg = load_config(FedConfig, config, [*spec["overrides"], *overrides, f"seed={seed}"])
        federation = build_federation(
            dataset,
            cfg.data,
            num_clients=cfg.num_clients,
            alpha=cfg.alpha,
            seed=seed,
            device=torch.device("cpu"),
        )
        counts[seed] = federation.describe()["val_counts"]
    return counts


def image_weights(counts: Sequence[int]) -> list[float]:
    """Points of class-balanced accuracy that one image of each class is worth, rarest first
    (a class without images drops out of the mean)."""
    present = sorted(n for n in counts if n)
    return [100 / (len(present) * n) for n in present]


def absolute(text: str) -> Path:
    """A path argument made absolute against the caller's folder: `processes.run_child` runs
    its commands in the checkout's."""
    return Path(text).resolve()


def run_script(main: Callable[[], None]) -> None:
    """Run a script's `main`; an expected failure (a bad config value, a file or folder the
    machine refuses) ends it as the CLI's commands end, one red line and the README's exit code,
    instead of a traceback; so does Ctrl-C (exit 130, as `trustvision sweep run`), and so do
    SIGTERM and a closed terminal's SIGHUP, which stop the script's children as Ctrl-C does
    (benchmarks/processes.py) instead of leaving them running without it."""

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    try:
        main()
    except EXPECTED as err:
        sys.exit(print_failure(err))
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]: what finished is kept", highlight=False)
        sys.exit(130)
