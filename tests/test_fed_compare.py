"""`trustvision fed compare`: the newest finished run of each algorithm, side by side."""

import json
import re
import shutil

import pytest
import yaml
from fed_tiny import tiny_config
from typer.testing import CliRunner

from trustvision.errors import ConfigError
from trustvision.federated import cli
from trustvision.federated.cli import fed_app
from trustvision.federated.compare import columns, comparison, finished_runs
from trustvision.federated.runner import run_federated
from trustvision.train.recipe import torch_threads


@pytest.fixture(autouse=True)
def single_thread():
    with torch_threads(1):
        yield


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Rich wraps at the test terminal's 80 columns; the assertions read whole cells."""
    monkeypatch.setattr(cli.console, "width", 200)


def tiny(tmp_path, algorithm, *extra):
    return tiny_config(tmp_path, "data.imbalance_factor=10", f"algorithm={algorithm}", *extra)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """FedAvg twice (the later run must win), FedPer once, and an unfinished FedAvg run."""
    root = tmp_path_factory.mktemp("runs")
    older = run_federated(tiny(root, "fedavg", "rounds=1"))
    newer = run_federated(tiny(root, "fedavg"))
    fedper = run_federated(tiny(root, "fedper"))
    unfinished = run_federated(tiny(root, "fedavg", "name=zz-unfinished"), stop_after=1)
    return root, older, newer, fedper, unfinished


def test_a_directory_gives_the_newest_finished_run_of_each_algorithm(runs):
    root, _, newer, fedper, _ = runs

    chosen = finished_runs([root])

    assert {k: v.path for k, v in chosen.items()} == {"fedavg": newer.path, "fedper": fedper.path}
    rows = {row["label"]: row for row in comparison(chosen)}
    assert rows["fedavg"]["generic_acc"] == newer.read_summary()["headline"]["generic_acc"]
    assert rows["fedper"]["generic_acc"] != rows["fedper"]["generic_acc"]  # no generic model: NaN
    assert 0.0 <= rows["fedper"]["local_acc_masked"] <= 1.0


def test_the_command_prints_both_methods_and_writes_the_plots(runs, tmp_path):
    root, older, newer, _, _ = runs

    result = CliRunner().invoke(
        fed_app, ["compare", str(root), str(older.path), "--out", str(tmp_path)]
    )

    assert result.exit_code == 0, result.output
    generic = newer.read_summary()["headline"]["generic_acc"]
    assert f"{100 * generic:.1f}" in result.output
    assert "fedper" in result.output and f"fedavg ({older.path.name})" in result.output
    assert (tmp_path / "accuracy_per_round.png").stat().st_size > 1000
    assert (tmp_path / "per_class_vs_frequency.png").stat().st_size > 1000


def test_an_unfinished_run_or_a_stray_path_is_a_clear_error(runs, tmp_path):
    _, _, _, _, unfinished = runs

    refused = CliRunner().invoke(fed_app, ["compare", str(unfinished.path)])
    stray = CliRunner().invoke(fed_app, ["compare", str(tmp_path / "nowhere")])

    refusal, complaint = " ".join(refused.output.split()), " ".join(stray.output.split())
    assert refused.exit_code == 2 and "has not finished" in refusal and "--resume" in refusal
    assert stray.exit_code == 2 and "neither a run directory" in complaint


def test_a_sweep_directory_gives_its_trial_chosen_on_validation(runs, tmp_path):
    _, older, _, _, _ = runs
    sweep = tmp_path / "sweep"
    trial = sweep / "trials" / "trial-1"
    trial.mkdir(parents=True)
    shutil.copytree(older.path, trial / older.path.name)
    run_dir = f"trials/trial-1/{older.path.name}"
    (sweep / "sweep.json").write_text(json.dumps({"chosen": {"number": 1, "run_dir": run_dir}}))

    chosen = finished_runs([sweep])

    assert [run.path for run in chosen.values()] == [trial / older.path.name]
    (sweep / "sweep.json").write_text(json.dumps({"chosen": None}))
    with pytest.raises(ConfigError, match="no chosen trial"):
        finished_runs([sweep])


def test_a_group_without_images_shows_as_a_dash(runs, tmp_path):
    # summary.json writes a NaN (a frequency group without test images) as null
    _, _, newer, _, _ = runs
    run_dir = tmp_path / newer.path.name
    shutil.copytree(newer.path, run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["headline"]["generic_tail"] = None
    (run_dir / "summary.json").write_text(json.dumps(summary))

    result = CliRunner().invoke(fed_app, ["compare", str(run_dir), "--out", str(tmp_path)])

    assert result.exit_code == 0, result.output
    assert re.search(r"^│ fedavg .*│\s+-\s+│$", result.output, re.MULTILINE)  # the tail column


def test_the_chosen_round_is_shown_with_its_own_validation_accuracy():
    """The second table gives each chosen round's validation accuracy beside its test one,
    not the final round's (0.55 here, which the row also carries in its summary)."""
    from rich.console import Console

    pick = {"round": 5, "generic_val_acc": 0.712, "generic_acc": 0.634}
    local = {"round": 10, "local_val_acc": 0.901, "local_acc": 0.876}
    row = {
        "label": "fedavg",
        "generic_val_acc": 0.55,
        "selected": {"generic": pick, "local": local},
    }
    *_, chosen = cli.comparison_tables([row | dict.fromkeys(columns(), float("nan"))])
    console = Console(width=200, record=True)
    console.print(chosen)
    line = next(ln for ln in console.export_text().splitlines() if "fedavg" in ln)
    cells = line.replace("│", " ").split()
    assert cells == ["fedavg", "71.2", "63.4", "(5)", "90.1", "87.6", "(10)"]


def test_comparison_tables_keep_every_cell_whole_in_80_columns():
    from rich.console import Console

    pick = {"round": 55, "generic_val_acc": 0.712, "generic_acc": 0.634}
    local = {"round": 60, "local_val_acc": 0.901, "local_acc": 0.876}
    row = {"label": "fedloge [gap_cnn]", "selected": {"generic": pick, "local": local}}
    numbers = {k: 0.5 + i / 100 for i, k in enumerate(columns())}
    console = Console(width=80, record=True)
    for table in cli.comparison_tables([row | numbers]):
        console.print(table)
    text = console.export_text()
    assert "…" not in text  # a cell cut short would end in an ellipsis
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "fedloge [gap_cnn]" in text  # the model in brackets is text, not rich markup
    assert "63.4 (55)" in text and "87.6 (60)" in text
    assert all(f"{100 * v:.1f}" in text for v in numbers.values())


def copy_run(run, folder, **config_changes):
    """A copy of `run` under `folder`, its config.yaml's top-level sections updated."""
    target = folder / "run"
    shutil.copytree(run.path, target)
    config = yaml.safe_load((target / "config.yaml").read_text())
    for key, value in config_changes.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    (target / "config.yaml").write_text(yaml.safe_dump(config))
    return target


def test_every_run_once_each_labelled_and_of_one_data_setting(runs, tmp_path):
    _, _, newer, fedper, _ = runs
    a, b, c = (copy_run(fedper, tmp_path / name) for name in "abc")
    chosen = finished_runs([a, b, a, c])  # `a` twice: counted once
    assert {label: run.path for label, run in chosen.items()} == {
        "fedper": a,
        "fedper (run)": b,  # a folder of the same name: the whole path next
        f"fedper ({c})": c,
    }
    gap = copy_run(newer, tmp_path / "gap", model={"name": "gap_cnn", "kwargs": {}})
    assert sorted(finished_runs([newer.path, gap])) == ["fedavg [gap_cnn]", "fedavg [mnist_cnn]"]
    other = copy_run(newer, tmp_path / "other", alpha=5.0)
    with pytest.raises(ConfigError, match=r"another setting .*`alpha` 0.5 vs 5.0"):
        finished_runs([newer.path, other])


def test_an_unfinished_sweeps_choice_so_far_is_refused(runs, tmp_path):
    _, older, _, _, _ = runs
    sweep = tmp_path / "sweep"
    shutil.copytree(older.path, sweep / "trials" / "trial-0" / older.path.name)
    chosen = {"number": 0, "run_dir": f"trials/trial-0/{older.path.name}"}
    report = {"chosen": chosen, "trials_done": 1, "trials_planned": 3}
    (sweep / "sweep.json").write_text(json.dumps(report))
    with pytest.raises(ConfigError, match="finished 1 of its 3 trials"):
        finished_runs([sweep])
