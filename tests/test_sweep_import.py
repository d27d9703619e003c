"""A sweep whose directory is gone continues from the trial records of its earlier report: the
finished trials count and are not run again, the grid's other points run, and an imported
choice says it has no run here."""

import json

import pytest
from test_sweep import read_json, run_cli, write_spec
from typer.testing import CliRunner

from trustvision.cli import app
from trustvision.errors import ConfigError
from trustvision.federated.compare import sweep_choice
from trustvision.sweep.imported import import_trials
from trustvision.sweep.report import write_report
from trustvision.sweep.spec import dump_spec, load_spec
from trustvision.sweep.study import load_study

GRID = {"optim.lr": {"grid": [0.01, 0.03, 0.1]}}


def record(number, lr, state="COMPLETE", validation=0.0, **extra):
    """A trial record as sweep.json writes it, plus what a report added to it (`extra`)."""
    return {
        "number": number,
        "state": state,
        "params": {"optim.lr": lr},
        "validation": validation if state == "COMPLETE" else None,
        "test": 0.25 if state == "COMPLETE" else None,
        "seconds": 12.0,
        "run_dir": f"trials/trial-{number}/lr-old",
        "note": "",
        **extra,
    }


@pytest.mark.slow
def test_imported_trials_count_and_only_the_rest_of_the_grid_runs(tmp_path):
    spec_path = write_spec(tmp_path / "spec.yaml", params=GRID)
    out = tmp_path / "out"
    earlier = [
        record(0, 0.01, numbers={"final": {"acc": 0.5}}),
        record(1, 0.1, state="FAIL"),  # failed there: runs again here
        record(2, 0.03),
    ]
    sweep_json = tmp_path / "old/sweep.json"  # what the lost machine's sweep left
    sweep_json.parent.mkdir()
    sweep_json.write_text(json.dumps({"trials": earlier, "spec": dump_spec(load_spec(spec_path))}))

    result = run_cli(spec_path, "--out", out, "--continue-from", sweep_json)

    report = read_json(out / "sweep.json")
    assert report["trials_done"] == 3 and report["states"] == {"COMPLETE": 3}
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["trial-2"]  # one trial ran
    by_lr = {t["params"]["optim.lr"]: t for t in report["trials"]}
    kept = by_lr[0.01]
    assert kept["run_dir"] is None and (kept["validation"], kept["test"]) == (0.0, 0.25)
    assert "2 finished trial(s) imported" in result.output
    assert kept["imported"] == {
        "from": str(sweep_json),
        "number": 0,
        "numbers": {"final": {"acc": 0.5}},
    }
    assert f"measured earlier (trial 0 of {sweep_json})" in kept["note"]
    ran = by_lr[0.1]
    assert ran["run_dir"].startswith("trials/trial-2/") and "imported" not in ran
    assert report["chosen"]["number"] == ran["number"]  # above the imported 0.0
    assert (out / "chosen.yaml").is_file()
    again = run_cli(spec_path, "--out", out, "--continue-from", sweep_json)  # the same command
    assert "holds the sweep already: continuing it" in again.output
    assert read_json(out / "sweep.json")["trials"] == report["trials"]  # nothing ran again


def test_an_imported_choice_has_no_config_here(tmp_path):
    spec_path = write_spec(tmp_path / "spec.yaml", params=GRID)
    out = tmp_path / "out"
    earlier = [record(n, lr, validation=0.9) for n, lr in enumerate([0.01, 0.03, 0.1])]
    assert import_trials(load_spec(spec_path), out, earlier, source="old/sweep.json") == []

    report = write_report(out)

    assert report["trials_done"] == 3 and report["chosen"]["config"] is None
    assert not (out / "chosen.yaml").exists()
    assert "its run is not here, so there is no chosen.yaml" in (out / "sweep.md").read_text()
    with pytest.raises(ConfigError, match="whose run is not here"):
        sweep_choice(out)  # what `trustvision fed compare SWEEP_DIR` reads
    again = read_json(out / "sweep.json")["trials"]  # imported once more, elsewhere
    import_trials(load_spec(spec_path), tmp_path / "again", again, source="new/sweep.json")
    first = write_report(tmp_path / "again")["trials"][0]
    assert first["imported"] == {"from": "old/sweep.json", "number": 0}
    result = run_cli(spec_path, "--out", out)  # nothing left to run
    assert not (out / "trials").exists()
    assert "chosen config: none here (measured earlier (trial 0 of old/sweep.json)" in " ".join(
        result.output.split()
    )


def test_import_refuses_a_used_directory_and_records_of_another_search(tmp_path):
    spec = load_spec(write_spec(tmp_path / "spec.yaml", params=GRID))
    out = tmp_path / "out"
    import_trials(spec, out, [record(0, 0.01)], source="a")
    with pytest.raises(ConfigError, match="already holds a study"):
        import_trials(spec, out, [record(0, 0.01)], source="a")
    other = {**record(0, 0.01), "params": {"optim.momentum": 0.5}}
    with pytest.raises(ConfigError, match=r"searched \['optim.momentum'\]"):
        import_trials(spec, tmp_path / "new", [other], source="b")
    subset = load_spec(write_spec(tmp_path / "subset.yaml", params=GRID, trials=2))
    with pytest.raises(ConfigError, match="only a whole grid"):
        import_trials(subset, tmp_path / "new", [record(0, 0.01)], source="d")
    with pytest.raises(ConfigError, match="two finished trials of"):
        import_trials(spec, tmp_path / "new", [record(0, 0.01), record(1, 0.01)], source="e")
    ranged = {"optim.lr": {"low": 0.01, "high": 0.1}}
    tpe = load_spec(write_spec(tmp_path / "tpe.yaml", params=ranged, trials=3))
    with pytest.raises(ConfigError, match="does not fit this spec"):
        import_trials(tpe, tmp_path / "new", [record(0, 0.5)], source="f")
    twice = [record(0, 0.05), record(1, 0.05)]  # a sampled search may draw a point twice
    assert import_trials(tpe, tmp_path / "tpe", twice, source="h") == []
    assert len(load_study(tpe, tmp_path / "tpe").trials) == 2
    assert import_trials(spec, tmp_path / "new", [record(0, 0.01, state="FAIL")], source="g") == []
    off_grid = record(0, 0.02)
    with pytest.raises(ConfigError, match="not a point of this spec's grid"):
        import_trials(spec, tmp_path / "new", [off_grid], source="c")
    assert not (tmp_path / "new").exists()  # refused before anything was written


def test_continue_from_refuses_another_search_and_a_file_that_is_no_sweep_json(tmp_path):
    spec_path = write_spec(tmp_path / "spec.yaml", params=GRID)
    other = dump_spec(load_spec(write_spec(tmp_path / "other.yaml")))  # another grid
    ours = dump_spec(load_spec(spec_path))
    sweep_json = tmp_path / "sweep.json"
    busy = tmp_path / "busy"  # a folder of something else
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    for text, out, said in [
        (
            json.dumps({"trials": [record(0, 0.01)], "spec": other}),
            tmp_path / "out",
            "of another search: its `params`",
        ),
        ('{"trials": [', tmp_path / "out", "is not a sweep.json"),
        (
            json.dumps({"trials": [], "spec": ours, "config_sha256": "0" * 64}),
            tmp_path / "out",
            "SHA-256 differs",
        ),
        (
            json.dumps({"trials": [record(0, 0.01)], "spec": ours}),
            busy,
            "is not empty and holds no sweep",
        ),
    ]:
        sweep_json.write_text(text)
        args = ["sweep", "run", str(spec_path), "--out", str(out)]
        result = CliRunner().invoke(app, [*args, "--continue-from", str(sweep_json)])
        assert result.exit_code == 2 and said in " ".join(result.output.split())
        assert not (out / "study.db").exists()
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]


def test_a_search_is_the_same_wherever_its_config_and_data_files_lie():
    from trustvision.sweep.imported import portable

    here = {
        "config": "/work/a/configs/c.yaml",
        "overrides": ["data.source=/work/a/d.zip", "seed=0"],
    }
    there = {"config": "configs/c.yaml", "overrides": ["data.source=/mnt/d.zip", "seed=0"]}
    assert portable(here) == portable(there)
    assert portable(here) != portable({**there, "overrides": ["data.source=/mnt/e.zip", "seed=0"]})
