"""What the project refuses to do: run code from a data file, log a password, or listen beyond 127.0.0.1.

(The restricted unpickler of the PyPI source is tested in test_download.py, the password redaction of a
tracking URI in test_tracking.py and test_fault_tolerance.py.)
"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, user_env

from stages.core.errors import ConfigError, StageError
from stages.core.io import load_model
from stages.data.npz import load_npz
from stages.tracking import lineage


def test_a_model_that_would_run_code_when_loaded_is_refused(tmp_path):
    import keras

    inputs = keras.Input((28, 28, 1))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)  # pickled Python: arbitrary code on load
    path = tmp_path / "model.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(StageError, match="holds code that would run when loaded"):
        load_model(path)


def test_an_npz_with_pickled_objects_is_refused_unloaded(tmp_path):
    path = tmp_path / "train.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    with pytest.raises(StageError, match=r"corrupt or truncated .*allow_pickle=False"):
        load_npz(path, ("x", "y"), produced_by="preprocess")


SERVER_COMMAND = re.compile(r"\bmlflow[\"',\s]+(server|ui|models[\"',\s]+serve)\b")


def server_commands() -> list[tuple[str, str]]:
    """Every `mlflow server|ui|models serve` the project starts or tells users to run: in shell (continued
    lines joined) up to the end of its line, in Python (an argument list) up to the closing bracket."""
    files = [
        REPO / "README.md",
        REPO / "CONTRIBUTING.md",
        *REPO.glob("docs/*.md"),
        *REPO.glob(".github/workflows/*.yml"),
        *REPO.glob("bench/*.py"),
        *REPO.glob("tests/*.py"),
        *REPO.glob("stages/**/*.py"),
    ]
    found = []
    for path in files:
        if path.name == "test_security.py":
            continue
        text = re.sub(r"\\\n\s*", " ", path.read_text())
        end = "]" if path.suffix == ".py" else "\n"
        for match in SERVER_COMMAND.finditer(text):
            command = text[match.start() : text.find(end, match.start())]
            found.append((f"{path.relative_to(REPO)}: {command[:100]!r}", command))
    return found


def test_every_server_the_project_starts_or_documents_listens_on_127_0_0_1_only():
    commands = server_commands()
    assert len(commands) >= 7  # README (ui, server, models serve) and the tests' servers
    for where, line in commands:
        host = re.search(r"(?:--host|[\s\"']-h)[\s=\"',]+([\w.:]+)", line)
        assert host is None or host.group(1) == "127.0.0.1", where


@pytest.mark.parametrize("command", [["server"], ["ui"], ["models", "serve"]])
def test_mlflow_servers_default_to_127_0_0_1(command):
    """Where no --host is given, MLflow's own default applies: check that it is still local only."""
    shown = subprocess.run(
        ["mlflow", *command, "--help"], capture_output=True, text=True, env=user_env(), check=True
    ).stdout
    assert re.search(r"default:\s+127\.0\.0\.1", shown), shown[:2000]


PASSWORD = "s3cret-pw"
MIRRORS_WITH_CREDENTIALS = [
    f"https://bob:{PASSWORD}@mirror.example.org/mnist/",
    "https://bob@mirror.example.org/mnist/",  # a user name alone is user info too
    f"http://bob:{PASSWORD}@127.0.0.1:9/mnist.npz",
]


@pytest.mark.parametrize("url", MIRRORS_WITH_CREDENTIALS)
def test_a_mirror_url_with_credentials_is_refused_by_name_and_never_printed(tmp_path, url):
    """Refused when params.yaml is validated: exit 2, the key and the fix named, nothing written, and the
    password nowhere in the output (before, it passed and became the run's `data.sources` param)."""
    import yaml

    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"data": {"sources": [{"name": "ours", "format": "idx", "url": url}, "keras"]}})
    )
    before = sorted(tmp_path.rglob("*"))
    done = subprocess.run(
        [sys.executable, "-m", "stages.check_params"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=user_env(PYTHONPATH=str(REPO)),
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "data.sources.0.url:" in done.stderr and "~/.netrc" in done.stderr, done.stderr
    assert PASSWORD not in done.stdout + done.stderr and "bob" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(tmp_path.rglob("*")) == before


NESTED_SECRETS = [
    {"data": {"sources": [{"name": "ours", "format": "idx", "url": f"https://bob:{PASSWORD}@m.org/"}]}},
    {"data": {"sources": str([{"url": f"https://bob:{PASSWORD}@m.org/"}])}},  # a stringified list
    {"a": [[{"b": f"see s3://key:{PASSWORD}@bucket/x"}]]},
    {"data": {"api_token": "abc"}},
]


@pytest.mark.parametrize("values", NESTED_SECRETS)
def test_every_leaf_of_nested_params_is_checked_for_credentials(values):
    with pytest.raises(ConfigError) as refused:
        lineage.check_no_secrets(values)
    assert PASSWORD not in str(refused.value) and "abc" not in str(refused.value)


def test_a_url_that_reaches_the_provenance_or_the_log_has_no_user_info(tmp_path, caplog):
    """Defence in depth, for URLs that skip validation (built by code): a failing mirror's location and
    the error quoting it are recorded without `user:password@`."""
    from stages.data.catalogue import DATASETS
    from stages.data.http import Http
    from stages.data.sources import IdxSource, fetch_dataset

    url = f"http://bob:{PASSWORD}@127.0.0.1:9/mnist/"
    source = IdxSource("ours", url)
    assert source.location == "http://127.0.0.1:9/mnist/"
    with pytest.raises(StageError) as failed:
        fetch_dataset(
            DATASETS["mnist"], [source], Http(connect_timeout_s=1, read_timeout_s=1, retries=0), tmp_path
        )
    assert "127.0.0.1:9" in str(failed.value)
    assert PASSWORD not in str(failed.value) + caplog.text and "bob" not in str(failed.value) + caplog.text
