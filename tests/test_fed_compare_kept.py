"""benchmarks/fed_compare_kept.py: which rows of the earlier report stand in for a run of the
config chosen now, which are dropped, and a damaged report refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from benchmark_scripts import benchmark

from trustvision.errors import ConfigError


def test_a_reported_seed_of_the_chosen_config_is_kept_not_trained_again(tmp_path, monkeypatch):
    """A new machine trains only the seeds no report holds: the reported ones of the config
    chosen now stand in for their runs, seed by seed; rows of another config do not."""
    bench, kept_module = benchmark("fed_compare"), benchmark("fed_compare_kept")
    sweeps = tmp_path / "sweeps"
    (sweeps / "fmnist-cnn").mkdir(parents=True)
    chosen = {"optim": {"lr": 0.2}, "algorithm": {"name": "fedlc", "options": {"tau": 8.0}}}
    (sweeps / "fmnist-cnn" / "fedlc.chosen.yaml").write_text(yaml.safe_dump(chosen))
    other = {**chosen, "rounds": 30}  # same rate and options, another config

    def row(seed, tau=8.0, tuned=True, config=None):
        numbers = {"seed": seed, "lr": 0.2, "options": {"tau": tau}, "tuned": tuned}
        if config is not None:  # rows since the digest was recorded
            numbers["config_sha256"] = kept_module.config_digest({**config, "seed": seed})
        return numbers

    rows = [row(1), row(2, config=chosen), row(3, tau=4.0), row(4, tuned=False)]
    rows += [row(5, config=other), row(None), row(None)]  # seedless: an older report's
    report = {"meta": {"command": "earlier"}, "runs": {"fmnist-cnn": {"fedlc": rows}}}
    earlier = kept_module.reported_rows(report)
    stand = [kept_module.stands_in(r, "fmnist-cnn", "fedlc", sweeps) for _, r in earlier]
    assert stand == [True, True, False, False, False, False, False]

    trained = []
    monkeypatch.setattr(bench, "train", lambda *job: trained.append(job[:3]) or tmp_path / "run")
    jobs = [("fmnist-cnn", "fedlc", seed) for seed in (1, 2, 3)]
    args = bench.argparse.Namespace(
        runs=tmp_path / "runs", overrides=[], sweeps=sweeps, report_only=False, jobs=1
    )
    runs = bench.finished_runs(jobs, args, reported={jobs[0], jobs[1]})
    assert trained == [jobs[2]] and list(runs) == [jobs[2]]  # seed 3's row measured tau 4

    fresh = {"seed": 3, "lr": 0.2, "options": {"tau": 8.0}, "tuned": True}
    merged = kept_module.with_kept({"fmnist-cnn": {"fedlc": [fresh]}}, earlier, sweeps)
    kept = merged["fmnist-cnn"]["fedlc"]
    assert [(r["seed"], r.get("kept", False)) for r in kept] == [(1, True), (2, True), (3, False)]
    assert kept[0]["reported_by"] == "earlier"
    # a method with no run here keeps the rows of the config chosen now: the others would be
    # reported as tuned; where nothing is chosen here (no sweeps) it keeps every row
    alone = kept_module.with_kept({}, earlier, sweeps)["fmnist-cnn"]["fedlc"]
    assert [r["seed"] for r in alone] == [1, 2]
    unknown = kept_module.with_kept({}, earlier, tmp_path / "no-sweeps")["fmnist-cnn"]["fedlc"]
    assert [r["seed"] for r in unknown] == [None, None, 1, 2, 3, 4, 5]


def test_a_setting_none_of_whose_kept_rows_stand_is_not_reported(tmp_path):
    """Rows of the defaults, measured before a sweep chose: once the choice exists they are
    dropped, and their setting with them (an empty setting would have no plots to draw)."""
    kept_module = benchmark("fed_compare_kept")
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10/fedavg.chosen.yaml").write_text("optim: {lr: 0.1}\nalgorithm: {}\n")
    earlier = [(("cifar10", "fedavg", 1), {"seed": 1, "tuned": False, "kept": True})]
    assert kept_module.with_kept({}, earlier, tmp_path) == {}


def test_settings_come_in_the_order_of_the_settings_list_not_of_the_runs_found():
    """On a new machine CIFAR-10 (run here) must not jump ahead of the kept Fashion-MNIST."""
    kept_module = benchmark("fed_compare_kept")
    row = {"seed": 1, "kept": True}
    earlier = [(("fmnist-cnn", "fedavg", 1), row), (("fmnist-gap", "fedavg", 1), row)]
    merged = kept_module.with_kept({"cifar10": {"fedavg": [dict(row)]}}, earlier, Path("none"))
    assert list(merged) == ["fmnist-cnn", "fmnist-gap", "cifar10"]


def test_a_damaged_earlier_report_is_a_clear_error_not_a_traceback(tmp_path):
    kept_module = benchmark("fed_compare_kept")
    path = tmp_path / "federated.json"
    assert kept_module.read_report(path) == {"runs": {}, "results": {}}
    for text in ('{"runs": ', "[]", '{"runs": {}}', '{"runs": {"s": {"a": [3]}}, "results": {}}'):
        path.write_text(text)
        with pytest.raises(ConfigError, match=r"is not a report of benchmarks/fed_compare\.py"):
            kept_module.read_report(path)
    path.write_text('{"runs": {"s": {"a": [{"seed": 1}]}}, "results": {"s": {}}}')
    assert kept_module.read_report(path)["runs"]["s"]["a"] == [{"seed": 1}]


def test_the_same_config_in_a_checkout_elsewhere_has_the_same_digest():
    kept_module = benchmark("fed_compare_kept")

    def config(source, lr=0.1):
        return {"seed": 1, "runs_dir": source, "data": {"source": source}, "optim": {"lr": lr}}

    here, there = config("/work/shared/cifar.zip"), config("/home/u/shared/cifar.zip")
    assert kept_module.config_digest(here) == kept_module.config_digest(there)
    assert kept_module.config_digest(here) != kept_module.config_digest(config("/w/c.zip"))
    assert kept_module.config_digest(here) != kept_module.config_digest(
        config("/work/shared/cifar.zip", lr=0.2)
    )
