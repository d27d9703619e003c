"""What every training command's line interface does the same way: overrides without a file,
`--print-config`, `--resume` with its own config only, and a missing config named."""

import re
import shlex

import click
import pytest
import typer
import yaml
from typer.testing import CliRunner

from trustvision.cli import app

RUNNER = CliRunner()


def said(result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


# (command words, an override of that command's config, whether it needs a CONFIG)
COMMANDS = [
    (["train"], "epochs=3", False),
    (["robust", "train"], "epochs=3", True),
    (["compact", "train"], "dual.epochs=3", True),
    (["fed", "run"], "rounds=3", True),
]


@pytest.mark.parametrize(("words", "override", "_"), COMMANDS)
def test_print_config_takes_overrides_without_a_file(words, override, _):
    result = RUNNER.invoke(app, [*words, override, "--print-config"])
    assert result.exit_code == 0, result.output
    key, value = override.split("=")
    tree = yaml.safe_load(result.output)
    for part in key.split("."):
        tree = tree[part]
    assert tree == int(value)


@pytest.mark.parametrize(("words", "override", "_"), COMMANDS)
def test_resume_refuses_a_config_or_overrides_the_same_way(tmp_path, words, override, _):
    result = RUNNER.invoke(app, [*words, override, "--resume", str(tmp_path)])
    assert result.exit_code == 2
    assert "`--resume` continues a run with its own config.yaml" in said(result)


@pytest.mark.parametrize("words", [w for w, _, needs in COMMANDS if needs])
def test_a_training_command_without_config_says_where_to_find_one(words):
    # (`trustvision train` alone runs its documented defaults: MNIST, 2 epochs)
    result = RUNNER.invoke(app, words)
    assert result.exit_code == 2
    assert f"give a CONFIG file or `key=value` overrides (see configs/{words[0]}/)" in said(result)


def test_resume_of_a_directory_that_is_no_run_is_a_clear_error(tmp_path):
    for words, _, _ in COMMANDS:
        result = RUNNER.invoke(app, [*words, "--resume", str(tmp_path)])
        assert result.exit_code == 2
        assert "is not a run directory: it has no config.yaml" in said(result)


@pytest.mark.parametrize(("words", "override", "_"), COMMANDS)
def test_a_runs_dir_that_cannot_be_made_is_an_environment_failure(words, override, _):
    result = RUNNER.invoke(app, [*words, override, "runs_dir=/proc/trustvision-runs"])
    assert result.exit_code == 3, result.output
    message = said(result)
    assert "error: creating a run directory under `runs_dir=/proc/trustvision-runs`" in message
    assert "No such file or directory" in message and "Traceback" not in result.output


def test_an_error_naming_a_long_path_is_one_unbroken_line(tmp_path):
    """A path a user copies out of an error must not be cut by the terminal width."""
    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * 6)
    result = RUNNER.invoke(app, ["train", "--resume", str(deep)])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: ") and str(deep) in line


@pytest.mark.parametrize("words", [["train"], ["robust", "train"], ["fed", "run"]])
def test_checkpoint_without_resume_is_refused(words):
    result = RUNNER.invoke(app, [*words, "epochs=1", "--checkpoint", "epoch-0001"])
    assert result.exit_code == 2
    assert "`--checkpoint` chooses where `--resume RUN_DIR` starts: give both" in said(result)


def every_command(group: click.Group, words: list[str]):
    """(words, command) for every sub-command under `group`, depth first."""
    for name, command in group.commands.items():
        yield [*words, name], command
        if isinstance(command, click.Group):
            yield from every_command(command, [*words, name])


def test_help_prints_every_bracket_its_source_has():
    """Rich reads `[word]` in a help text as markup and drops it, which once printed `--out`'s
    help as "Where the plots go ." (its default in brackets was gone); every bracketed fragment
    of a command's or an option's help must reach `--help`."""
    runner = CliRunner(env={"COLUMNS": "4000"})
    checked = 0
    for words, command in every_command(typer.main.get_command(app), []):
        texts = [command.help or "", *(getattr(p, "help", None) or "" for p in command.params)]
        fragments = [m for text in texts for m in re.findall(r"\[[^\]\[]+\]", text)]
        if not fragments:
            continue
        shown = said(runner.invoke(app, [*words, "--help"]))
        for fragment in fragments:
            checked += 1
            assert " ".join(fragment.split()) in shown, f"{' '.join(words)}: {fragment} lost"
    assert checked >= 2  # fed compare's --out and the compact overrides' `rows=[full]`


def test_every_overrides_example_in_a_help_is_accepted_by_its_command():
    """`robust mix --help` once showed `attack.eps=0.3 epochs=2`, keys only `robust train` has
    (an example is a shell command line: quoted words are one argument)."""
    checked = 0
    for words, command in every_command(typer.main.get_command(app), []):
        helps = [getattr(p, "help", None) or "" for p in command.params if p.name == "overrides"]
        examples = [re.findall(r"`([^`]*)`", t)[-1].replace("\\[", "[") for t in helps if "=" in t]
        for example in examples:
            if "--print-config" not in [o for p in command.params for o in p.opts]:
                continue
            result = RUNNER.invoke(app, [*words, *shlex.split(example), "--print-config"])
            assert result.exit_code == 0, f"{' '.join(words)} {example}: {result.output}"
            checked += 1
    assert checked >= 8


def test_robust_demo_keeps_its_default_config_when_given_only_overrides():
    result = RUNNER.invoke(app, ["robust", "demo", "eval.subset=50", "--print-config"])
    assert result.exit_code == 0, result.output
    tree = yaml.safe_load(result.output)
    assert tree["name"] == "robust-demo-mnist" and tree["eval"]["subset"] == 50
