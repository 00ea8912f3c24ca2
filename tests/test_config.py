"""params.yaml validation: every mistake is named by its key path, with what is allowed, before any work."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run

from stages.core.config import Params, load_params
from stages.core.errors import ConfigError


def write_params(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def error_for(tmp_path: Path, params: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        load_params(write_params(tmp_path, params))
    return str(caught.value)


def test_repository_params_are_valid_and_complete():
    params = load_params(REPO / "params.yaml")
    assert params.data.dataset == "mnist"
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    # every field of the schema is spelled out in params.yaml, so users see every knob
    assert set(raw) == set(Params.model_fields)
    for section in ("data", "preprocess"):
        assert set(raw[section]) == set(type(getattr(params, section)).model_fields)


def test_empty_file_gives_the_defaults(tmp_path):
    (tmp_path / "params.yaml").write_text("")
    assert load_params(tmp_path / "params.yaml") == Params()


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"dta": {}}, "dta: unknown key. Did you mean 'data'? Allowed here: seed, data, preprocess"),
        (
            {"data": {"datset": "mnist"}},
            "data.datset: unknown key. Did you mean 'dataset'? Allowed here: dataset,",
        ),
        (
            {"data": {"sources": [{"name": "m", "format": "idx", "uri": "x"}]}},
            "data.sources.0.uri: unknown key. Did you mean 'url'? Allowed here: name, format, url",
        ),
        ({"preprocess": {"limt": 100}}, "preprocess.limt: unknown key. Did you mean 'limit'?"),
    ],
)
def test_unknown_keys_are_named_with_the_allowed_ones(tmp_path, params, expected):
    assert expected in error_for(tmp_path, params)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            {"data": {"dataset": "cifar10"}},
            "data.dataset: Input should be 'mnist' or 'fashion_mnist' (got 'cifar10')",
        ),
        ({"data": {"retries": "many"}}, "data.retries: Input should be a valid integer"),
        ({"data": {"retries": -1}}, "data.retries: Input should be greater than or equal to 0 (got -1)"),
        ({"data": {"connect_timeout_s": 0}}, "data.connect_timeout_s: Input should be greater than 0"),
        ({"data": {"sources": []}}, "data.sources: the list is empty"),
        (
            {"data": {"sources": ["pypi", "nope"]}},
            "unknown source 'nope' for dataset 'mnist'; built-in sources: keras,",
        ),
        (
            {"data": {"dataset": "fashion_mnist", "sources": ["pypi"]}},
            "unknown source 'pypi' for dataset 'fashion_mnist'; built-in sources: keras, zalando, debian",
        ),
        (
            {"data": {"sources": [{"name": "m", "format": "tar", "url": "x"}]}},
            "data.sources.0.format: Input should be",
        ),
        ({"preprocess": {"val_size": -5}}, "preprocess.val_size: Input should be greater than or equal to 0"),
        (
            {"preprocess": {"val_size": 5000.5}},
            "val_size 5000.5 must be a whole count (>= 1) or a fraction (< 1)",
        ),
        ({"preprocess": {"limit": 0}}, "preprocess.limit: Input should be greater than or equal to 10"),
        ({"seed": "abc"}, "seed: Input should be a valid integer"),
    ],
)
def test_bad_values_name_the_key_and_the_expectation(tmp_path, params, expected):
    assert expected in error_for(tmp_path, params)


def test_several_errors_are_all_reported(tmp_path):
    message = error_for(tmp_path, {"seed": -1, "data": {"retries": 99}, "preprocess": {"limt": 1}})
    assert "seed:" in message and "data.retries:" in message and "preprocess.limt:" in message


def test_yaml_that_is_not_a_mapping_or_not_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_params(path)
    path.write_text("data: {dataset: mnist\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_params(path)


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="not found: run the stage from the repository root"):
        load_params(tmp_path / "params.yaml")


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".git" not in p.parts
    }


@pytest.mark.parametrize("stage", ["download", "preprocess"])
def test_stage_refuses_bad_params_before_any_work(tmp_path, stage):
    """Run as dvc would: exit code 2, the key in the message, and not one file created or changed."""
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "mnist.npz").write_bytes(b"earlier output")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "data.json").write_text("{}")
    write_params(tmp_path, {"data": {"dataset": "mnist", "retries": "x"}, "preprocess": {"val_size": 10}})
    before = tree_digest(tmp_path)
    result = run(
        [sys.executable, "-m", f"stages.{stage}"], tmp_path, check=False, env={"PYTHONPATH": str(REPO)}
    )
    assert result.returncode == 2, result.stderr
    assert "error: params.yaml is invalid:" in result.stderr
    assert "data.retries: Input should be a valid integer" in result.stderr
    assert "Traceback" not in result.stderr
    assert tree_digest(tmp_path) == before
