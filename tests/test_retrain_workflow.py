"""The scheduled retraining, executed: `.github/workflows/retrain.yml`'s own steps, run in order by
`workflow_runner` as GitHub's runner runs them, against a team's real stack (tests/services.py: `mlflow
server` with basic auth on PostgreSQL and S3, a DVC remote on the same S3), on small params.

The scenarios follow one repository through its weeks, in order: the first scheduled run, a re-run of it
(which does what a run with nothing changed does), the tracking server down, a dispatch with a worse
preset, a change merged into main whose run loses the server before it promotes, and that run's re-run.
A job is shared by the tests that check it: the jobs, not the checks, take the time. Only the device is
stood in for, as the workflow documents: the repository variable RETRAIN_DEVICE=cpu installs no CUDA
libraries and lets the job train on the CPU.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from conftest import ALL_STAGES, REPO, SMALL, copy_repository, free_port, ran_stages, run, set_params
from services import bucket_keys, team_server
from workflow_runner import Job, JobResult, Repository, warm_runner_python

pytestmark = pytest.mark.slow

WORKFLOW = REPO / ".github" / "workflows" / "retrain.yml"
MODEL = "mnist-classifier"
PREFLIGHT = "Check the tracking server and the device before any work"
RETRAIN = "Retrain what changed"
PROMOTE = "Promote if the paired test says it beats the champion"
PROPOSE = "Propose dvc.lock and metrics/ to main"
WORSE_PRESET = "cnn_deep"  # Adagrad at Keras 2.2's rate: barely learns in two epochs of 500 images


class GitHub:
    """One repository on a team's stack, and the runs of its retraining workflow."""

    def __init__(self, root: Path, server, password: str):
        self.root, self.server = root, server
        seed = copy_repository(root / "seed")
        set_params(seed, **SMALL)
        run(["dvc", "remote", "add", "-d", "storage", "s3://dvc/retrain"], seed)
        run(["dvc", "remote", "modify", "storage", "endpointurl", server.s3.endpoint], seed)
        self._commit(seed, "Small params and the team's remote")
        run(["git", "branch", "-M", "main"], seed)
        self.origin = root / "origin.git"
        run(["git", "clone", "-q", "--bare", str(seed), str(self.origin)], root)
        secrets = {
            "MLFLOW_TRACKING_URI": server.url,
            "MLFLOW_TRACKING_USERNAME": "retrain-bot",
            "MLFLOW_TRACKING_PASSWORD": password,
            "DVC_REMOTE_ACCESS_KEY_ID": server.s3.env["AWS_ACCESS_KEY_ID"],
            "DVC_REMOTE_SECRET_ACCESS_KEY": server.s3.env["AWS_SECRET_ACCESS_KEY"],
        }
        self.repository = Repository(self.origin, secrets, {"RETRAIN_DEVICE": "cpu"})
        self.python = warm_runner_python(root)
        self.durations: dict[str, float] = {}

    @staticmethod
    def _commit(repo: Path, message: str) -> None:
        run(["git", "add", "-A"], repo)
        run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", message], repo)

    def retrain(
        self, label: str, *, run_id: int, attempt: int = 1, inputs=None, secrets=None, before_step=None
    ) -> JobResult:
        repository = replace(self.repository, secrets=self.repository.secrets | (secrets or {}))
        job = Job(
            WORKFLOW,
            "retrain",
            repository,
            self.root / f"runner-{label}",
            event="workflow_dispatch" if inputs else "schedule",
            inputs=inputs,
            run_id=run_id,
            run_attempt=attempt,
            python_bin=self.python,
            before_step=before_step,
        )
        result = job.run()
        (self.root / f"runner-{label}.log").write_text(f"{result.log}\n--- job summary\n{result.summary}")
        self.durations[label] = result.seconds
        print(f"{label}: {result.conclusion} in {result.seconds:.0f} s")
        return result

    def change_main(self, work: Path, message: str, *, merge_proposal: bool = False, **params: dict) -> None:
        """What a teammate does in a clone: merge the open proposal if asked, edit params, push to main."""
        run(["git", "clone", "-q", str(self.origin), str(work)], work.parent)
        if merge_proposal:
            run(["git", "merge", "-q", "--ff-only", "origin/retrain"], work)
        set_params(work, **params)
        self._commit(work, message)
        run(["git", "push", "-q", "origin", "main"], work)

    def branch(self, name: str) -> str | None:
        found = run(["git", "rev-parse", "-q", "--verify", f"refs/heads/{name}"], self.origin, check=False)
        return found.stdout.strip() or None

    def _get(self, endpoint: str, **params: str) -> dict:
        """The tracking server's REST API, as its admin."""
        answer = requests.get(
            f"{self.server.url}/api/2.0/mlflow/{endpoint}", auth=self.server.admin, params=params, timeout=30
        )
        answer.raise_for_status()
        return answer.json()

    def versions(self) -> list[dict]:
        return self._get("model-versions/search", filter=f"name='{MODEL}'").get("model_versions", [])

    def champion(self) -> str:
        return self._get("registered-models/alias", name=MODEL, alias="champion")["model_version"]["version"]

    def run_tags(self, run_id: str) -> dict[str, str]:
        tags = self._get("runs/get", run_id=run_id)["run"]["data"]["tags"]
        return {tag["key"]: tag["value"] for tag in tags}

    def remote(self) -> list[str]:
        return sorted(bucket_keys(self.server, "dvc"))

    def state(self) -> tuple:
        """What a run may change on the team's side: model versions, champion, remote, proposal."""
        return len(self.versions()), self.champion(), self.remote(), self.branch("retrain")


def _server_gone_before(step_name: str):
    """A `before_step` hook: from that step on, the tracking server no longer answers."""

    def hook(step: str, env: dict[str, str]) -> None:
        if step == step_name:
            env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{free_port()}"

    return hook


def _assert_green(result: JobResult) -> None:
    assert result.conclusion == "success", result.log[-6000:]


@pytest.fixture(scope="module")
def github(tmp_path_factory):
    root = tmp_path_factory.mktemp("github")
    with team_server(root / "services") as server:
        password = server.add_user("retrain-bot")
        hub = GitHub(root, server, password)
        yield hub
        print("scenario durations (s):", {label: round(s) for label, s in hub.durations.items()})


@pytest.fixture(scope="module")
def first(github):
    return github.retrain("first", run_id=1001)


def test_the_first_scheduled_run_trains_pushes_registers_promotes_and_proposes(github, first):
    _assert_green(first)
    assert ran_stages(first.step(RETRAIN).log) == ALL_STAGES
    remote = github.remote()
    assert any(key.startswith("retrain/files/md5/") for key in remote)
    assert any(key.startswith("retrain/runs/") for key in remote), "the run cache was not pushed"

    versions = github.versions()
    assert len(versions) == 1 and github.champion() == versions[0]["version"]
    tags = github.run_tags(versions[0]["run_id"])
    main = run(["git", "rev-parse", "main"], github.origin).stdout.strip()
    assert tags["git.commit"] == main
    assert tags["git.dirty"] == "false", tags.get("git.changed_files")  # dvc.lock, metrics/ are outputs

    proposal = github.branch("retrain")
    assert proposal and run(["git", "rev-parse", f"{proposal}^"], github.origin).stdout.strip() == main
    changed = run(["git", "diff", "--name-only", main, proposal], github.origin).stdout.split()
    assert "dvc.lock" in changed
    assert all(name == "dvc.lock" or name.startswith("metrics/") for name in changed), changed

    summary = first.summary
    assert "## Metrics against main" in summary and "| metrics/eval.json" in summary
    assert "fast_cnn on mnist" in summary  # the report
    assert "promoted: version 1" in summary and "Proposed on branch retrain" in summary
    assert ("1001", "report-1001") in github.repository.artifacts


def test_a_rerun_of_the_first_run_like_a_run_with_nothing_changed_trains_and_registers_nothing(github, first):
    """A re-run checks out the same commit as a next scheduled run with nothing changed would: it trains,
    registers, pushes and proposes nothing, and its report replaces the first attempt's."""
    before = github.state()
    result = github.retrain("re-run", run_id=1001, attempt=2)
    _assert_green(result)
    assert ran_stages(result.step(RETRAIN).log) == ["report"], result.step(RETRAIN).log
    assert "Nothing retrained" in result.summary and "Nothing new to propose" in result.summary
    assert "already the champion" in result.summary
    assert github.state() == before
    replaced = github.repository.artifacts[("1001", "report-1001")]  # overwrite: true
    assert replaced and all("runner-re-run" in path for path in replaced), replaced


def test_with_the_tracking_server_down_the_job_fails_before_training_and_pushes_nothing(github, first):
    before = github.state()
    down = f"http://127.0.0.1:{free_port()}"
    result = github.retrain("server-down", run_id=1003, secrets={"MLFLOW_TRACKING_URI": down})
    assert result.conclusion == "failure"
    assert [s.name for s in result.steps if s.outcome == "failure"] == [PREFLIGHT]
    assert result.ran()[-1] == PREFLIGHT  # nothing pulled, trained, pushed, promoted or proposed
    assert "fix MLFLOW_TRACKING_URI" in result.step(PREFLIGHT).log
    assert github.state() == before

    unset = github.retrain("no-secret", run_id=1007, secrets={"MLFLOW_TRACKING_URI": ""})
    assert [s.name for s in unset.steps if s.outcome == "failure"] == ["Check the configuration"]
    assert "Set the repository secret MLFLOW_TRACKING_URI" in unset.step("Check the configuration").log


def test_a_dispatch_with_a_worse_preset_registers_it_but_keeps_the_champion(github, first):
    versions, champion, _, proposal = github.state()
    result = github.retrain("worse-preset", run_id=1005, inputs={"model": WORSE_PRESET})
    _assert_green(result)
    assert ran_stages(result.step(RETRAIN).log)[-4:] == ["train", "package", "evaluate", "report"]
    assert "download" not in ran_stages(result.step(RETRAIN).log)
    assert len(github.versions()) == versions + 1 and github.champion() == champion
    decision = next(line for line in result.summary.splitlines() if line.startswith("not promoted: "))
    assert re.search(r"fixes \d+ test images and breaks \d+ of version \d+'s \(p [=<] ", decision), decision
    assert decision.endswith("the champion stays")
    assert "Nothing proposed: a dispatch" in result.summary
    assert github.branch("retrain") == proposal
    tags = github.run_tags(max(github.versions(), key=lambda v: int(v["version"]))["run_id"])
    assert tags["dvc.experiment"] != "(workspace)"


@pytest.fixture(scope="module")
def changed(github, first, tmp_path_factory):
    """A reviewer merges the open proposal and changes a training param on main; the next scheduled run
    loses the tracking server just before it promotes."""
    work = tmp_path_factory.mktemp("teammate") / "work"
    github.change_main(work, "Train for one epoch", merge_proposal=True, train={"epochs": 1})
    before = github.state()
    result = github.retrain("changed", run_id=1006, before_step=_server_gone_before(PROMOTE))
    return before, result


def test_after_a_change_to_main_only_what_changed_is_retrained_and_proposed(github, changed):
    (versions, champion, _, _), result = changed
    ran = ran_stages(result.step(RETRAIN).log)
    assert ran == ["check_params", "train", "package", "evaluate", "report"], result.log[-6000:]
    assert len(github.versions()) == versions + 1 and github.champion() == champion
    main = run(["git", "rev-parse", "main"], github.origin).stdout.strip()
    proposal = github.branch("retrain")
    assert run(["git", "rev-parse", f"{proposal}^"], github.origin).stdout.strip() == main
    assert "Proposed on branch retrain" in result.summary


def test_a_promotion_that_fails_turns_the_job_red(changed):
    _, result = changed
    assert result.conclusion == "failure"
    assert [s.name for s in result.steps if s.outcome == "failure"] == [PROMOTE]
    assert result.ran()[-1] == PROMOTE
    assert "error: the MLflow tracking store" in result.summary  # the cause, where people look
    assert result.step(PROPOSE).outcome == "success"  # before the promotion: see the re-run test below


def test_a_rerun_of_a_run_whose_promotion_failed_retrains_and_registers_nothing(github, changed):
    versions, proposal = len(github.versions()), github.branch("retrain")
    rerun = github.retrain("re-run-after-failed-promotion", run_id=1006, attempt=2)
    _assert_green(rerun)
    assert ran_stages(rerun.step(RETRAIN).log) == ["report"]
    assert len(github.versions()) == versions and github.branch("retrain") == proposal
    assert "Nothing new to propose" in rerun.summary and "promoted" in rerun.step(PROMOTE).log


def test_the_gpu_check_fails_clearly_where_tensorflow_sees_no_gpu(tmp_path):
    """The workflow's GPU check (RETRAIN_DEVICE=gpu) without a GPU: exit 1, one line with the fix."""
    store = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    gpu = run(["mnist-preflight", "--device", "gpu"], tmp_path, env=store, check=False)
    if gpu.returncode == 0:
        pytest.skip(f"this machine has a GPU: {gpu.stdout.splitlines()[-1]}")
    assert gpu.stdout.splitlines()[0].startswith("tracking: sqlite:///")  # the store was checked first
    assert gpu.returncode == 1 and "Traceback" not in gpu.stderr
    (line,) = [line for line in gpu.stderr.splitlines() if line.startswith("error:")]
    assert "sees no GPU" in line and "nvidia-smi" in line and "RETRAIN_DEVICE=cpu" in line
