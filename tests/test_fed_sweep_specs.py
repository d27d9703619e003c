"""benchmarks/fed_sweep.py's sweep specs load as configs, for every method, setting and value."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from benchmark_scripts import benchmark

from trustvision.config import load_config
from trustvision.federated.config import FedConfig

ROOT = Path(__file__).parents[1]


def fed_sweep() -> ModuleType:
    return benchmark("fed_sweep")


@pytest.mark.parametrize("algorithm", sorted(fed_sweep().KNOBS))
def test_every_trial_of_a_methods_sweep_is_a_valid_config_of_that_method(algorithm):
    bench = fed_sweep()
    key, grid = bench.KNOBS[algorithm]
    for setting in bench.SETTINGS:
        tree = bench.spec(setting, algorithm)
        for value in grid:
            cfg = load_config(
                FedConfig, ROOT / tree["config"], [*tree["overrides"], f"{key}={value}"]
            )
            assert cfg.algorithm.name == algorithm
            section, _, name = key.rpartition(".")
            if section == "algorithm.options":
                assert cfg.algorithm.options[name] == value
            else:  # the learning rate, for the methods with no knob of their own
                assert key == "optim.lr" and cfg.optim.lr == value


@pytest.mark.parametrize("algorithm", sorted(fed_sweep().FOLLOW_UP))
def test_a_follow_up_sweep_holds_the_first_knobs_chosen_value_and_varies_its_own(algorithm):
    bench = fed_sweep()
    first, _ = bench.KNOBS[algorithm]
    key, grid = bench.FOLLOW_UP[algorithm]
    tree = bench.spec("fmnist-gap", algorithm, fixed={first: 4.0})
    assert (
        tree["name"]
        == f"fmnist-gap-{bench.follow_up_name(algorithm)}"
        != bench.spec("fmnist-gap", algorithm)["name"]
    )
    assert list(tree["params"]) == [key]
    for value in grid:
        cfg = load_config(FedConfig, ROOT / tree["config"], [*tree["overrides"], f"{key}={value}"])
        assert cfg.algorithm.name == algorithm and cfg.model.name == "gap_cnn"
        assert cfg.algorithm.options[first.rpartition(".")[2]] == 4.0
        assert cfg.optim.lr == value


def fake_sweep(folder: Path, scores: dict[float, float], key: str, overrides=()) -> None:
    """A finished sweep's sweep.json and spec.yaml and, for each trial, the run files
    fed_sweep.py reads."""
    folder.mkdir(parents=True)
    (folder / "spec.yaml").write_text(yaml.safe_dump({"overrides": ["seed=0", *overrides]}))
    trials = []
    for number, (value, val) in enumerate(scores.items()):
        run = folder / f"trials/trial-{number}/run"
        run.mkdir(parents=True)
        # a test number of 0 everywhere: the choice never reads it
        pick = {"selected_by": "validation", "round": 60, "generic_val_acc": val, "generic_acc": 0}
        summary = {"headline": {"generic_acc": 0.0}, "selected": {"generic": pick}}
        (run / "summary.json").write_text(json.dumps(summary))
        (run / "config.yaml").write_text(yaml.safe_dump({"optim": {"lr": value}}))
        trials.append(
            {
                "number": number,
                "state": "COMPLETE",
                "params": {key: value},
                "validation": val,
                "run_dir": f"trials/trial-{number}/run",
            }
        )
    best = max(trials, key=lambda t: t["validation"])
    done = {"trials_planned": len(trials), "trials_done": len(trials), "chosen": best}
    searched = {"spec": {"overrides": ["seed=0", *overrides]}, "config_sha256": None}
    (folder / "sweep.json").write_text(json.dumps({"trials": trials, **done, **searched}))


def finished_sweep(folder: Path, scores: dict[float, float], key: str, overrides=()) -> None:
    """fake_sweep's first stage and the second stage its best value calls for, whose trials
    score below it: a finished search, the only kind that writes a choice."""
    fake_sweep(folder, scores, key, overrides)
    best = max(scores, key=lambda value: scores[value])
    refined = fed_sweep().second_stage(sorted(scores), best)
    low = min(scores.values()) - 0.01
    fake_sweep(folder.parent / f"{folder.name}-stage2", dict.fromkeys(refined, low), key, overrides)


@pytest.mark.parametrize(("follow_up_best", "compared"), [(0.80, "fedloge-lr"), (0.70, "fedloge")])
def test_the_compared_config_is_the_best_validation_score_over_a_method_and_its_follow_up(
    tmp_path, follow_up_best, compared
):
    bench = fed_sweep()
    norm, lr = bench.KNOBS["fedloge"][0], bench.FOLLOW_UP["fedloge"][0]
    finished_sweep(tmp_path / "s/fedloge", {1.0: 0.70, 4.0: 0.75}, norm)
    finished_sweep(
        tmp_path / "s/fedloge-lr", {0.03: 0.72, 0.2: follow_up_best}, lr, [f"{norm}=4.0"]
    )
    reports = bench.collect_method(tmp_path, "s", "fedloge")
    assert reports["fedloge-lr"]["fixed"] == {norm: 4.0}  # what it ran at, from its spec
    assert [name for name, r in reports.items() if r["final"]] == [compared]
    chosen = json.loads((tmp_path / "s/fedloge.chosen.json").read_text())
    assert chosen["id"] == reports[compared]["chosen"]["id"]
    assert chosen["id"].startswith("lr.") == (compared == "fedloge-lr")
    assert chosen["params"] == ({norm: 4.0, lr: 0.2} if compared == "fedloge-lr" else {norm: 4.0})


def test_a_method_with_a_knob_of_its_own_trains_at_fedavgs_validation_chosen_rate(
    tmp_path, monkeypatch
):
    bench = fed_sweep()
    assert {"fedprox", "fedrep", "fedbabu", "fedetf", "ditto", "fedlc"} == bench.INHERITS_LR
    none = tmp_path / "no-report.json"
    with pytest.raises(SystemExit, match="sweep fedavg first"):
        bench.inherited_lr(tmp_path, "fmnist-gap", "fedprox", none)
    fake_sweep(tmp_path / "fmnist-gap/fedavg", {0.03: 0.69, 0.8: 0.79, 0.2: 0.76}, "optim.lr")
    with pytest.raises(SystemExit, match="holds a finished sweep"):  # its second stage to run
        bench.inherited_lr(tmp_path, "fmnist-gap", "fedprox", none)
    shutil.rmtree(tmp_path / "fmnist-gap/fedavg")
    finished_sweep(tmp_path / "fmnist-gap/fedavg", {0.03: 0.69, 0.8: 0.79, 0.2: 0.76}, "optim.lr")
    assert bench.inherited_lr(tmp_path, "fmnist-gap", "fedrod", none) == {}  # its knob is the rate
    inherited = bench.inherited_lr(tmp_path, "fmnist-gap", "fedprox", none)
    assert inherited == {"optim.lr": 0.8}
    tree = bench.spec("fmnist-gap", "fedprox", inherited=inherited)
    mu = "algorithm.options.mu"
    cfg = load_config(FedConfig, ROOT / tree["config"], [*tree["overrides"], f"{mu}=0.1"])
    assert cfg.optim.lr == 0.8 and cfg.algorithm.options["mu"] == 0.1
    assert tree["name"] == bench.spec("fmnist-gap", "fedprox")["name"]  # not a follow-up

    finished_sweep(tmp_path / "fmnist-gap/fedprox", {0.01: 0.80, 0.1: 0.78}, mu, ["optim.lr=0.8"])
    report = bench.collect_method(tmp_path, "fmnist-gap", "fedprox")["fedprox"]
    assert report["fixed"] == {"optim.lr": 0.8}
    chosen = json.loads((tmp_path / "fmnist-gap/fedprox.chosen.json").read_text())
    assert chosen["params"] == {"optim.lr": 0.8, mu: 0.01}


def test_a_seed_trained_for_an_earlier_choice_or_other_overrides_is_not_this_jobs_run(tmp_path):
    bench = benchmark("fed_compare")
    chosen = tmp_path / "sweeps/fmnist-cnn/fedloge.chosen.yaml"
    chosen.parent.mkdir(parents=True)
    chosen.write_text("# chosen\nseed: 0\nruns_dir: runs\noptim: {lr: 0.2}\n")
    for name, lr in (("a-old", 0.03), ("b-new", 0.2)):
        run = tmp_path / "seed1" / name
        run.mkdir(parents=True)
        config = {"seed": 1, "runs_dir": str(tmp_path / "seed1"), "optim": {"lr": lr}}
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    expected = bench.expected_config("fmnist-cnn", "fedloge", tmp_path / "sweeps", [])
    assert [r.name for r in bench.runs_of(tmp_path / "seed1", expected)] == ["b-new"]
    # without a choice: the setting's config with the method's defaults, and the overrides
    defaults = bench.expected_config("fmnist-gap", "fedprox", tmp_path / "none", ["rounds=7"])
    assert defaults["algorithm"]["name"] == "fedprox" and defaults["model"]["name"] == "gap_cnn"
    assert defaults["rounds"] == 7 and defaults["optim"]["lr"] == 0.03
    assert bench.runs_of(tmp_path / "seed1", defaults) == []


def test_the_learning_rate_plot_is_drawn_only_where_fedavg_and_fedloges_follow_up_both_ran(
    tmp_path,
):
    bench = fed_sweep()
    lr = bench.FOLLOW_UP["fedloge"][0]
    fake_sweep(tmp_path / "s/fedavg", {0.03: 0.70, 0.2: 0.75}, lr)
    fake_sweep(tmp_path / "s/fedloge-lr", {0.03: 0.72, 0.2: 0.71}, lr)
    both = {"fedavg": bench.collect(tmp_path, "s", "fedavg")}
    both["fedloge-lr"] = bench.collect(tmp_path, "s", "fedloge-lr")
    made = bench.lr_plot(
        {"fmnist-cnn": both, "fmnist-gap": {"fedavg": both["fedavg"]}}, tmp_path, lr
    )
    assert list(made) == ["fmnist-cnn"]
    assert Path(made["fmnist-cnn"]["lr_plot"]).stat().st_size > 10_000


def test_every_sweep_with_finished_trials_gets_a_panel_and_its_plot_is_linked(tmp_path):
    bench = fed_sweep()
    lr = bench.FOLLOW_UP["fedloge"][0]
    fake_sweep(tmp_path / "s/fedavg", {0.03: 0.70, 0.2: 0.75}, lr)
    fake_sweep(tmp_path / "s/fedper", {0.01: 0.90, 0.02: 0.91}, lr)
    block = {name: bench.collect(tmp_path, "s", name) for name in ("fedavg", "fedper")}
    none_done = {**block["fedper"], "trials": []}
    keys = {"fedavg": lr, "fedper": lr}
    made = bench.knobs_plot(
        {"fmnist-cnn": block, "fmnist-gap": {"fedper": none_done}}, tmp_path, keys
    )
    assert list(made) == ["fmnist-cnn"]
    assert Path(made["fmnist-cnn"]["knobs_plot"]).stat().st_size > 10_000
    meta = {
        "command": "c",
        "date": "d",
        "machine": "m",
        "knobs": {"fedavg": {"key": lr}, "fedper": {"key": lr}},
        "follow_ups": {},
        "plots": made,
    }
    assert "(fed_sweep_fmnist-cnn_knobs.png)" in bench.markdown({"fmnist-cnn": block}, meta)


def test_a_report_keeps_the_sweeps_whose_runs_are_gone_and_rebuilds_their_choices(
    tmp_path, monkeypatch
):
    """After the runs folder is lost (a new machine), the committed report still reports every
    sweep, FedAvg's chosen rate still reaches the methods that inherit it, nothing kept is
    swept again, and fed_compare gets each compared config rebuilt (to train again)."""
    bench = fed_sweep()
    report = ROOT / "docs/results/fed-sweep.json"
    kept = bench.kept_results(report)
    runs = tmp_path / "runs"
    results = bench.with_kept({}, kept, runs)
    assert results.keys() == kept.keys()
    # a setting swept here comes where the settings list puts it, not first
    assert list(bench.with_kept({"cifar10": {}}, kept, runs))[-1] == "cifar10"
    assert {"fedloge", "fedloge-lr", "fedavg"} <= set(results["fmnist-cnn"])
    assert all(r["earlier"] for block in results.values() for r in block.values())
    for algorithm in ("fedloge", "fedavg"):
        final = next(
            r for n, r in kept["fmnist-cnn"].items() if r.get("final") and n.startswith(algorithm)
        )
        chosen = {**final.get("fixed", {}), **final["chosen"]["params"]}
        path = runs / "fmnist-cnn" / f"{algorithm}.chosen.yaml"
        cfg = load_config(FedConfig, path)
        assert cfg.algorithm.name == algorithm and cfg.seed == 0
        assert cfg.optim.lr == chosen["optim.lr"]
        if algorithm == "fedloge":
            assert cfg.algorithm.options["norm_target"] == chosen["algorithm.options.norm_target"]
        assert json.loads(path.with_suffix(".json").read_text())["run_dir"] is None
        assert benchmark("fed_compare").chosen_config(runs, "fmnist-cnn", algorithm) == path
    assert bench.only_kept(kept, runs, "fmnist-cnn", "fedloge")
    without = {"fmnist-cnn": {n: r for n, r in kept["fmnist-cnn"].items() if n != "fedprox"}}
    assert not bench.only_kept(without, runs, "fmnist-cnn", "fedprox")  # never swept: swept
    rate = kept["fmnist-gap"]["fedavg"]["chosen"]["params"]["optim.lr"]
    assert bench.inherited_lr(runs, "fmnist-gap", "fedprox", report) == {"optim.lr": rate}


def test_only_a_complete_sweep_is_kept_in_place_of_its_runs(tmp_path):
    bench = fed_sweep()
    runs = tmp_path / "runs"

    def write(stage, done, chosen_lr):
        out = bench.stage_dir(runs, "fmnist-cnn", "fedavg", stage)
        out.mkdir(parents=True, exist_ok=True)
        grid = bench.KNOBS["fedavg"][1] if stage == 1 else [0.04, 0.06]
        trials = [{"params": {"optim.lr": lr}} for lr in grid[:done]]
        chosen = {"params": {"optim.lr": chosen_lr}}
        report = {"trials_planned": len(grid), "trials_done": done, "chosen": chosen}
        report["trials"] = trials
        (out / "sweep.json").write_text(json.dumps(report))

    write(1, 6, 0.05)  # killed before its last trial
    assert not benchmark("fed_sweep_collect").complete(runs, "fmnist-cnn", "fedavg")
    write(1, 7, 0.05)  # an inner best: two values between it and its neighbours follow
    assert not benchmark("fed_sweep_collect").complete(runs, "fmnist-cnn", "fedavg")
    write(2, 2, 0.05)
    assert benchmark("fed_sweep_collect").complete(runs, "fmnist-cnn", "fedavg")

    # a best at the grid's bottom, its trial killed and run again: stage 2 goes below it
    shutil.rmtree(bench.stage_dir(runs, "fmnist-cnn", "fedavg", 2))
    write(1, 7, bench.KNOBS["fedavg"][1][0])
    out = bench.stage_dir(runs, "fmnist-cnn", "fedavg", 1)
    report = json.loads((out / "sweep.json").read_text())
    report["trials"].append(report["trials"][0])
    (out / "sweep.json").write_text(json.dumps(report))
    assert not benchmark("fed_sweep_collect").complete(runs, "fmnist-cnn", "fedavg")

    kept = {"fmnist-cnn": {"fedavg": {"trials": [], "chosen": None}}}  # before `complete`
    gone = tmp_path / "gone"
    assert bench.only_kept(kept, gone, "fmnist-cnn", "fedavg")
    kept["fmnist-cnn"]["fedavg"]["complete"] = False
    assert not bench.only_kept(kept, gone, "fmnist-cnn", "fedavg")  # swept again from its start


def test_an_unfinished_kept_sweep_gives_fed_compare_no_config(tmp_path):
    bench = fed_sweep()
    kept = bench.kept_results(ROOT / "docs/results/fed-sweep.json")
    report = kept["fmnist-cnn"]["fedavg"]
    runs = tmp_path / "runs"
    bench.with_kept({}, {"fmnist-cnn": {"fedavg": {**report, "complete": False}}}, runs)
    assert not (runs / "fmnist-cnn" / "fedavg.chosen.yaml").exists()
    bench.with_kept({}, {"fmnist-cnn": {"fedavg": report}}, runs)
    assert (runs / "fmnist-cnn" / "fedavg.chosen.yaml").is_file()


def test_a_sweep_still_searching_writes_no_choice_for_fed_compare(tmp_path):
    """fed_compare reports what it finds as tuned: a first stage whose best value still calls
    for a second stage is not yet a choice."""
    bench = fed_sweep()
    fake_sweep(tmp_path / "s/fedavg", {0.03: 0.70, 0.2: 0.75}, "optim.lr")
    (tmp_path / "s/fedavg.chosen.yaml").write_text("# of an earlier search, restarted since\n")
    assert not bench.collect_method(tmp_path, "s", "fedavg")["fedavg"]["complete"]
    assert not (tmp_path / "s/fedavg.chosen.yaml").exists()
    finished_sweep(tmp_path / "t/fedavg", {0.03: 0.70, 0.2: 0.75}, "optim.lr")
    bench.collect_method(tmp_path, "t", "fedavg")
    assert (tmp_path / "t/fedavg.chosen.yaml").is_file()
    norm = bench.KNOBS["fedloge"][0]  # its own sweep finished, its learning rate's not begun
    finished_sweep(tmp_path / "t/fedloge", {1.0: 0.70, 4.0: 0.75}, norm)
    assert bench.collect_method(tmp_path, "t", "fedloge")["fedloge"]["complete"]
    assert not (tmp_path / "t/fedloge.chosen.yaml").exists()


def test_a_stage_runs_as_many_trials_at_once_as_asked(tmp_path, monkeypatch):
    bench = fed_sweep()
    ran = []
    monkeypatch.setattr(bench, "import_kept", lambda *a, **k: None)
    monkeypatch.setattr(bench, "run_child", lambda command, env: ran.append(command) or 0)
    stage = bench.StageSpec("cifar10", "fedloge-lr", 1, tmp_path / "out", tmp_path / "s.yaml", {})
    bench.run_stage(stage, tmp_path / "report.json", jobs=2)
    (command,) = ran
    assert command[command.index("--jobs") + 1] == "2"
    # from the command line to every sweep, FedAvg's first one too
    swept = []
    monkeypatch.setattr(bench, "sweep", lambda s, a, *rest, jobs: swept.append((s, a, jobs)))
    monkeypatch.setattr("sys.argv", ["fed_sweep.py", "--settings", "fmnist-cnn", "--jobs", "2"])
    args = bench.parse_args()
    wanted = [("fmnist-cnn", "fedavg"), ("fmnist-cnn", "fedprox")]
    bench.sweep_all(wanted, {}, tmp_path, tmp_path / "r.json", parallel=1, trials=args.jobs)
    assert swept == [("fmnist-cnn", "fedavg", 2), ("fmnist-cnn", "fedprox", 2)]
    for argv in (["--jobs", "0"], ["--settings", "cifar10", "--algorithms", "fedprox"]):
        monkeypatch.setattr("sys.argv", ["fed_sweep.py", *argv])
        with pytest.raises(SystemExit):
            bench.parse_args()
