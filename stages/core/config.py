"""The one validated view of `params.yaml` that every stage reads.

Every section is strict: an unknown key is an error that names the key, a close match and the allowed
keys, because a silently ignored typo (`epoch: 50`) is the worst kind of irreproducibility.
Settings about *where* (tracking server, credentials, caches) are not here: they come from the
environment so that they never invalidate DVC's cache.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from stages.core.errors import ConfigError, has_userinfo, scrub
from stages.data.catalogue import builtin_source_names

PARAMS_FILE = Path("params.yaml")
CREDENTIALS_IN_URL = "credentials_in_url"  # the error type whose value is never shown

DatasetName = Literal["mnist", "fashion_mnist"]
# Kept here rather than imported from stages.training.presets so that validating params never imports Keras;
# tests/test_models.py checks the two lists agree.
PresetName = Literal["mlp", "mlp_dropout", "cnn", "cnn_deep", "cnn_fashion", "fast_cnn", "best_cnn"]
OptimizerName = Literal["rmsprop", "adam", "adamw", "sgd", "adadelta", "adagrad"]
ScheduleName = Literal["constant", "cosine", "one_cycle", "plateau"]


class _Section(BaseModel):
    """Base for every params section: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class MirrorSource(_Section):
    """A mirror the user adds: a URL or a local path, in one of the two containers we can decode."""

    name: str = Field(min_length=1)
    format: Literal["npz", "idx"]
    url: str = Field(
        min_length=1,
        description="For `npz`: the file. For `idx`: the folder holding the four gzip'd IDX files. "
        "http(s):// URL or a local path.",
    )

    @field_validator("url")
    @classmethod
    def _no_credentials(cls, url: str) -> str:
        if has_userinfo(url):
            # a custom error type: describe_errors never quotes the value, which holds the password
            raise PydanticCustomError(
                CREDENTIALS_IN_URL,
                "the URL holds a user name or password, which would be logged to MLflow and written to "
                "the provenance file; remove it and put the credentials in ~/.netrc (requests reads it) "
                "or the environment, never in params.yaml",
            )
        return url


class DataConfig(_Section):
    """Which dataset to fetch, and from where, in which order."""

    dataset: DatasetName = "mnist"
    sources: list[str | MirrorSource] | None = Field(
        default=None,
        description="Sources tried in order: built-in names or mirrors; null = the dataset's default chain.",
    )
    local_dir: str | None = Field(
        default=None, description="Folder with the IDX files or mnist.npz, used by the `local` source."
    )
    connect_timeout_s: Annotated[float, Field(gt=0, le=120)] = 5.0
    read_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    retries: Annotated[int, Field(ge=0, le=10)] = 2

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, sources: list | None, info: ValidationInfo) -> list | None:
        if sources is None:
            return None
        if not sources:
            raise ValueError("the list is empty: list at least one source, or use null for the defaults")
        dataset = info.data.get("dataset")  # absent when the dataset itself is invalid (reported there)
        if dataset is not None:
            allowed = builtin_source_names(dataset)
            for entry in sources:
                if isinstance(entry, str) and entry not in allowed:
                    raise ValueError(
                        f"unknown source {entry!r} for dataset {dataset!r}; "
                        f"built-in sources: {', '.join(allowed)} (or a mirror: {{name, format, url}})"
                    )
        return sources


class PreprocessConfig(_Section):
    """How the raw arrays become train / validation / test splits."""

    val_size: Annotated[int | float, Field(ge=0)] = Field(
        default=5000,
        description="Validation images held out of the training set: a count (>= 1), a fraction (< 1), or 0.",
    )
    limit: Annotated[int, Field(ge=10)] | None = Field(
        default=None, description="Keep a stratified subset of this many training images (quick runs)."
    )

    @model_validator(mode="after")
    def _val_size_is_count_or_fraction(self) -> PreprocessConfig:
        if self.val_size >= 1 and self.val_size != int(self.val_size):
            raise ValueError(f"val_size {self.val_size} must be a whole count (>= 1) or a fraction (< 1)")
        return self


class TrainConfig(_Section):
    """A model preset, and overrides of its training settings (null = the preset's own)."""

    model: PresetName = "fast_cnn"
    optimizer: OptimizerName | None = None
    learning_rate: Annotated[float, Field(gt=0, le=10)] | None = None
    epochs: Annotated[int, Field(ge=1, le=1000)] | None = None
    batch_size: Annotated[int, Field(ge=1, le=65536)] | None = None
    schedule: ScheduleName | None = None
    early_stopping_patience: Annotated[int, Field(ge=1)] | None = None
    mixed_precision: bool = False
    registered_model: str = Field(default="mnist-classifier", min_length=1, pattern=r"^[A-Za-z0-9][\w.\-]*$")


class EvaluateConfig(_Section):
    """What the evaluation shows besides the metrics."""

    misclassified_examples: Annotated[int, Field(ge=0, le=400)] = 36


class ReportConfig(_Section):
    """What the report compares the run with."""

    compare_runs: Annotated[int, Field(ge=0, le=200)] = 10  # earlier runs of the experiment in its table


class PromoteConfig(_Section):
    """When a new model version becomes the `champion` (see stages/cli/promote.py)."""

    alias: str = Field(default="champion", min_length=1, pattern=r"^[A-Za-z][\w\-]*$")
    # the paired test's p-value must be below this (stages/evaluation/paired.py)
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.05
    margin: Annotated[float, Field(ge=0, lt=1)] = 0.0  # test accuracy it must beat the champion's by


class FloatRange(_Section):
    """A float drawn between low and high, on a log scale if asked (a learning rate)."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False


class IntRange(_Section):
    """A whole number from low to high (both included), every `step`, or on a log scale."""

    type: Literal["int"]
    low: int
    high: int
    step: Annotated[int, Field(ge=1)] = 1
    log: bool = False


class Choice(_Section):
    """One of a list of values (a preset, a schedule, a batch size)."""

    type: Literal["categorical"]
    choices: list[str | int | float | bool | None] = Field(min_length=1)


Dimension = Annotated[FloatRange | IntRange | Choice, Field(discriminator="type")]
TUNABLE_SECTIONS = ("train",)  # what a trial may vary: how the model is made, never the data
# Sections a trial may not vary because they change the images a trial is scored on (the validation split).
DATA_SECTIONS = ("seed", "data", "preprocess")
NOT_TUNABLE = {"train.registered_model"}  # a name in MLflow, not a setting of the training


class PrunerConfig(_Section):
    """When a trial whose validation accuracy trails the median of the earlier trials' is stopped."""

    startup_trials: Annotated[int, Field(ge=0)] = 2  # trials that finish before any is pruned
    min_epochs: Annotated[int, Field(ge=1)] = 2  # epochs every trial trains before it can be pruned


class TuneConfig(_Section):
    """The search `mnist-tune` runs (stages/cli/tune.py): each trial a DVC experiment with `-S` values
    drawn from `space`. No stage reads this section, so no setting here reruns a training."""

    study: str = Field(default="mnist-search", pattern=r"^[A-Za-z0-9][\w\-]*$")
    trials: Annotated[int, Field(ge=1, le=10000)] = 20  # in all, across every worker of the study
    seed: Annotated[int, Field(ge=0, lt=2**31)] = 0  # the sampler's
    metric: Literal["val_accuracy", "val_loss"] = "val_accuracy"  # never a test figure
    direction: Literal["maximize", "minimize"] = "maximize"
    pruner: PrunerConfig | None = PrunerConfig()  # null: every trial trains all its epochs
    space: dict[str, Dimension] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _direction_fits_metric(self) -> TuneConfig:
        wanted = "maximize" if self.metric == "val_accuracy" else "minimize"
        if self.direction != wanted:
            raise ValueError(f"direction {self.direction!r} with metric {self.metric!r}: use {wanted!r}")
        return self

    @field_validator("space")
    @classmethod
    def _space_is_params(cls, space: dict[str, Any]) -> dict[str, Any]:
        problems = [
            problem for key, dimension in space.items() for problem in _dimension_problems(key, dimension)
        ]
        if problems:
            raise ValueError("\n      ".join(problems))
        return space


class Params(_Section):
    """The whole of params.yaml."""

    seed: Annotated[int, Field(ge=0, lt=2**31)] = 42
    data: DataConfig = DataConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    report: ReportConfig = ReportConfig()
    promote: PromoteConfig = PromoteConfig()
    tune: TuneConfig = TuneConfig()


def tunable_sections() -> dict[str, type[_Section]]:
    """The sections a trial may vary, by name."""
    return {name: Params.model_fields[name].annotation for name in TUNABLE_SECTIONS}


def _dimension_problems(key: str, dimension: FloatRange | IntRange | Choice) -> list[str]:
    """What is wrong with one dimension of the space, each naming its key: a key that is no param, an empty
    range, or a value the param itself would refuse (checked at both ends and inside the range)."""
    section_name, _, name = key.partition(".")
    sections = tunable_sections()
    if section_name in DATA_SECTIONS:
        return [
            f"{key!r} changes the data or the validation split: trials would be scored on different images "
            "and could not be compared. Vary train.<key> only; set the data in params.yaml itself"
        ]
    if section_name not in sections or not name:
        return [f"{key!r} is not a param a trial may vary: use train.<key>"]
    section = sections[section_name]
    if name not in section.model_fields or key in NOT_TUNABLE:
        allowed = [
            f"{section_name}.{field}"
            for field in section.model_fields
            if f"{section_name}.{field}" not in NOT_TUNABLE
        ]
        hint = difflib.get_close_matches(key, allowed, n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        return [f"{key!r} is not a param a trial may vary{did_you_mean}; allowed: {', '.join(allowed)}"]
    if isinstance(dimension, Choice):
        if len(set(map(repr, dimension.choices))) != len(dimension.choices):
            return [f"{key}: the choices repeat a value"]
        samples = list(dimension.choices)
    else:
        if dimension.low >= dimension.high:
            return [f"{key}: the range is empty (low {dimension.low} must be below high {dimension.high})"]
        if dimension.log and dimension.low <= 0:
            return [f"{key}: a log scale needs low > 0 (got {dimension.low})"]
        if isinstance(dimension, IntRange) and dimension.log and dimension.step != 1:
            return [f"{key}: a log scale takes no step"]
        samples = [dimension.low, dimension.high]
        if isinstance(dimension, FloatRange):  # a float range on a whole-number param fails here
            samples.append(dimension.low + (dimension.high - dimension.low) / math.pi)
    for value in samples:
        try:
            section.model_validate({name: value})
        except ValidationError as exc:
            reason = "; ".join(line.partition(": ")[2] for line in describe_errors(exc, section))
            return [f"{key}: {value!r} is not a valid value: {reason}"]
    return []


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; raise ConfigError with every problem spelled out."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} not found: run the stage from the repository root") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping of sections (seed, data, ...), got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "\n".join(f"  - {line}" for line in describe_errors(exc, Params))
        raise ConfigError(f"{path} is invalid:\n{problems}\nFix the value(s) above and rerun.") from exc


def describe_errors(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    """One readable line per bad key, naming its path (`data.retries`) and what is allowed there."""
    by_key: dict[str, list[str]] = {}
    errors = exc.errors()
    located = [_locate(root, err["loc"]) for err in errors]
    keys = [".".join(path) or "(top level)" for path, _ in located]
    for err, key, (path, section) in zip(errors, keys, located, strict=True):
        if err["type"] == "string_type" and any(other.startswith(f"{key}.") for other in keys):
            continue  # a union's other branch (a mirror entry) says what is wrong inside it
        if err["type"] == "extra_forbidden" and path:
            allowed = list(section.model_fields) if section else []
            by_lower = {name.lower(): name for name in allowed}
            hint = [by_lower[path[-1].lower()]] if path[-1].lower() in by_lower else []
            hint = hint or difflib.get_close_matches(path[-1], allowed, n=1)
            did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
            message = f"unknown key.{did_you_mean} Allowed here: {', '.join(allowed)}"
        else:
            secret = err["type"] == CREDENTIALS_IN_URL
            shown = "input" in err and not isinstance(err["input"], dict) and not secret
            got = f" (got {scrub(repr(err['input']))})" if shown else ""
            message = err["msg"].removeprefix("Value error, ") + got
        by_key.setdefault(key, []).append(message)  # a union (int | float) fails once per member
    return [f"{key}: {'; or: '.join(messages)}" for key, messages in by_key.items()]


def _locate(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[str], type[BaseModel] | None]:
    """The key path a pydantic error location stands for in params.yaml, and the section (model) whose key
    its last part is. Walks the schema itself: a location also holds the names of the union members tried
    (`int`, `MirrorSource`, a tag such as `float`), which are no keys; a user's key may look like one."""
    path: list[str] = []
    annotation: Any = root
    section: type[BaseModel] | None = None
    parts = list(loc)
    while parts:
        annotation = _unwrapped(annotation)
        members = [a for a in get_args(annotation) if a is not type(None)] if _is_union(annotation) else []
        if len(members) > 1:  # pydantic names the member it tried: no key
            annotation = _member_named(members, str(parts.pop(0)))
            continue
        if members:
            annotation = members[0]
            continue
        part = parts.pop(0)
        path.append(str(part))
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            section = annotation
            field = annotation.model_fields.get(str(part))
            annotation = field.annotation if field else None
        elif get_origin(annotation) is dict:
            section, annotation = None, get_args(annotation)[1]
        elif get_origin(annotation) in (list, tuple):
            section, annotation = None, (get_args(annotation) or (None,))[0]
        else:
            section, annotation = None, None
    return path, section


def _unwrapped(annotation: Any) -> Any:
    """`Annotated[int, Field(...)]` -> int."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, UnionType)


def _member_named(members: list[Any], name: str) -> Any:
    """The union member pydantic names `name`: a class by its name, a builtin type (`int`), or a tagged
    member by its `type` tag (`float` for FloatRange). Other names (`function-after[...]`): the first."""
    for member in map(_unwrapped, members):
        if getattr(member, "__name__", None) == name:
            return member
        tagged = isinstance(member, type) and issubclass(member, BaseModel) and "type" in member.model_fields
        if tagged and name in get_args(member.model_fields["type"].annotation):
            return member
    return _unwrapped(members[0])
