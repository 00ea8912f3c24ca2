"""Property-based: any invalid mutation of a valid params.yaml is refused, naming the key, and under
`dvc repro` it exits non-zero with every output of every stage exactly as it was."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, pipeline_run_once, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stages.core.config import load_params
from stages.core.errors import ConfigError

VALID = yaml.safe_load((REPO / "params.yaml").read_text())

# Each leaf of the schema: its kind and, for numbers, the allowed closed range (None = unbounded).
INTS = {
    "seed": (0, 2**31 - 1),
    "data.retries": (0, 10),
    "preprocess.limit": (10, None),
    "train.epochs": (1, 1000),
    "train.batch_size": (1, 65536),
    "train.early_stopping_patience": (1, None),
    "evaluate.misclassified_examples": (0, 400),
    "report.compare_runs": (0, 200),
}
FLOATS = {  # (lowest allowed or excluded bound, whether it is excluded, highest allowed)
    "data.connect_timeout_s": (0, True, 120),
    "data.read_timeout_s": (0, True, 600),
    "train.learning_rate": (0, True, 10),
    "promote.margin": (0, False, 1 - 1e-12),
    "promote.alpha": (0, True, 1 - 1e-12),
}
CHOICES = {
    "data.dataset": ("mnist", "fashion_mnist"),
    "train.model": ("mlp", "mlp_dropout", "cnn", "cnn_deep", "cnn_fashion", "fast_cnn", "best_cnn"),
    "train.optimizer": ("rmsprop", "adam", "adamw", "sgd", "adadelta", "adagrad"),
    "train.schedule": ("constant", "cosine", "one_cycle", "plateau"),
}
STRINGS = ("data.local_dir", "train.registered_model", "promote.alias")
SECTIONS = [key for key, value in VALID.items() if isinstance(value, dict)]

words = st.from_regex(r"[a-z][a-z_]{0,12}", fullmatch=True)
containers = st.one_of(st.lists(st.integers(), min_size=1, max_size=3), st.dictionaries(words, st.integers()))


def _not_a_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return True
    return False


letters = words.filter(_not_a_number)  # "nan" and "inf" parse as floats, and are checked as ranges
# Keys as a user might type them: capitals, digits, dots, dashes, spaces, any script (not only a-z).
any_key = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12)
# Sections below the top level whose keys are fixed too: the pruner, and one dimension of each kind.
NESTED = [
    ("tune", "pruner"),
    ("tune", "space", "train.learning_rate"),
    ("tune", "space", "train.batch_size"),
    ("tune", "space", "train.epochs"),
]


def with_value(key: str, value: Any) -> dict:
    params = yaml.safe_load(yaml.safe_dump(VALID))
    *sections, leaf = key.split(".")
    target = params
    for section in sections:
        target = target[section]
    target[leaf] = value
    return params


@st.composite
def invalid_params(draw) -> tuple[dict, str]:
    """A valid params.yaml with one mistake, and the key path the error must name."""
    kinds = ["unknown key", "wrong type", "out of range", "unknown choice", "no sources"]
    kind = draw(st.sampled_from(kinds))
    if kind == "unknown key":  # any spelling (case, digits, punctuation, letters of any script), any section
        params = yaml.safe_load(yaml.safe_dump(VALID))
        path = draw(st.sampled_from([(), *((section,) for section in SECTIONS), *NESTED]))
        target = params
        for part in path:
            target = target[part]
        key = draw(any_key.filter(lambda name: name not in target))
        target[key] = draw(st.one_of(st.integers(0, 9), letters, containers))
        return params, ".".join((*path, key))
    if kind == "wrong type":
        key = draw(st.sampled_from([*INTS, *FLOATS, *CHOICES, *STRINGS, "train.mixed_precision"]))
        if key in STRINGS or key in CHOICES:
            value = draw(st.one_of(st.integers(), containers))
        elif key == "train.mixed_precision":  # 0/1 and "yes"/"off" are legitimate booleans in YAML land
            value = draw(st.one_of(st.integers(min_value=2), containers))
        else:
            value = draw(st.one_of(letters, containers))
        return with_value(key, value), key
    if kind == "out of range":
        key = draw(st.sampled_from([*INTS, *FLOATS]))
        if key in INTS:
            low, high = INTS[key]
            below = st.one_of(st.just(low - 1), st.integers(max_value=low - 1))  # the edge, and beyond
            above = st.one_of(st.just(high + 1), st.integers(min_value=high + 1)) if high else st.nothing()
            value = draw(st.one_of(below, above))
        else:
            low, excluded, high = FLOATS[key]
            edge = low if excluded else math.nextafter(low, -math.inf)
            below = st.one_of(st.just(edge), st.floats(max_value=edge, allow_nan=False))
            value = draw(st.one_of(below, st.floats(min_value=high + 1e-6, allow_nan=False)))
        return with_value(key, value), key
    if kind == "unknown choice":
        key = draw(st.sampled_from(list(CHOICES)))
        return with_value(key, draw(words.filter(lambda name: name not in CHOICES[key]))), key
    return with_value("data.sources", []), "data.sources"


@pytest.fixture(scope="module")
def params_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("params") / "params.yaml"  # rewritten by every example


@settings(max_examples=400, deadline=None)
@given(invalid_params())
def test_every_invalid_mutation_is_refused_naming_its_key(params_file, case):
    params, key = case
    path = params_file
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    assert f"  - {key}: " in str(caught.value)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(list(INTS)).flatmap(
        lambda key: st.tuples(st.just(key), st.integers(INTS[key][0], INTS[key][1] or 10**9))
    )
)
def test_valid_values_are_accepted(params_file, case):
    """The other side of the property: the strategies' bounds are the schema's, not stricter."""
    key, value = case
    path = params_file
    path.write_text(yaml.safe_dump(with_value(key, value)), encoding="utf-8")
    load_params(path)


# ------------------------------------------------------------------------------- through `dvc repro`


def outputs_digest(repo: Path) -> dict[str, str]:
    """Every file a stage wrote (data/, metrics/) and dvc.lock, by content."""
    files = [repo / "dvc.lock", *(repo / "data").rglob("*"), *(repo / "metrics").rglob("*")]
    return {
        str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()
    }


@pytest.fixture(scope="module")
def pipeline_done(tmp_path_factory) -> Path:
    """A copy whose whole pipeline ran (a small real run): every stage has outputs to lose."""
    return pipeline_run_once(tmp_path_factory.mktemp("fuzz") / "repo")


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(invalid_params().filter(lambda case: not case[1].startswith("data.dataset")))
def test_dvc_repro_with_an_invalid_params_file_changes_no_output(pipeline_done, case):
    """(`data.dataset` is left out: dvc.yaml interpolates it into paths, so DVC itself refuses a
    non-scalar there, before any stage, with its own message.)"""
    params, key = case
    original = (pipeline_done / "params.yaml").read_text()
    before = outputs_digest(pipeline_done)
    try:
        (pipeline_done / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        result = run(["dvc", "repro"], pipeline_done, check=False)
    finally:
        (pipeline_done / "params.yaml").write_text(original)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"  - {key}: " in output and "Traceback" not in output
    assert "Running stage 'check_params'" in output and "Running stage 'download'" not in output
    assert outputs_digest(pipeline_done) == before
