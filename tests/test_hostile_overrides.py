"""Hostile configs and overrides drawn by hypothesis, through the config loader and the real
command line: each is a valid config or one ConfigError, exit 0 or 2, never a traceback; and
no help text names a config that does not exist (issue 18; tally in hostile_tally.py)."""

from pathlib import Path

from hostile_tally import TALLY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from trustvision.cli import app
from trustvision.config import TrainConfig, load_config
from trustvision.errors import ConfigError

ROOT = Path(__file__).parents[1]
RUNNER = CliRunner(env={"COLUMNS": "4000"})

KEYS = sorted(
    [
        "seed", "epochs", "device", "threads", "name", "amp", "checkpoint_every",
        "optim.lr", "optim.name", "optim.betas", "optim.momentum", "optim.weight_decay",
        "optim.schedule", "optim.grad_clip", "data.batch_size", "data.validation",
        "data.train_subset", "data.augment.crop_padding", "data.augment.hflip", "model.kwargs",
    ]
)  # fmt: skip
VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "false", "null", "~", "[]", "{}", "[1, 2]", "{a: 1}", "'x'", ".nan", "-.inf", "1e999"]),
    st.text(max_size=12),
)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=4))
def test_any_override_is_a_valid_config_or_one_config_error(pairs):
    TALLY["tried"] += 1
    overrides = [f"{key}={value}" for key, value in pairs]
    try:
        cfg = load_config(TrainConfig, None, overrides)
    except ConfigError as err:
        assert "\n" not in str(err).split(":", 1)[0]  # the first line names what is wrong
        return
    except Exception as err:  # anything else is a traceback a user would see
        TALLY["tracebacks"] += 1
        raise AssertionError(f"{overrides}: {err!r}") from err
    assert cfg.seed >= 0 and cfg.epochs >= 1 and 0 <= cfg.data.validation < 1


# A command line cannot carry a NUL byte (execve refuses one), so the CLI draws none.
ARGV_VALUES = VALUES.filter(lambda value: "\x00" not in value)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KEYS), ARGV_VALUES), min_size=1, max_size=3))
def test_any_override_on_the_command_line_exits_0_or_2_without_a_traceback(pairs):
    TALLY["tried"] += 1
    result = RUNNER.invoke(app, ["train", *[f"{k}={v}" for k, v in pairs], "--print-config"])
    if not isinstance(result.exception, SystemExit | None) or "Traceback" in result.output:
        TALLY["tracebacks"] += 1
    assert result.exit_code in (0, 2), result.output
    assert isinstance(result.exception, SystemExit | None), repr(result.exception)


def test_every_config_named_in_a_help_text_exists():
    TALLY["tried"] += 1
    checked = 0
    for words in (["train"], ["robust", "train"], ["compact", "train"], ["fed", "run"]):
        text = RUNNER.invoke(app, [*words, "--help"]).output
        for name in {w.strip(".,;:`()") for w in text.split() if w.startswith("configs/")}:
            if name.endswith(".yaml"):
                checked += 1
                assert (ROOT / name).is_file(), f"`{' '.join(words)} --help` names {name}"
    assert checked >= 4  # every command's help names an example config
