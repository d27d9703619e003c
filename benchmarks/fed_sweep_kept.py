"""The committed report of benchmarks/fed_sweep.py standing in for sweep runs that are gone (a
new machine, a cleaned runs folder): a complete sweep is reported from it and its chosen config
rebuilt from its spec; an unfinished one continues from the trials it kept (imported into the
stage's new study, `trustvision.sweep.imported`), running only the grid's other points."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import ROOT, in_settings_order, read_results
from fed_sweep_choice import rebuild_choice
from fed_sweep_specs import FOLLOW_UP, follow_up_name, method_of

from trustvision.errors import ConfigError
from trustvision.sweep.imported import check_same_search, import_trials
from trustvision.sweep.spec import load_spec
from trustvision.sweep.study import STUDY_FILE


def search_finished(reports: dict[str, dict[str, Any]], algorithm: str) -> bool:
    """Whether a method's sweeps (by name) are all complete and its follow-up has run: only a
    finished search is a choice, since benchmarks/fed_compare.py reports what it finds as
    tuned."""
    names = [algorithm] + ([follow_up_name(algorithm)] if algorithm in FOLLOW_UP else [])
    return all(name in reports and reports[name].get("complete", True) for name in names)


def kept_results(path: Path) -> dict[str, dict[str, Any]]:
    """The sweeps an earlier report holds, by setting and name (none if there is no report)."""
    body = read_results(
        path,
        "fed_sweep.py",
        check=lambda body: dict(body["results"]),
        or_else=", or delete it to sweep every method again",
    )
    return {} if body is None else dict(body["results"])


def only_kept(kept: dict[str, dict[str, Any]], runs: Path, setting: str, algorithm: str) -> bool:
    """Whether a method's sweeps (its follow-up's too) are in the earlier report, complete, and
    their runs are gone: it is reported from there, not swept again (delete the report to redo
    it). An unfinished one is swept again, from the trials it kept (`import_kept`)."""
    names = [algorithm] + ([follow_up_name(algorithm)] if algorithm in FOLLOW_UP else [])
    block = kept.get(setting, {})  # reports from before `complete` held finished sweeps only
    done = all(name in block and block[name].get("complete", True) for name in names)
    if done and not (runs / setting / algorithm).exists():
        print(f"{setting} {algorithm}: kept from the earlier report (its runs are gone)")
        return True
    return False


def with_kept(
    results: dict[str, dict[str, Any]], kept: dict[str, dict[str, Any]], runs: Path
) -> dict[str, dict[str, Any]]:
    """`results` plus every sweep of the earlier report whose runs are gone (a new machine, a
    cleaned runs folder), marked `earlier`, so that a report never loses a sweep, settings in
    the order of FED_SETTINGS; the compared choice of such a method, if its sweep was complete,
    is rebuilt from its spec for benchmarks/fed_compare.py (an unfinished one continues from
    its kept trials, `import_kept`)."""
    merged = {setting: dict(block) for setting, block in results.items()}
    for setting, block in kept.items():
        for name, report in block.items():
            if name in merged.get(setting, {}):
                continue
            merged.setdefault(setting, {})[name] = {**report, "earlier": True}
            if (
                report.get("final")
                and search_finished(block, method_of(name))
                and not (runs / setting / f"{method_of(name)}.chosen.yaml").is_file()
            ):
                rebuild_choice(runs / setting, setting, name, report)
    return in_settings_order(merged)


def import_kept(
    earlier: Path,
    setting: str,
    name: str,
    *,
    stage: int,
    out: Path,
    spec_path: Path,
    fixed: dict[str, Any],
) -> None:
    """Begin a stage whose runs are gone with the finished trials the report kept of it, so
    that only the grid's other points run. Kept trials of another search (the sweep held a
    different value fixed: FedAvg's rate, say, chosen again since; another grid, objective or
    overrides; a config whose values changed since) are not imported: the stage is swept from
    its start. A report without `searches` (before 2026-11-29's) recorded only the value held
    fixed; a damaged `searches` entry is an error (restore the report)."""
    report = kept_results(earlier).get(setting, {}).get(name)
    if (out / STUDY_FILE).exists() or report is None:
        return
    trials = [t for t in report["trials"] if t.get("stage") == stage]
    if not any(t["state"] == "COMPLETE" for t in trials):
        return
    if (report.get("fixed") or {}) != fixed:
        print(
            f"{setting} {name} stage {stage}: kept trials held {report.get('fixed')}, not "
            f"{fixed}: swept from its start"
        )
        return
    source = str(earlier.relative_to(ROOT) if earlier.is_relative_to(ROOT) else earlier)
    searches = report.get("searches") or {}
    searched = searches.get(str(stage)) if isinstance(searches, dict) else searches
    if searched is not None and not (
        isinstance(searched, dict) and isinstance(searched.get("spec"), dict)
    ):
        raise ConfigError(
            f"`{earlier}`: {setting} {name}'s `searches` entry of stage {stage} is damaged "
            f"({searched!r:.80}): restore it (`git checkout -- {earlier}`)"
        )
    try:
        spec = load_spec(spec_path)
        if searched is not None:
            check_same_search(spec, searched["spec"], searched.get("config_sha256"), source=source)
        queued = import_trials(spec, out, trials, source=f"{source}, stage {stage}")
    except ConfigError as err:  # refused before anything was written
        print(f"{setting} {name} stage {stage}: {err}: swept from its start")
        return
    finished = sum(t["state"] == "COMPLETE" for t in trials)
    print(
        f"{setting} {name} stage {stage}: {finished} trials kept from {source}, "
        f"{len(queued)} to run"
    )
