"""Configs: YAML + overrides into frozen pydantic models; every mistake stops the run up front."""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from trustvision.cli import app
from trustvision.compact.config import CompactConfig
from trustvision.config import TrainConfig, apply_overrides, load_config, parse_yaml
from trustvision.errors import ConfigError
from trustvision.federated.config import FedConfig
from trustvision.robust.config import PipelineConfig, RobustTrainConfig
from trustvision.sweep.spec import load_spec

DEMO = Path(__file__).parents[1] / "configs/train/mnist_cnn.yaml"


def test_overrides_are_typed_and_nested():
    cfg = load_config(TrainConfig, DEMO, ["optim.lr=0.01", "epochs=3", "data.augment.hflip=true"])
    assert cfg.optim.lr == 0.01 and isinstance(cfg.optim.lr, float)
    assert cfg.epochs == 3
    assert cfg.data.augment.hflip is True


@pytest.mark.parametrize(
    ("text", "value"), [("1e-3", 0.001), ("-2E4", -20000.0), ("1.0e3", 1000.0), (".5e1", 5.0)]
)
def test_a_number_with_an_exponent_is_a_float_as_in_yaml_1_2(text, value):
    """PyYAML reads YAML 1.1, where `1e-3` is a string: a sweep grid of them was categorical."""
    assert apply_overrides({}, [f"lr={text}"]) == {"lr": value}
    assert parse_yaml(f"grid: [{text}]", origin="a test") == {"grid": [value]}


def test_overrides_do_not_mutate_their_input():
    tree = {"optim": {"lr": 0.1}}
    apply_overrides(tree, ["optim.lr=0.2"])
    assert tree == {"optim": {"lr": 0.1}}


def test_unknown_key_names_its_path_and_the_known_keys():
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, DEMO, ["optim.lrr=0.1"])
    message = str(err.value)
    assert "`optim.lrr`" in message
    assert "unknown key" in message and "momentum" in message


def test_bad_value_names_its_path_and_reason():
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, DEMO, ["optim.lr=-1", "optim.schedule=linear"])
    message = str(err.value)
    assert "2 problem(s)" in message
    assert "`optim.lr`" in message and "greater than 0" in message
    assert "`optim.schedule`" in message and "cosine" in message


@pytest.mark.parametrize("override", ["epochs", "=3", "epochs.inner=1"])
def test_malformed_overrides_are_refused(override):
    with pytest.raises(ConfigError, match="override"):
        load_config(TrainConfig, DEMO, [override])


def test_an_override_into_a_value_says_how_to_set_its_section():
    """`algorithm=fedprox algorithm.options.mu=0.01`: the first made `algorithm` a name."""
    overrides = ["algorithm=fedprox", "algorithm.options.mu=0.01"]
    with pytest.raises(ConfigError) as err:
        apply_overrides({"algorithm": {"name": "fedloge"}}, overrides)
    message = str(err.value)
    assert "`algorithm` is a value, not a section (`algorithm=fedprox` made it one)" in message
    assert "`algorithm={key: value, ...}`" in message
    with pytest.raises(ConfigError) as err:  # a value of the config's own: no such advice
        apply_overrides({"seed": 0}, ["seed.x=1"])
    assert str(err.value) == "override `seed.x=1`: `seed` is a value, not a section"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (None, "does not exist"),
        ("epochs: [1, 2\n", "not valid YAML"),
        ("- 1\n- 2\n", "mapping"),
        ("data: {batch_size: 5}\nepochs: 2\ndata: {name: cifar10}\n", "key `data` is given twice"),
    ],
)
def test_missing_and_invalid_files(tmp_path, text, said):
    path = tmp_path / "config.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=said):
        load_config(TrainConfig, path)
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(TrainConfig, tmp_path)


def test_an_override_into_a_section_keeps_that_sections_own_defaults():
    """FedConfig's `data` default is CIFAR-10-LT and its `optim` SGD at momentum 0.5: one key
    set there must not rebuild the section from DataConfig's or OptimConfig's defaults."""
    plain = load_config(FedConfig, None)
    cfg = load_config(FedConfig, None, ["data.batch_size=16", "optim.lr=0.01"])
    assert (cfg.data.name, cfg.data.imbalance_factor) == (plain.data.name, 100)
    assert cfg.data.batch_size == 16 and cfg.optim.lr == 0.01
    assert cfg.optim.momentum == plain.optim.momentum == 0.5


@pytest.mark.parametrize("value", ["inf", ".inf", "-.inf", "nan", "1e999"])
def test_a_number_that_is_not_finite_is_refused(value):
    with pytest.raises(ConfigError, match=r"`optim\.lr`: Input should be a finite number"):
        load_config(FedConfig, None, [f"optim.lr={value}"])


def test_configs_are_frozen():
    cfg = load_config(TrainConfig, DEMO)
    with pytest.raises(Exception, match="frozen"):
        cfg.epochs = 5  # type: ignore[misc]


def test_cli_rejects_a_bad_key_before_any_work(tmp_path):
    runs = tmp_path / "runs"
    result = CliRunner().invoke(app, ["train", str(DEMO), "optim.lrr=0.1", f"runs_dir={runs}"])
    assert result.exit_code == 2
    assert "`optim.lrr`" in result.output
    assert not runs.exists()


def shipped_config(path: Path):
    """A config of configs/ loaded as the command of its folder reads it."""
    if path.parent.name == "sweep":
        return load_spec(path)
    if path.parent.name == "robust":  # a pipeline has a `standard` base; else one base's training
        kind = (
            PipelineConfig if "standard" in yaml.safe_load(path.read_text()) else RobustTrainConfig
        )
        return load_config(kind, path)
    kinds = {"train": TrainConfig, "compact": CompactConfig, "fed": FedConfig}
    return load_config(kinds[path.parent.name], path)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml")))
def test_every_shipped_config_validates_as_its_command_reads_it(path):
    assert shipped_config(path).name == yaml.safe_load(path.read_text())["name"]


def test_print_config_shows_every_key_with_overrides_applied():
    result = CliRunner().invoke(app, ["train", "--print-config", "optim.lr=0.2", "epochs=4"])
    assert result.exit_code == 0, result.output
    assert "lr: 0.2" in result.output and "epochs: 4" in result.output
    assert "label_smoothing" in result.output and "crop_padding" in result.output


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("seed=-1", "seed"),
        ("name=../../x", "name"),
        ("name=/tmp/x", "name"),
        ("optim.betas=[2, 3]", "optim.betas"),
    ],
)
def test_values_that_would_crash_later_are_refused_up_front(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(TrainConfig, DEMO, [override])


def test_hostile_yaml_files_are_config_errors(tmp_path):
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(TrainConfig, garbage, [])
    bomb = tmp_path / "bomb.yaml"
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 10)]
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="aliases"):
        load_config(TrainConfig, bomb, [])
    huge = tmp_path / "huge.yaml"
    huge.write_text("name: x\n" + "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="a config is a few kilobytes"):
        load_config(TrainConfig, huge, [])
    with pytest.raises(ConfigError, match="aliases"):
        load_config(TrainConfig, DEMO, ["model.kwargs=[&a 1, *a]"])


def test_models_refuses_zero_classes():
    from typer.testing import CliRunner

    from trustvision.cli import app

    result = CliRunner().invoke(app, ["models", "--num-classes", "0"])
    assert result.exit_code == 2 and "num-classes" in result.output


@pytest.mark.parametrize(
    "override", ["epochs=true", "optim.lr=false", "data.augment.crop_padding=true", "seed=true"]
)
def test_a_boolean_is_never_taken_for_a_number(override):
    with pytest.raises(ConfigError, match=r"is a boolean, not a number"):
        load_config(TrainConfig, None, [override])


def test_booleans_still_set_boolean_settings():
    cfg = load_config(TrainConfig, None, ["amp=false", "data.augment.hflip=true"])
    assert cfg.amp is False and cfg.data.augment.hflip is True


@pytest.mark.parametrize(
    ("args", "said"),
    [
        # brackets in a message are the user's text, not rich markup (which raised MarkupError)
        (["train", "--print-config", "[/foo]=1"], "`[/foo]`: unknown key"),
        (["fed", "run", "--print-config", "algorithm.name=[fedprox]"], "valid string"),
    ],
)
def test_a_bad_value_that_looks_like_markup_or_a_list_is_a_clear_error(args, said):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert said in " ".join(result.output.split())


@pytest.mark.parametrize(
    ("override", "key"),
    [("threads=99999999999999999999", "`threads`"), ("runs_dir=", "`runs_dir`")],
)
def test_a_huge_thread_count_or_an_empty_runs_folder_is_refused(override, key):
    """A typo must not reach torch (a traceback) or write runs into the working directory."""
    with pytest.raises(ConfigError, match=key):
        load_config(TrainConfig, None, [override])


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ("optim.milestones=[0, 3]", r"increasing epochs >= 1"),
        ("optim.milestones=[5, 2]", r"increasing epochs >= 1"),
        ("optim.milestones=[3, 3]", r"increasing epochs >= 1"),
    ],
)
def test_step_milestones_must_be_increasing_epochs(override, said):
    with pytest.raises(ConfigError, match=rf"optim\.milestones.*{said}"):
        load_config(TrainConfig, None, [override])
    assert load_config(TrainConfig, None, ["optim.milestones=[1, 4]"]).optim.milestones == [1, 4]


@pytest.mark.parametrize("value", ["[]", "[0.5, -1]", "[0]", "[3, 2, 1]", "[1, 1]"])
def test_eval_eps_multiples_are_positive_increasing_and_at_least_one(value):
    with pytest.raises(ConfigError, match=r"eval\.eps_multiples"):
        load_config(PipelineConfig, None, [f"eval.eps_multiples={value}"])
