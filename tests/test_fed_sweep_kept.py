"""benchmarks/fed_sweep.py on a machine without the runs of an unfinished sweep: the trials the
committed report kept of it are imported into the stage's new study (only the grid's other
points are left to run), report their numbers as before, and a choice among them is rebuilt
from its spec for fed_compare."""

import json
import statistics
from pathlib import Path

import pytest
from benchmark_scripts import benchmark
from optuna.trial import TrialState
from test_fed_sweep_specs import ROOT, fed_sweep

from trustvision.config import load_config
from trustvision.errors import ConfigError
from trustvision.federated.config import FedConfig
from trustvision.sweep.report import write_report
from trustvision.sweep.spec import dump_spec, load_spec
from trustvision.sweep.study import config_digest, load_study, read_saved_spec

COMMITTED = ROOT / "docs/results/fed-sweep.json"


def import_stage(bench, kept, runs, stage, grid, held=None):
    """What run_stage does before it sweeps, with `kept` as the earlier report's results."""
    earlier = runs.parent / f"{runs.name}-report.json"
    earlier.write_text(json.dumps({"results": kept}))
    written = bench.write_stage_spec("fmnist-cnn", "fedavg", runs, earlier, stage=stage, grid=grid)
    benchmark("fed_sweep_kept").import_kept(
        earlier,
        "fmnist-cnn",
        "fedavg",
        stage=stage,
        out=written.out,
        spec_path=written.path,
        fixed=written.held if held is None else held,
    )
    return written.out


def test_an_unfinished_kept_sweep_is_left_only_its_other_points(tmp_path):
    bench = fed_sweep()
    report = bench.kept_results(COMMITTED)["fmnist-cnn"]["fedavg"]
    first = [t for t in report["trials"] if t["stage"] == 1][:5]  # the machine went at trial 5
    kept = {"fmnist-cnn": {"fedavg": {**report, "trials": first, "complete": False}}}
    grid = bench.KNOBS["fedavg"][1]
    runs = tmp_path / "runs"

    out = import_stage(bench, kept, runs, 1, grid)

    study = load_study(read_saved_spec(out), out)
    queued = study.get_trials(states=(TrialState.WAITING,))
    ran = {t["params"]["optim.lr"] for t in first}
    assert sorted(t.system_attrs["fixed_params"]["optim.lr"] for t in queued) == sorted(
        set(grid) - ran
    )
    write_report(out)  # as the sweep does after each trial
    collected = bench.collect(runs, "fmnist-cnn", "fedavg")
    done = [t for t in collected["trials"] if t["state"] == "COMPLETE"]
    assert [(t["params"], t["validation"], t["test"], t["numbers"]) for t in done] == [
        (t["params"], t["validation"], t["test"], t["numbers"]) for t in first
    ]
    # a trial's number is its stage's: the note names the stage, as both stages have a trial 0
    for trial, kept_trial in zip(done, first, strict=True):
        assert trial["note"].startswith(f"measured earlier (trial {kept_trial['number']} of ")
        assert trial["note"].endswith("report.json, stage 1)")
    assert all("imported" not in t for t in done)
    assert not collected["complete"]
    row = benchmark("fed_sweep_report").choice_table({"fedavg": collected}, {"fedavg": "optim.lr"})
    minutes = statistics.median(t["seconds"] / 60 for t in first)  # as measured before
    assert row[-1].endswith(f"| 5 (unfinished) | {minutes:.0f} | not yet |")
    assert " (so far) |" in row[-1]
    rows = benchmark("fed_sweep_report").trial_table("fedavg", collected, "optim.lr")
    assert sum("**(best so far)**" in r for r in rows) == 1 and not any(
        "(chosen)" in r for r in rows
    )
    # trials of another search (here: another fixed learning rate) are not imported
    other = tmp_path / "other"
    assert not (import_stage(bench, kept, other, 1, grid, {"optim.lr": 0.1}) / "study.db").exists()
    # nor are those of another grid (a stage 2 whose best moved): swept from the start
    every = {"fmnist-cnn": {"fedavg": {**report, "complete": False}}}  # stage 2's too
    moved = tmp_path / "moved"
    assert not (import_stage(bench, every, moved, 2, [0.3, 0.6]) / "study.db").exists()
    assert (import_stage(bench, every, moved, 2, [0.4, 0.8]) / "study.db").exists()
    # the report keeps what the stage searched, which a new machine checks before continuing
    assert collected["searches"]["1"]["config_sha256"] == config_digest(read_saved_spec(out))
    again = {"fmnist-cnn": {"fedavg": collected}}
    assert (import_stage(bench, again, tmp_path / "again", 1, grid) / "study.db").exists()
    collected["searches"]["1"]["spec"]["overrides"].append("rounds=5")  # another search
    assert not (import_stage(bench, again, tmp_path / "edited", 1, grid) / "study.db").exists()


def test_a_choice_among_imported_trials_is_rebuilt_for_fed_compare(tmp_path):
    bench = fed_sweep()
    report = bench.kept_results(COMMITTED)["fmnist-cnn"]["fedavg"]
    kept = {"fmnist-cnn": {"fedavg": {**report, "complete": False}}}  # every trial, both stages
    runs = tmp_path / "runs"
    grid = bench.KNOBS["fedavg"][1]
    refined = bench.second_stage(grid, report["chosen"]["params"]["optim.lr"])
    for stage, values in ((1, grid), (2, refined)):
        write_report(import_stage(bench, kept, runs, stage, values))

    collected = bench.collect_method(runs, "fmnist-cnn", "fedavg")["fedavg"]

    assert collected["complete"]
    assert collected["chosen"]["params"] == report["chosen"]["params"]
    assert collected["chosen"]["run_dir"] is None
    cfg = load_config(FedConfig, runs / "fmnist-cnn/fedavg.chosen.yaml")
    assert cfg.optim.lr == report["chosen"]["params"]["optim.lr"] and cfg.seed == 0
    choice = json.loads((runs / "fmnist-cnn/fedavg.chosen.json").read_text())
    assert choice["run_dir"] is None and choice["params"] == report["chosen"]["params"]


def test_a_damaged_report_is_a_clear_error_not_a_traceback(tmp_path):
    bench = fed_sweep()
    for text in ('{"results": ', '{"meta": {}}', "[]"):
        (tmp_path / "fed-sweep.json").write_text(text)
        with pytest.raises(ConfigError, match=r"is not a report of benchmarks/fed_sweep\.py"):
            bench.kept_results(tmp_path / "fed-sweep.json")


def test_the_report_says_how_much_one_tail_image_moves_generic_validation():
    report = benchmark("fed_sweep_report")
    counts = [601, 361, 210, 129, 80, 48, 26, 17, 10, 6]  # seed 0 of fmnist-cnn
    (line,) = report.validation_resolution(counts)
    # ten classes: one of the 6 images of the rarest is 1/60 of the mean, one of the 10, 1/100
    assert "moves it by 1.7 points and one of the next rarest by 1.0" in line
    assert "601, 361, 210, 129, 80, 48, 26, 17, 10, 6" in line


def test_the_report_sums_every_timed_trial_and_says_how_many_recorded_no_time():
    report = benchmark("fed_sweep_report")
    block = {
        "fedavg": {"trials": [{"seconds": 3600}, {"seconds": 1800}, {"seconds": None}]},
        "fedlc": {"trials": [{"seconds": 5400, "state": "FAIL"}, {"state": "FAIL"}]},
    }
    line = report.trial_hours(block)
    assert line.startswith("Trial time: 3.0 hours in all")
    assert "of the 3 trials that recorded one" in line and "2 killed with their sweep" in line
    assert line.endswith(": fedavg 1.5, fedlc 1.5.")
    queued = [{"state": "WAITING"}, {"state": "RUNNING"}]  # not run yet: no time to record
    timed = {"fedavg": {"trials": [{"seconds": 3600, "state": "COMPLETE"}, *queued]}}
    assert "lower bound" not in report.trial_hours(timed)


def test_kept_trials_of_another_objective_overrides_or_config_are_not_imported(tmp_path):
    bench = fed_sweep()
    report = bench.kept_results(COMMITTED)["fmnist-cnn"]["fedavg"]
    first = [t for t in report["trials"] if t["stage"] == 1][:5]
    grid = bench.KNOBS["fedavg"][1]
    probe = tmp_path / "probe"
    written = bench.write_stage_spec(
        "fmnist-cnn", "fedavg", probe, tmp_path / "none", stage=1, grid=grid
    )
    spec = load_spec(written.path)
    ran = {"spec": dump_spec(spec), "config_sha256": config_digest(spec)}
    moved = {**ran["spec"], "config": f"/elsewhere/{Path(ran['spec']['config']).name}"}
    cases = {
        "same": (ran, True),
        "moved": ({**ran, "spec": moved}, True),  # another machine's checkout: same search
        "objective": (
            {**ran, "spec": {**ran["spec"], "objective": {"metric": "x", "direction": "maximize"}}},
            False,
        ),
        "overrides": ({**ran, "spec": {**ran["spec"], "overrides": ["rounds=5"]}}, False),
        "config": ({**ran, "config_sha256": "0" * 64}, False),
    }
    damaged = {"fmnist-cnn": {"fedavg": {**report, "trials": first, "complete": False}}}
    damaged["fmnist-cnn"]["fedavg"]["searches"] = {"1": {"config_sha256": None}}
    with pytest.raises(ConfigError, match=r"fedavg's `searches` entry of stage 1 is damaged"):
        import_stage(bench, damaged, tmp_path / "damaged", 1, grid)
    for case, (searched, imported) in cases.items():
        kept = {"fmnist-cnn": {"fedavg": {**report, "trials": first, "complete": False}}}
        kept["fmnist-cnn"]["fedavg"]["searches"] = {"1": searched}
        out = import_stage(bench, kept, tmp_path / case, 1, grid)
        assert (out / "study.db").exists() == imported, case


def test_a_method_whose_follow_up_has_not_begun_is_not_yet_compared():
    report = benchmark("fed_sweep_report")
    fedloge = fed_sweep().kept_results(COMMITTED)["fmnist-cnn"]["fedloge"]  # complete
    key = "algorithm.options.norm_target"
    (row,) = report.choice_table({"fedloge": fedloge}, {"fedloge": key})[2:]
    assert row.endswith("| not yet |")  # fedloge-lr is still to run: no choice for fed_compare


def test_kept_unfinished_sweeps_are_not_said_to_be_compared():
    report = benchmark("fed_sweep_report")
    kept = fed_sweep().kept_results(COMMITTED)["fmnist-cnn"]
    block = {
        "fedavg": {**kept["fedavg"], "earlier": True},
        "fedprox": {**kept["fedprox"], "earlier": True, "complete": False},
    }
    done, searching, blank = report.kept_lines(block)
    assert "(fedavg)" in done and "trains their chosen configs again" in done
    assert "unfinished (fedprox)" in searching and "no choice of theirs" in searching
    assert blank == ""


def test_a_running_trials_value_is_not_yet_among_the_values_tried():
    report = benchmark("fed_sweep_report")
    fedavg = fed_sweep().kept_results(COMMITTED)["fmnist-cnn"]["fedavg"]
    running = {"number": 99, "state": "RUNNING", "params": {"optim.lr": 7.0}, "stage": 2}
    block = {"fedavg": {**fedavg, "trials": [*fedavg["trials"], running], "complete": False}}
    (row,) = report.choice_table(block, {"fedavg": "optim.lr"})[2:]
    assert "7.0" not in row.split("|")[3]  # the `values tried` cell


def test_the_intro_names_fedavgs_rates_from_finished_sweeps_only():
    report = benchmark("fed_sweep_report")
    fedavg = fed_sweep().kept_results(COMMITTED)["fmnist-cnn"]["fedavg"]  # chose 0.2
    searching = {**fedavg, "chosen": {**fedavg["chosen"], "params": {"optim.lr": 0.05}}}
    results = {
        "fmnist-cnn": {"fedavg": fedavg},
        "cifar10": {"fedloge": fedavg},  # no FedAvg sweep there yet
        "fmnist-gap": {"fedavg": {**searching, "complete": False}},
    }
    assert report.fedavg_rates(results) == [0.2]
    assert report.fedavg_rates({"cifar10": {}}) == []
    assert report.spoken(["0.2"]) == "0.2"
    assert report.spoken(["0.2", "0.4", "0.8"]) == "0.2, 0.4 and 0.8"
