"""The choice files benchmarks/fed_compare.py reads for a method: `<method>.chosen.yaml`, the
chosen trial's config to train again, and `.json`, its run and every knob validation set;
written from a sweep's runs, or rebuilt from the committed report when the runs are gone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from common import ROOT
from fed_sweep_specs import method_of, spec

from trustvision.files import write_atomic
from trustvision.sweep.trial import format_override


def write_choice(folder: Path, algorithm: str, report: dict[str, Any]) -> None:
    """`<algorithm>.chosen.yaml` (the chosen trial's config, to train again) and `.json` (its
    run and every knob validation set), which benchmarks/fed_compare.py reads."""
    chosen = report["chosen"]
    sweep = Path(chosen["sweep"])
    config = yaml.safe_load((sweep / chosen["run_dir"] / "config.yaml").read_text())
    config["runs_dir"] = "runs"
    header = (
        f"# {algorithm}: trial {chosen['id']} ([lr.]stage.trial: the learning-rate follow-up's "
        f"trials begin with lr.) of {sweep}, chosen on validation\n"
    )
    write_atomic(
        folder / f"{algorithm}.chosen.yaml", header + yaml.safe_dump(config, sort_keys=False)
    )
    run = {
        "run_dir": str(sweep / chosen["run_dir"]),
        "params": {**report.get("fixed", {}), **chosen["params"]},
        "id": chosen["id"],
    }
    write_atomic(folder / f"{algorithm}.chosen.json", json.dumps(run, indent=2) + "\n")


def rebuild_choice(folder: Path, setting: str, name: str, report: dict[str, Any]) -> None:
    """`<method>.chosen.yaml/.json` of a kept sweep whose runs are gone: its spec's config with
    the chosen trial's values (the trial's own config, trained again; no run to reuse)."""
    from trustvision.config import dump_config, load_config
    from trustvision.federated.config import FedConfig

    algorithm = method_of(name)
    fixed = report.get("fixed") or {}
    follow_up = name != algorithm
    tree = spec(
        setting,
        algorithm,
        fixed=fixed if follow_up else None,
        inherited=None if follow_up else fixed,
    )
    chosen = report["chosen"]
    values = [format_override(k, v) for k, v in chosen["params"].items()]
    cfg = load_config(FedConfig, ROOT / tree["config"], [*tree["overrides"], *values])
    config = yaml.safe_load(dump_config(cfg)) | {"runs_dir": "runs"}
    header = (
        f"# {algorithm}: trial {chosen['id']} of the {name} sweep, chosen on validation; rebuilt "
        "from its spec (its run is gone; its numbers are in the earlier fed-sweep report)\n"
    )
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(
        folder / f"{algorithm}.chosen.yaml", header + yaml.safe_dump(config, sort_keys=False)
    )
    run = {"run_dir": None, "params": {**fixed, **chosen["params"]}, "id": chosen["id"]}
    write_atomic(folder / f"{algorithm}.chosen.json", json.dumps(run, indent=2) + "\n")
