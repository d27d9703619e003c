"""`trustvision report`: a self-contained HTML page of runs, a comparison and a sweep, checked
as text and rendered in a real browser (headless Chromium)."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import fed_tiny
import pytest
from typer.testing import CliRunner

from trustvision.cli import app
from trustvision.config import build_config
from trustvision.sweep.report import write_report
from trustvision.sweep.runner import run_sweep
from trustvision.sweep.spec import SweepSpec

ROOT = Path(__file__).parents[1]
RUNNER = CliRunner()

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fed_runs(tmp_path_factory) -> Path:
    """`make demo`'s federated comparison in small: FedAvg and FedLoGe in one folder."""
    runs = tmp_path_factory.mktemp("report") / "demo-fed"
    for algorithm in ("fedavg", "fedloge"):
        args = fed_tiny.tiny_args(runs, f"algorithm.name={algorithm}", "eval_every=1")
        result = RUNNER.invoke(app, ["fed", "run", *args])
        assert result.exit_code == 0, result.output
    return runs


def external_references(html: str) -> list[str]:
    """Every src/href that would make the browser fetch something over the network."""
    return re.findall(r'(?:src|href)="((?:https?:)?//[^"]*)"', html)


def test_a_comparison_page_holds_every_run_its_numbers_and_figures(fed_runs, tmp_path):
    out = tmp_path / "fed [red].html"
    result = RUNNER.invoke(app, ["report", str(fed_runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"report: {out}\n" in result.output  # as written (not markup), on one line
    html = out.read_text()
    assert external_references(html) == []
    assert html.count('<img src="data:image/png;base64,') == len(
        list(fed_runs.glob("*/plots/*.png"))
    )
    assert '<h2 id="comparison">Comparison</h2>' in html
    for run in sorted(fed_runs.iterdir()):
        if run.is_dir():
            summary = json.loads((run / "summary.json").read_text())
            assert run.name in html and f"{100 * summary['headline']['generic_acc']:.2f}%" in html
            assert f'href="{os.path.relpath(run, tmp_path)}"' in html  # links to the run
    assert "algorithm:" in html and "machine" in html  # config and machine


def test_a_sweep_page_links_every_trial_to_its_run(tmp_path, monkeypatch):
    spec = build_config(
        SweepSpec,
        {
            "name": "lr",
            "command": "train",
            "config": str(ROOT / "configs/train/mnist_cnn.yaml"),
            "overrides": ["epochs=1", "data.train_subset=256", "data.test_subset=100"],
            "params": {"optim.lr": {"grid": [0.01, 0.1]}},
            "objective": {"metric": "validation.top1", "direction": "maximize"},
        },
    )
    run_sweep(spec, tmp_path / "sweep")
    write_report(tmp_path / "sweep")  # sweep.json, as `trustvision sweep run` writes it
    out = tmp_path / "sweep.html"
    assert RUNNER.invoke(app, ["report", str(tmp_path / "sweep"), "--out", str(out)]).exit_code == 0
    html = out.read_text()
    trials = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["trials"]
    for trial in trials:  # a link from the page's folder to the trial's run directory
        href = f"./sweep/{trial['run_dir']}"
        assert f'href="{href}"' in html and (tmp_path / href / "summary.json").is_file()
    assert "optim.lr=0.01" in html and "optim.lr=0.1" in html and "chosen trial" in html
    assert external_references(html) == []


@pytest.mark.parametrize("summary", ['{"status": "fini', '{"environment": null}', "[1, 2]"])
def test_a_damaged_summary_is_one_line_naming_the_run(tmp_path, summary):
    run = tmp_path / "r1"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "summary.json").write_text(summary)
    wide = CliRunner(env={"COLUMNS": "4000"})  # a line the terminal does not wrap
    result = wide.invoke(app, ["report", str(run), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0
    assert f"`{run.resolve()}` holds a damaged summary.json" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_folder_without_runs_is_a_clear_error(tmp_path):
    result = RUNNER.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "holds no run directory" in " ".join(result.output.split())


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI must render the report: scripts/setup.sh installs chromium")
        pytest.skip("no chromium on this machine (scripts/setup.sh installs it as root)")
    return found


def test_the_comparison_renders_in_headless_chromium(fed_runs, tmp_path):
    browser = chromium()
    out = tmp_path / "fed.html"
    assert RUNNER.invoke(app, ["report", str(fed_runs), "--out", str(out)]).exit_code == 0
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", out.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    body = re.search(r'<body data-images-total="(\d+)" data-images-loaded="(\d+)"', dom)
    assert body is not None, dom[:500]
    total, loaded = map(int, body.groups())
    assert total == len(list(fed_runs.glob("*/plots/*.png"))) > 0 and loaded == total
    assert "Comparison" in dom and "generic accuracy" in dom
    shot = tmp_path / "fed.png"
    subprocess.run(
        [browser, *flags, "--window-size=1280,2000", f"--screenshot={shot}", out.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_a_folder_named_like_a_url_scheme_links_as_a_path():
    """Escaping keeps a folder's name from breaking the markup, not from being read as a URL
    scheme: `javascript:...` as a link's start would run when clicked."""
    from trustvision.report.html import local_link

    out = Path("/reports")
    assert local_link(out / "javascript:alert(1)" / "run", out) == "./javascript%3Aalert%281%29/run"
    assert local_link(out / "exp #2?x=1", out) == "./exp%20%232%3Fx%3D1"  # not a fragment, a query
    assert local_link(out / "runs" / "a", out) == "./runs/a"
    assert local_link(Path("/elsewhere/b"), out) == "../elsewhere/b"
