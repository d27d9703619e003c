"""Typed configs: YAML plus `key=value` overrides into frozen pydantic models, checked up front."""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from trustvision.errors import ConfigError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


# A run's seed: numpy's SeedSequence and torch take non-negative integers below 2^63.
Seed = Annotated[int, Field(ge=0, lt=2**63)]
# A run's name becomes the start of its directory name under `runs_dir`: one path component.
RunName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="letters, digits, '.', '_' and '-', starting with a letter or digit",
    ),
]


def _takes_bool(annotation: Any) -> bool:
    """Whether a field's type admits a boolean (bool itself, Any, or a union holding one)."""
    if annotation is bool or annotation is Any:
        return True
    return any(_takes_bool(arg) for arg in get_args(annotation))


class StrictModel(BaseModel):
    """Base of every config: unknown keys are errors and a loaded config never changes."""

    # inf or nan is never a meaningful setting: `optim.lr=inf` would "diverge", `alpha=.inf`
    # would pass a lower bound
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic would read `epochs=true` as 1 epoch: a boolean is never a count or a rate
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and not _takes_bool(field.annotation):
            raise ValueError(
                f"`{str(value).lower()}` is a boolean, not a {_kind(field.annotation)}"
            )
        return value

    @classmethod
    def recorded(cls, saved: Any) -> Self | None:
        """Settings an earlier run recorded, read through this model, so that a setting added
        since (at its default) is no difference; None where they no longer validate."""
        try:
            return cls.model_validate(saved)
        except ValidationError:
            return None


def refuse_moved(data: Any, moved: dict[str, str]) -> Any:
    """Stop a config that still uses a key this version moved, saying where it went."""
    if isinstance(data, dict):
        old = [key for key in moved if key in data]
        if old:
            raise ValueError("; ".join(f"`{key}` {moved[key]}" for key in old))
    return data


def _kind(annotation: Any) -> str:
    names = {int: "number", float: "number", str: "string"}
    return next((names[t] for t in (annotation, *get_args(annotation)) if t in names), "value")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into its key path and a YAML-typed value (`0.1` is a float)."""
    key, sep, raw = text.partition("=")
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)  # one line in messages
    if not sep or not key.strip():
        raise ConfigError(
            f"override `{text}` is not of the form `key=value` (e.g. `optim.lr=0.05`)"
        )
    value = parse_yaml(raw, origin=f"override `{text}`: the value") if raw.strip() else ""
    return [part.strip() for part in key.split(".")], value


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as {"a.b.c": value}, the dotted keys overrides use."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}{key}."))
    return {k.removesuffix("."): v for k, v in flat.items()}


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `tree` with every `key=value` override set (nested keys by dots)."""
    result = _deep_copy(tree)
    set_by: dict[str, str] = {}  # dotted key -> the earlier override that set it
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                message = f"override `{text}`: `{where}` is a value, not a section"
                if where in set_by:  # `algorithm=fedprox algorithm.options.mu=0.01`
                    message += (
                        f" (`{set_by[where]}` made it one): set the section whole in one "
                        f"override instead, `{where}={{key: value, ...}}`"
                    )
                raise ConfigError(message)
            node = child
        node[path[-1]] = value
        set_by[".".join(path)] = text
    return result


def _deep_copy(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in tree.items()}


MAX_CONFIG_BYTES = 1 << 20


class _ConfigLoader(yaml.SafeLoader):
    """safe_load without aliases: a config needs no `*name` references, and nested ones can
    expand into billions of values (an alias bomb) that hang whatever walks the tree."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None,
                None,
                "YAML aliases (*name) are not accepted here",
                self.peek_event().start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        """A key given twice is an error: YAML would keep the last one silently."""
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key `{key}` is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _ConfigDumper(yaml.SafeDumper):
    """safe_dump that quotes every string `_ConfigLoader` would read as something else."""


# YAML 1.1, which PyYAML reads, needs a dot and a signed exponent (`1.0e-3`); YAML 1.2, and
# everyone who writes `lr: 1e-3`, does not: without this resolver `1e-3` would be a string.
# The dumper shares it, so that the string "1e-3" is written quoted and reads back a string.
for _yaml_class in (_ConfigLoader, _ConfigDumper):
    _yaml_class.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
        list("-+0123456789."),
    )


def dump_yaml(data: Any, **options: Any) -> str:
    """YAML text of `data` (safe types only) that `parse_yaml` reads back as `data`."""
    return yaml.dump(data, Dumper=_ConfigDumper, **options)


def parse_yaml(text: str, *, origin: str) -> Any:
    """YAML text as Python values (safe types only, no aliases); a ConfigError names `origin`."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader: safe types only
    except yaml.YAMLError as err:
        raise ConfigError(f"{origin} is not valid YAML: {' '.join(str(err).split())}") from err


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing, binary, huge or malformed file or a non-mapping is a
    ConfigError."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file `{path}` is a folder: give a YAML file in it")
    if not path.is_file():
        raise ConfigError(f"config file `{path}` does not exist")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file `{path}` is {path.stat().st_size:,} bytes: a config is a few "
            f"kilobytes (the limit is {MAX_CONFIG_BYTES:,}); is it the right file?"
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise ConfigError(f"config file `{path}` cannot be read ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file `{path}` is not UTF-8 text ({err.reason} at byte {err.start})"
        ) from None
    tree = parse_yaml(text, origin=f"config file `{path}`")
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config file `{path}` must hold a mapping of keys to values")
    return tree


def build_config(model: type[ConfigT], tree: dict[str, Any], *, origin: str = "config") -> ConfigT:
    """Validate `tree` into `model`; every problem is listed with its field path and reason."""
    try:
        return model.model_validate(tree)
    except ValidationError as err:
        lines = [f"{origin} has {err.error_count()} problem(s):"]
        for problem in err.errors():
            where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
            reason = problem["msg"]
            if problem["type"] == "extra_forbidden":
                known = _known_keys(model, problem["loc"][:-1])
                reason = f"unknown key; known keys here: {', '.join(known)}"
            lines.append(f"  `{where}`: {reason}")
        raise ConfigError("\n".join(lines)) from None


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None or not isinstance(field.annotation, type):
            return []
        current = field.annotation
    return sorted(getattr(current, "model_fields", {}))


def load_config(
    model: type[ConfigT], path: str | Path | None, overrides: list[str] | None = None
) -> ConfigT:
    """Load YAML at `path` (or start from defaults), apply overrides, validate into `model`."""
    tree = read_yaml(path) if path is not None else {}
    tree = with_section_defaults(model, tree, overrides or [])
    tree = apply_overrides(tree, overrides or [])
    return build_config(model, tree, origin=f"config `{path}`" if path else "config")


def with_section_defaults(
    model: type[BaseModel], tree: dict[str, Any], overrides: list[str]
) -> dict[str, Any]:
    """`tree` with each section an override goes into, and `tree` lacks, given the values its
    field's default sets (FedConfig's `data` names CIFAR-10-LT): else `data.batch_size=16`
    would build `data` from DataConfig's own defaults and silently swap the data set."""
    result = _deep_copy(tree)
    for text in overrides:
        path, _ = parse_override(text)
        node, current = result, model
        for part in path[:-1]:
            field = getattr(current, "model_fields", {}).get(part)
            default = None if field is None else field.default
            if not isinstance(default, BaseModel) or not isinstance(node.get(part, {}), dict):
                break
            if part not in node:
                node[part] = default.model_dump(mode="json", exclude_unset=True)
            node, current = node[part], type(default)
    return result


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML, every default written out."""
    return dump_yaml(config.model_dump(mode="json"), sort_keys=False)


# The sections every training command shares. Systems (federated, compact, robust) embed them.


class AugmentConfig(StrictModel):
    """Which augmentations a training batch gets; all off by default."""

    crop_padding: int = Field(
        default=0, ge=0, description="zero padding (pixels) before a random crop"
    )
    hflip: bool = Field(default=False, description="mirror half the samples left-right")
    rotation: float = Field(default=0.0, ge=0, le=180, description="max rotation, degrees")
    zoom: float = Field(
        default=0.0, ge=0, lt=1, description="scale drawn from [1 - zoom, 1 + zoom]"
    )
    translate: float = Field(default=0.0, ge=0, lt=1, description="max shift, fraction of the size")
    brightness: float = Field(
        default=0.0, ge=0, le=1, description="max brightness shift, pixel units"
    )


class DataConfig(StrictModel):
    """Which data set, which part of it, and how batches are made."""

    name: str = "mnist"
    source: str | None = None  # a local file or folder to read the data set from (`--from`)
    image_size: int | None = Field(default=None, gt=0)  # image folders: resize to this square
    train_subset: int | None = Field(default=None, gt=0)  # a seeded random subset of train
    test_subset: int | None = Field(default=None, gt=0)  # the first N test images
    # The fraction of the (long-tailed) training images held out for validation: stratified
    # by class, drawn from the run's seed, never trained on. Every choice (a constant, a
    # mixing weight, the reported round) is made on it; the test set gives the final number.
    # A federation holds out this fraction of each client's own images.
    validation: float = Field(default=0.1, ge=0, lt=1)
    imbalance_factor: float | None = Field(default=None, ge=1)  # long-tailed train set (Cao et al.)
    batch_size: int = Field(default=128, gt=0)
    eval_batch_size: int = Field(default=1000, gt=0)
    augment: AugmentConfig = AugmentConfig()


class ModelConfig(StrictModel):
    """An architecture from the model registry and its keyword arguments."""

    name: str = "mnist_cnn"
    kwargs: dict[str, Any] = {}


class OptimConfig(StrictModel):
    """Optimiser, learning-rate schedule and loss settings."""

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(default=5e-4, ge=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.9,
        0.999,
    )
    schedule: Literal["constant", "cosine", "warmup_cosine", "step", "onecycle"] = "onecycle"
    warmup_fraction: float = Field(default=0.2, ge=0, lt=1)  # of all steps: onecycle, warmup_cosine
    milestones: list[int] = []  # epochs at which `step` multiplies the lr by `gamma`
    gamma: float = Field(default=0.1, gt=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    grad_clip: float | None = Field(default=None, gt=0)  # max global gradient norm

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, milestones: list[int]) -> list[int]:
        """A milestone below 1 would decay the rate before the first epoch, a repeated one
        twice at once."""
        if any(m < 1 for m in milestones) or any(b <= a for a, b in pairwise(milestones)):
            raise ValueError(f"`milestones` must be increasing epochs >= 1, got {milestones}")
        return milestones


class TrackingConfig(StrictModel):
    """Where a run is mirrored in MLflow (tracking.py). Off for every command with the
    environment variable TRUSTVISION_TRACKING=off."""

    enabled: bool = True
    # None: $MLFLOW_TRACKING_URI, else a SQLite file in `runs_dir` (sqlite:///RUNS_DIR/mlflow.db)
    uri: str | None = None
    experiment: str | None = None  # None: the command's system (train, fed, compact, robust)

    @field_validator("uri")
    @classmethod
    def _no_password(cls, uri: str | None) -> str | None:
        if uri is not None and "@" in uri.partition("://")[2].partition("/")[0]:
            raise ValueError(
                "holds a user name or password, which config.yaml and the run's MLflow params "
                "would keep: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead"
            )
        return uri


class RunSettings(StrictModel):
    """Where and how any command runs: the settings every system's config starts with."""

    experiment: ClassVar[str] = "train"  # the MLflow experiment of this kind of run

    seed: Seed = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # torch CPU threads; None: torch's choice (the bound keeps a typo from reaching torch)
    threads: int | None = Field(default=None, ge=1, le=4096)
    runs_dir: str = Field(default="runs", min_length=1)  # empty would write into the cwd
    tracking: TrackingConfig = TrackingConfig()


class TrainConfig(RunSettings):
    """`trustvision train`: centralised training of one model on one data set."""

    name: RunName = "train"
    epochs: int = Field(default=2, gt=0)
    amp: bool = True  # bfloat16 autocast, on CUDA only
    channels_last: bool = True  # on every device: docs/results/memory-format.md
    checkpoint_every: int = Field(default=1, gt=0)  # epochs
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
