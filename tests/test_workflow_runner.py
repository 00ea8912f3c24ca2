"""The workflow runner keeps GitHub's conventions, so that what passes under it would pass on GitHub."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from workflow_runner import Job, Repository

WORKFLOW = """\
on:
  workflow_dispatch:
    inputs:
      model: {type: string, default: ""}
jobs:
  job:
    runs-on: ubuntu-latest
    env:
      URI: ${{ secrets.URI }}
      DEVICE: ${{ vars.DEVICE || 'gpu' }}
      MODEL: ${{ inputs.model }}
      RUN: ${{ github.run_id }}-${{ github.run_attempt }}
    steps:
      - uses: actions/checkout@v4
      - id: first
        run: |
          echo "FROM_ENV=set by the first step" >> "$GITHUB_ENV"
          mkdir -p "$RUNNER_TEMP/tools" && printf '#!/bin/sh\\necho tool ran\\n' > "$RUNNER_TEMP/tools/tool"
          chmod +x "$RUNNER_TEMP/tools/tool" && echo "$RUNNER_TEMP/tools" >> "$GITHUB_PATH"
          echo "answer=42" >> "$GITHUB_OUTPUT"
          echo "## first" >> "$GITHUB_STEP_SUMMARY"
      - name: second
        env:
          ANSWER: ${{ steps.first.outputs.answer }}
        run: |
          echo "uri=[$URI] device=$DEVICE model=[$MODEL] run=$RUN answer=$ANSWER env=$FROM_ENV"
          tool
      - name: a failing pipe
        run: false | cat
      - name: after a failure
        run: echo should not run
      - name: always
        if: always()
        run: echo cleaning up
"""


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "README").write_text("x\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    for command in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "seed"]):
        subprocess.run([*git, *command], cwd=seed, check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(seed), str(tmp_path / "origin.git")], check=True)
    return tmp_path / "origin.git"


def _job(tmp_path: Path, origin: Path, text: str, **kwargs) -> Job:
    return Job(
        _write(tmp_path, text),
        "job",
        Repository(origin),
        tmp_path / "runner",
        event="workflow_dispatch",
        run_id=7,
        run_attempt=2,
        python_bin=[],
        **kwargs,
    )


def test_steps_share_env_path_outputs_and_summary_and_pipes_fail_only_under_pipefail(tmp_path, origin):
    result = _job(tmp_path, origin, WORKFLOW).run()
    second = result.step("second").log
    assert "uri=[] device=gpu model=[] run=7-2 answer=42 env=set by the first step" in second
    assert "tool ran" in second
    # no `shell:`: GitHub runs `bash -e`, and a pipe's status is its last command's
    assert result.step("a failing pipe").outcome == "success"
    assert result.conclusion == "success" and result.summary == "## first\n"

    strict = WORKFLOW.replace(
        "    runs-on: ubuntu-latest\n",
        "    runs-on: ubuntu-latest\n    defaults:\n      run:\n        shell: bash\n",
    )
    result = _job(tmp_path, origin, strict).run()
    assert result.step("a failing pipe").outcome == "failure" and result.conclusion == "failure"
    assert result.step("after a failure").outcome == "skipped"
    assert result.step("always").outcome == "success"


def test_secrets_vars_and_inputs_are_filled_in(tmp_path, origin):
    job = _job(tmp_path, origin, WORKFLOW, inputs={"model": "mlp"})
    job.repository.secrets["URI"] = "http://server"
    job.repository.variables["DEVICE"] = "cpu"
    log = job.run().step("second").log
    assert "uri=[http://server] device=cpu model=[mlp]" in log
    with pytest.raises(ValueError, match="does not declare"):
        _job(tmp_path, origin, WORKFLOW, inputs={"modle": "mlp"})


def test_what_the_runner_cannot_reproduce_raises(tmp_path, origin):
    unknown_action = WORKFLOW.replace("actions/checkout@v4", "actions/cache@v4")
    with pytest.raises(NotImplementedError, match="actions/cache"):
        _job(tmp_path, origin, unknown_action).run()
    unknown_function = WORKFLOW.replace("if: always()", "if: hashFiles('x') != ''")
    with pytest.raises(ValueError, match="hashFiles"):
        _job(tmp_path, origin, unknown_function).run()


def test_an_artifact_name_is_taken_once_per_run_unless_overwritten(tmp_path, origin):
    upload = WORKFLOW.split("      - id: first")[0] + (
        "      - run: mkdir out && echo x > out/report.md\n"
        "      - uses: actions/upload-artifact@v4\n"
        "        with:\n          name: report\n          path: out/\n"
    )
    repository = Repository(origin)
    for attempt, conclusion in ((1, "success"), (2, "failure")):
        job = Job(
            _write(tmp_path, upload),
            "job",
            repository,
            tmp_path / "runner",
            event="workflow_dispatch",
            run_id=7,
            run_attempt=attempt,
            python_bin=[],
        )
        assert job.run().conclusion == conclusion
    overwrite = upload.replace("name: report\n", "name: report\n          overwrite: true\n")
    job = Job(
        _write(tmp_path, overwrite),
        "job",
        repository,
        tmp_path / "runner",
        event="workflow_dispatch",
        run_id=7,
        run_attempt=3,
        python_bin=[],
    )
    assert job.run().conclusion == "success"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "workflow.yml"
    path.write_text(text)
    return path
