"""`trustvision sweep`: the spec's checks, the validation-only choice, and real sweeps of
`trustvision train` on MNIST (grid, a failing trial); resuming after a kill is in
test_sweep_resume.py."""

import fcntl
import hashlib
import json
import re
from pathlib import Path

import optuna
import pytest
import typer
import yaml
from typer.testing import CliRunner

from trustvision.cli import app
from trustvision.clikit import command_options
from trustvision.config import TrainConfig, build_config, load_config, parse_override
from trustvision.errors import ConfigError
from trustvision.sweep.choose import choose_trial
from trustvision.sweep.report import build_report
from trustvision.sweep.runner import run_sweep
from trustvision.sweep.spec import ParamSpec, SweepSpec, is_log_spaced, load_spec
from trustvision.sweep.study import config_digest, prepare_out
from trustvision.sweep.trial import (
    find_run_dir,
    format_override,
    probe_value,
    read_metric,
)

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "configs/train/mnist_cnn.yaml"
TINY = [
    "epochs=1",
    "data.train_subset=512",
    "data.test_subset=500",
    "data.batch_size=64",
    "optim.schedule=constant",
]
# The summary.json paths the sweeps read: one line to change if train's summary changes.
VALIDATION, TEST = "validation.top1", "test.top1"


def spec_tree(**changes):
    tree = {
        "name": "lr",
        "command": "train",
        "config": str(CONFIG),
        "overrides": TINY,
        "params": {"optim.lr": {"grid": [0.01, 0.1]}},
        "objective": {"metric": VALIDATION, "direction": "maximize"},
        "test_metric": TEST,
    }
    return {**tree, **changes}


def write_spec(path, **changes):
    path.write_text(yaml.safe_dump(spec_tree(**changes)))
    return path


def read_json(path):
    return json.loads(Path(path).read_text())


# --- the spec -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"bogus": 1}, "`bogus`"),
        ({"params": {}}, "`params`"),
        ({"params": {"optim.lr": {"grid": [0.1], "low": 0.01, "high": 1}}}, "params.optim.lr"),
        ({"params": {"optim.lr": {"low": 0.1, "high": 0.01}}, "trials": 2}, "params.optim.lr"),
        ({"trials": 3}, "`trials=3`"),
        ({"objective": {"metric": VALIDATION, "direction": "up"}}, "objective.direction"),
        ({"params": {"optim.lr": {"low": 0.01, "high": 1}}}, "`trials`"),
        (
            {"params": {"optim.lr": {"grid": [0.1]}, "optim.momentum": {"low": 0, "high": 1}}},
            "`params.optim.momentum`",
        ),
        ({"params": {"epochs": {"grid": [1, 2]}}}, "`params.epochs`"),  # also in overrides
        ({"overrides": ["epochs"]}, "`epochs`"),
        ({"command": "sweep run"}, "`command`"),
        # a sweep never chooses, nor prunes, on a test number
        ({"objective": {"metric": TEST, "direction": "maximize"}}, "`objective.metric`"),
        ({"objective": {"metric": "selected.generic.generic_acc"}}, "`objective.metric`"),
        ({"prune": {"metric": "test_acc"}}, "`prune.metric`"),
        ({"prune": {"metric": "generic_acc", "step": "round"}}, "`prune.metric`"),
        # "val" inside another word names no validation number
        ({"objective": {"metric": "evaluation.top1"}}, "`objective.metric`"),
        ({"prune": {"metric": "interval_acc"}}, "`prune.metric`"),
    ],
)
def test_bad_spec_names_the_key(tmp_path, changes, key):
    with pytest.raises(ConfigError) as err:
        load_spec(write_spec(tmp_path / "spec.yaml", **changes))
    assert key in str(err.value)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"`config` file `nowhere.yaml`"):
        load_spec(write_spec(tmp_path / "spec.yaml", config="nowhere.yaml"))


def test_grid_trials_default_to_the_grid_size_and_overrides_apply(tmp_path):
    path = write_spec(tmp_path / "spec.yaml", params={"optim.lr": {"grid": [0.01, 0.03, 0.1]}})
    assert load_spec(path).planned_trials == 3
    assert load_spec(path, ["trials=2", "seed=4"]).planned_trials == 2
    assert load_spec(path, ["seed=4"]).seed == 4


def test_unknown_command_lists_the_known_ones():
    root = typer.main.get_command(app)
    assert "resume" in command_options(root, "train") and "resume" in command_options(
        root, "fed run"
    )
    assert "resume" not in command_options(root, "robust mix")
    with pytest.raises(ConfigError, match=r"no sub-command `nope`.*`train`"):
        command_options(root, "nope")
    with pytest.raises(ConfigError, match=r"is a group.*`run`"):
        command_options(root, "fed")


def test_a_different_spec_in_the_same_out_dir_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    prepare_out(build_config(SweepSpec, spec_tree()), out)
    prepare_out(build_config(SweepSpec, spec_tree()), out)  # the same spec: continue
    with pytest.raises(ConfigError, match=r"`seed`.*another `--out`"):
        prepare_out(build_config(SweepSpec, spec_tree(seed=1)), out)


def test_an_edited_config_file_is_refused_on_resume(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.read_text())
    spec = build_config(SweepSpec, spec_tree(config=str(config)))
    prepare_out(spec, out)
    prepare_out(spec, out)  # the file unchanged: continue
    config.write_text("# a comment changes no value\n" + CONFIG.read_text())
    prepare_out(spec, out)
    config.write_text(re.sub(r"(?m)^epochs: .*$", "epochs: 7", CONFIG.read_text()))
    with pytest.raises(ConfigError, match=r"changed since the sweep.*finished trials ran the old"):
        prepare_out(spec, out)


def test_the_config_digest_takes_keys_of_mixed_types(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.read_text() + "extra: {1: a, b: c}\n")
    spec = build_config(SweepSpec, spec_tree(config=str(config)))
    assert len(config_digest(spec)) == 64  # 1 and "b" do not sort together


def test_a_sweep_that_recorded_the_config_files_bytes_continues(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    spec = build_config(SweepSpec, spec_tree())
    prepare_out(spec, out)
    (out / "config.sha256").write_text(hashlib.sha256(CONFIG.read_bytes()).hexdigest() + "\n")
    prepare_out(spec, out)
    (out / "config.sha256").write_text("0" * 64 + "\n")
    with pytest.raises(ConfigError, match=r"changed since the sweep"):
        prepare_out(spec, out)


def test_a_sweep_directory_in_use_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with (out / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a running `sweep run` holds it
        with pytest.raises(ConfigError, match=r"another `trustvision sweep run`"):
            run_sweep(build_config(SweepSpec, spec_tree()), out)


def test_report_of_a_directory_without_a_sweep_says_so(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "report", str(tmp_path)])
    assert result.exit_code == 2 and "is not a sweep directory" in " ".join(result.output.split())


# --- the choice reads validation only -------------------------------------------------------


def test_choice_follows_validation_not_test():
    validation = [0.50, 0.90, 0.70, 0.60]
    test = [0.95, 0.10, 0.50, 0.80]  # anti-correlated: the best test is the worst validation
    assert choose_trial(list(enumerate(validation)), "maximize") == 1
    assert choose_trial(list(enumerate(test)), "maximize") == 0  # what reading test would do
    assert choose_trial(list(enumerate(validation)), "minimize") == 0


def test_choice_ties_go_to_the_lowest_number_and_nan_is_never_chosen():
    assert choose_trial([(3, 0.8), (1, 0.8), (2, 0.5)], "maximize") == 1
    assert choose_trial([(4, 0.2), (2, 0.2), (5, 0.9)], "minimize") == 2
    assert choose_trial([(0, float("nan")), (1, 0.3)], "maximize") == 1
    assert choose_trial([], "maximize") is None


def test_report_chooses_on_validation_with_anti_correlated_test():
    spec = build_config(SweepSpec, spec_tree(params={"optim.lr": {"grid": [0.1, 0.2, 0.3]}}))
    distribution = optuna.distributions.FloatDistribution(0.1, 0.3)
    trials = [
        optuna.trial.create_trial(
            value=val,
            params={"optim.lr": lr},
            distributions={"optim.lr": distribution},
            user_attrs={TEST: test, "run_dir": f"trials/trial-{n}/run"},
        )
        for n, (lr, val, test) in enumerate([(0.1, 0.6, 0.9), (0.2, 0.8, 0.2), (0.3, 0.7, 0.5)])
    ]
    for number, trial in enumerate(trials):
        trial.number = number
    report = build_report(spec, trials, {})
    assert report["chosen"]["number"] == 1 and report["chosen"]["test"] == 0.2
    assert report["selected_by"] == "validation"
    minimize = build_config(
        SweepSpec, spec_tree(objective={"metric": VALIDATION, "direction": "minimize"})
    )
    assert build_report(minimize, trials, {})["chosen"]["number"] == 0


# --- trial helpers --------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0.01, 1e-05, 3, True, "sgd", "1e-3", "a b", None])
def test_overrides_read_back_the_same_value(value):
    key, parsed = parse_override(format_override("optim.lr", value))
    assert key == ["optim", "lr"] and parsed == value and type(parsed) is type(value)


def test_grids_of_rates_are_log_spaced_and_counts_are_not():
    assert is_log_spaced([0.01, 0.03, 0.1]) and is_log_spaced([1e-4, 1e-2])
    assert not is_log_spaced([1, 2, 3, 4]) and not is_log_spaced([0.0, 0.5])


@pytest.mark.parametrize("values", [[1, True], [0, False], [1, 1.0]])
def test_a_grid_of_values_optuna_cannot_tell_apart_is_refused(tmp_path, values):
    with pytest.raises(ConfigError, match="lists a value twice"):
        build_config(SweepSpec, spec_tree(params={"seed": {"grid": values}}))


def test_a_float_range_is_probed_with_a_value_that_is_no_whole_number():
    """An integer setting accepts 16.0, the low, and refuses every trial's 42.34."""
    value = probe_value(ParamSpec(low=16, high=64))
    assert 16 < value < 64 and not float(value).is_integer()
    assert probe_value(ParamSpec.model_validate({"low": 16, "high": 64, "int": True})) == 16
    assert 1e-4 < probe_value(ParamSpec(low=1e-4, high=1.0, log=True)) < 1e-2  # log-spaced


def test_missing_metric_names_the_path_and_the_keys_there():
    summary = {"validation": {"top1": 0.5, "loss": 1.0}, "test": {"top1": 0.4}}
    assert read_metric(summary, VALIDATION, where="summary") == 0.5
    with pytest.raises(ConfigError, match=r"`validation.top5`.*`top1`, `loss`"):
        read_metric(summary, "validation.top5", where="summary")
    with pytest.raises(ConfigError, match=r"`val.top1`.*`validation`, `test`"):
        read_metric(summary, "val.top1", where="summary")
    with pytest.raises(ConfigError, match=r"data\.validation"):
        read_metric({"validation": None}, VALIDATION, where="summary")


def test_run_dir_is_the_one_directory_with_a_config(tmp_path):
    assert find_run_dir(tmp_path) is None
    (tmp_path / "plots").mkdir()
    (tmp_path / "run-a").mkdir()
    (tmp_path / "run-a/config.yaml").write_text("seed: 0\n")
    assert find_run_dir(tmp_path) == tmp_path / "run-a"
    (tmp_path / "run-b").mkdir()
    (tmp_path / "run-b/config.yaml").write_text("seed: 0\n")
    with pytest.raises(ConfigError, match="2 run directories"):
        find_run_dir(tmp_path)


# --- real sweeps of `trustvision train` on MNIST --------------------------------------------


def run_cli(*args):
    result = CliRunner().invoke(app, ["sweep", "run", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory):
    """One real sweep shared by two tests: two good learning rates and one the command rejects."""
    tmp_path = tmp_path_factory.mktemp("grid")
    out = tmp_path / "out"
    spec = write_spec(tmp_path / "spec.yaml", params={"optim.lr": {"grid": [0.01, 0.1, -1]}})
    result = run_cli(spec, "--out", out)
    trials = {t["params"]["optim.lr"]: t for t in read_json(out / "sweep.json")["trials"]}
    return out, trials, result.output


@pytest.mark.slow
def test_grid_sweep_end_to_end(grid_sweep):
    out, by_lr, _ = grid_sweep
    report = read_json(out / "sweep.json")
    assert (out / "study.db").is_file()
    trials = [by_lr[0.01], by_lr[0.1]]
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE"]
    best = max(trials, key=lambda t: t["validation"])
    assert report["chosen"]["number"] == best["number"]
    assert report["selected_by"] == "validation" and report["objective"]["metric"] == VALIDATION
    assert all(t["test"] is not None and t["seconds"] > 0 for t in trials)
    assert "selected_by: validation" in (out / "sweep.md").read_text()
    assert (out / "sweep.png").stat().st_size > 5000
    chosen = load_config(TrainConfig, out / "chosen.yaml")
    assert chosen.optim.lr == best["params"]["optim.lr"] and chosen.runs_dir == "runs"
    assert chosen.epochs == 1  # the fixed overrides are in the chosen config too
    for t in trials:
        assert (out / f"trials/trial-{t['number']}/log.txt").stat().st_size > 0
    # what optuna-dashboard shows: numeric distributions and the test metric beside each trial
    study = optuna.load_study(study_name="lr", storage=f"sqlite:///{out / 'study.db'}")
    for trial in study.trials:
        assert isinstance(trial.distributions["optim.lr"], optuna.distributions.FloatDistribution)
        assert (TEST in trial.user_attrs) == (trial.state == optuna.trial.TrialState.COMPLETE)


@pytest.mark.slow
def test_failing_trial_is_fail_and_the_sweep_chooses_among_the_rest(grid_sweep):
    out, by_lr, output = grid_sweep
    report = read_json(out / "sweep.json")
    assert by_lr[-1]["state"] == "FAIL" and "exited with status 2: " in by_lr[-1]["note"]
    assert "greater than 0" in by_lr[-1]["note"]  # the cause, from the command's error line
    assert by_lr[-1]["validation"] is None
    assert report["trials_done"] == 3 and report["states"] == {"COMPLETE": 2, "FAIL": 1}
    assert report["chosen"]["number"] in {by_lr[0.01]["number"], by_lr[0.1]["number"]}
    assert "optim.lr" in output and "greater than 0" in output  # the failed trial's log tail


def test_a_misspelt_key_stops_the_sweep_before_any_trial(tmp_path):
    """Checked with the command's own `--print-config` at the first value of each key: a typo
    had run (and failed) every trial, and the sweep then exited 0 with nothing chosen."""
    spec = write_spec(tmp_path / "spec.yaml", params={"optim.lrr": {"grid": [0.01, 0.1]}})
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sweep", "run", str(spec), "--out", str(out)])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "refuses the trials' config" in said and "lrr" in said
    assert not (out / "trials").exists()
