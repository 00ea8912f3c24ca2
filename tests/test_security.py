"""What the project refuses to do: run code from a data file, log a password, or listen beyond 127.0.0.1.

(The restricted unpickler of the PyPI source is tested in test_download.py, the password redaction of a
tracking URI in test_tracking.py and test_fault_tolerance.py.)
"""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
from conftest import REPO, user_env

from stages.core.errors import StageError
from stages.core.io import load_model
from stages.data.npz import load_npz


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
    files = [REPO / "README.md", REPO / "CONTRIBUTING.md", *REPO.glob("docs/*.md"),
             *REPO.glob(".github/workflows/*.yml"), *REPO.glob("bench/*.py"), *REPO.glob("tests/*.py"),
             *REPO.glob("stages/**/*.py")]  # fmt: skip
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
    shown = subprocess.run(["mlflow", *command, "--help"], capture_output=True, text=True, env=user_env(),
                           check=True).stdout  # fmt: skip
    assert re.search(r"default:\s+127\.0\.0\.1", shown), shown[:2000]
